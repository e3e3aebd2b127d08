"""The import graph of the project's own packages, read from their source with `ast`.

Two rules (BRIEF, "No import circles, and no function-level imports to dodge one"):
- the module-level imports form no cycle;
- no function or method imports a first-party module (the usual way to dodge a
  cycle; where one app must react to another, a signal or an on_commit hook does it).

Imports under `if TYPE_CHECKING:` never run, so they are left out of both.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "receipts", "invoices", "reconciliation", "integrations", "billing_project")


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
        if item.in_function and len(item.target) > len(deepest.get((item.path, item.line), "")):
            deepest[item.path, item.line] = item.target  # `receipts.services`, not also `receipts`
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {target}" for (path, line), target in sorted(deepest.items())
    ]
    assert offenders == [], "function-level imports of first-party modules:\n" + "\n".join(offenders)
