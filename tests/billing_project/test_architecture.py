"""The layout rules of the project, read from its source with `ast` (and the templates with Django).

Import rules (BRIEF, "No import circles, and no function-level imports to dodge one"), over the apps,
billing_project, integrations, the plugin, tests/ and bench/:
- the module-level imports form no cycle;
- no function or method imports a first-party module (the usual way to dodge a cycle; where one app
  must react to another, a signal or an on_commit hook does it). A bench script configures Django
  itself and may import app modules only after its own django.setup();
- every first-party name imported exists (a stale import inside a function would otherwise hide).
Layout rules: no two modules of one app share a file-name prefix (a prefix is an app in disguise); the
plugin imports neither Django nor the service; LiteLLM's payload names appear only in
integrations/litellm/ and the plugin; every template compiles and names only URLs that exist; every
path the README and docs/architecture.md name exists.

Imports under `if TYPE_CHECKING:` never run, so they are left out.
"""

import ast
import glob
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.template.loader import get_template
from django.urls import get_resolver

from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
APPS = ("accounts", "payers", "holds", "receipts", "invoices", "reconciliation", "payments", "billing_project")
PACKAGES = (*APPS, "integrations", "litellm_billing_plugin", "tests", "bench")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the first-party module imported
    path: Path
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function (TYPE_CHECKING blocks skipped)."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    yield from walk(ast.Module(body=[orelse], type_ignores=[]), in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            # AppConfig.ready() is where Django says signal receivers and checks are imported.
            app_ready = isinstance(child, ast.FunctionDef) and child.name == "ready"
            inner = in_function or (
                isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not app_ready
            )
            yield from walk(child, inner)

    yield from walk(tree, False)


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The first-party modules an import statement loads (a package's __init__ included)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = source if is_package else source.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from pkg import name`: name may be a submodule.
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                found.add(candidate)
    # A module's own packages are always loaded before it: `receipts.services.billing` importing a sibling
    # through `receipts.services.deferrals` is no cycle with the package that re-exports it.
    ancestors = {source.rsplit(".", n)[0] for n in range(1, source.count(".") + 1)}
    return found - ancestors - {source}


def _imports() -> list[Import]:
    modules = _modules()
    names = set(modules)
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _import_nodes(tree):
            for target in sorted(_targets(node, name, is_package, names)):
                found.append(Import(name, target, path, node.lineno, in_function))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _path_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One cycle inside a component, as a readable path a → b → … → a."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nxt = next(n for n in sorted(edges[path[-1]]) if n in members)
        if nxt in seen:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_graph_reader_sees_the_packages():
    # Guards the two checks below against passing because they read nothing.
    imports = _imports()
    assert {"reconciliation.services", "integrations.litellm.client", "receipts.services"} <= set(_modules())
    assert (
        Import(
            "reconciliation.services",
            "integrations.litellm.client",
            ROOT / "reconciliation/services.py",
            next(
                i.line
                for i in imports
                if (i.source, i.target) == ("reconciliation.services", "integrations.litellm.client")
            ),
            False,
        )
        in imports
    )


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _path_through(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_no_import_cycles_among_module_level_imports():
    edges: dict[str, set[str]] = {}
    for item in _imports():
        if not item.in_function:
            edges.setdefault(item.source, set()).add(item.target)
    cycles = [" → ".join(_path_through(c, edges)) for c in _cycles(edges)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_imports_of_first_party_modules():
    deepest: dict[tuple[Path, int], str] = {}
    for item in _imports():
        # A bench script sets Django up itself first (the test after this one holds it to that).
        if item.source.startswith("bench.") and _configures_django(item.path):
            continue
        if item.in_function and len(item.target) > len(deepest.get((item.path, item.line), "")):
            deepest[item.path, item.line] = item.target  # `receipts.services`, not also `receipts`
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {target}" for (path, line), target in sorted(deepest.items())
    ]
    assert offenders == [], "function-level imports of first-party modules:\n" + "\n".join(offenders)


def _configures_django(path: Path) -> bool:
    """Whether a script calls django.setup() itself (bench scripts build their database first)."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "setup"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "django"
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_bench_scripts_import_app_modules_in_functions_only_after_their_own_django_setup():
    late = {item.path for item in _imports() if item.in_function and item.source.startswith("bench.")}
    assert all(_configures_django(path) for path in late), sorted(str(p) for p in late if not _configures_django(p))


def test_every_first_party_name_imported_exists():
    """Also inside functions, where nothing runs them until a rare path does (a moved function, say)."""
    modules = _modules()
    missing = []
    for name, path in modules.items():
        if name.startswith("litellm_billing_plugin"):
            continue  # runs in LiteLLM's own environment (.venv-litellm), checked by its e2e tests
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, _ in _import_nodes(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in PACKAGES or node.module.startswith("litellm_billing_plugin.hook"):
                continue
            try:
                target = importlib.import_module(node.module)
            except ImportError as exc:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}: {exc}")
                continue
            for alias in node.names:
                if (
                    alias.name != "*"
                    and not hasattr(target, alias.name)
                    and f"{node.module}.{alias.name}" not in modules
                ):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert missing == [], "imports of names that do not exist:\n" + "\n".join(missing)


def test_no_app_has_two_modules_sharing_a_file_name_prefix():
    """`hold_services.py` beside `hold_views.py` is an app in disguise: give the concept its own app."""
    shared = []
    for app in (*APPS, "integrations/litellm", "integrations/stripe", "integrations/usdc"):
        folders: dict[Path, list[str]] = {}
        for path in (ROOT / app).rglob("*.py"):
            parts = path.relative_to(ROOT / app).parts
            # Migrations are numbered; command files are the CLI's own words (manage.py billing_worker).
            if path.name == "__init__.py" or "migrations" in parts or parts[:2] == ("management", "commands"):
                continue
            folders.setdefault(path.parent, []).append(path.stem)
        for folder, stems in folders.items():
            prefixes: dict[str, list[str]] = {}
            for stem in stems:
                if "_" in stem:
                    prefixes.setdefault(stem.split("_")[0], []).append(stem)
            for prefix, names in prefixes.items():
                others = [s for s in stems if s == prefix]
                if len(names) + len(others) > 1:
                    shared.append(f"{folder.relative_to(ROOT)}: {', '.join(sorted(names + others))}")
    assert shared == [], "modules sharing a prefix:\n" + "\n".join(shared)


def test_the_plugin_imports_neither_django_nor_the_service():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("litellm_billing_plugin"):
            continue
        for node, _ in _import_nodes(ast.parse(path.read_text())):
            targets = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for target in targets:
                top = target.split(".")[0]
                if top == "django" or (top in PACKAGES and top != "litellm_billing_plugin"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert offenders == [], "\n".join(offenders)


LITELLM_PAYLOAD_NAMES = re.compile(
    r"user_api_key_|spend_logs_metadata|x-litellm-|requester_custom_headers|model_map_information"
)


def test_litellm_payload_names_live_behind_the_adapter():
    """The domain apps speak of key_hash, team_id, run_id; only integrations/litellm/ reads LiteLLM's names."""
    found = []
    for folder in (*APPS, "templates"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".html", ".sql", ".txt") or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if LITELLM_PAYLOAD_NAMES.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == [], "LiteLLM payload names outside integrations/litellm/:\n" + "\n".join(found)


def test_no_trigger_or_function_body_in_a_python_string():
    """django-hordak's way: migration SQL lives in .sql files beside the migration (billing_project.migration_sql)."""
    body = re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|TRIGGER)", re.IGNORECASE)
    found = [
        str(path.relative_to(ROOT))
        for app in APPS
        for path in (ROOT / app).rglob("migrations/*.py")
        if body.search(path.read_text())
    ]
    assert found == []


def test_every_template_compiles_and_names_only_urls_that_exist():
    names = set()
    for value in get_resolver().reverse_dict:
        if isinstance(value, str):
            names.add(value)
    for namespace, (_, resolver) in get_resolver().namespace_dict.items():
        names.update(f"{namespace}:{value}" for value in resolver.reverse_dict if isinstance(value, str))
    unknown = []
    templates = sorted((ROOT / "templates").rglob("*.html"))
    assert templates
    for path in templates:
        get_template(str(path.relative_to(ROOT / "templates")))  # raises on a bad tag, load or extends
        for url_name in re.findall(r"{%\s*url\s+['\"]([^'\"]+)['\"]", path.read_text()):
            if url_name not in names:
                unknown.append(f"{path.relative_to(ROOT)}: {url_name}")
    assert unknown == [], "\n".join(unknown)


# A repository path in prose: a top-level folder of the project, then a path (`receipts/services/ingest.py`).
_TOP_FOLDERS = "|".join((*PACKAGES, "templates", "docs", "deploy", "bin"))
_DOC_PATH = re.compile(rf"(?<![\w./-])((?:{_TOP_FOLDERS})/[\w./*-]*[\w*/])")


def test_every_path_the_docs_name_exists():
    missing = []
    for doc in ("README.md", "docs/architecture.md", "bench/README.md", "litellm_billing_plugin/README.md"):
        for number, line in enumerate((ROOT / doc).read_text().splitlines(), start=1):
            for found in _DOC_PATH.findall(line):
                path = found.split("::")[0].rstrip(".")
                if not (glob.glob(str(ROOT / path)) or (ROOT / path).exists()):
                    missing.append(f"{doc}:{number}: {path}")
    assert missing == [], "paths the docs name that do not exist:\n" + "\n".join(missing)
