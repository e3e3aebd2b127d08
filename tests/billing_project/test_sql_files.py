"""The SQL functions installed in the database are exactly the ones the migrations' .sql files define.

django-hordak's way: every trigger and function body is kept as SQL in `<app>/migrations/sql/`, read by the
migration that runs it (billing_project.migration_sql.sql_file). Replaying the files in migration order gives
each function's current body (a later CREATE OR REPLACE wins, a DROP removes it); PostgreSQL's own copy of
each body (pg_proc.prosrc, what pg_get_functiondef prints between the dollar quotes) must equal it.
"""

import re

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunSQL

from tests.paths import REPO_ROOT

_STATEMENT = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?P<created>\w+)\s*\(.*?\bAS\s+\$(?P<tag>\w*)\$(?P<body>.*?)\$(?P=tag)\$"
    r"|DROP\s+FUNCTION\s+(?:IF\s+EXISTS\s+)?(?P<dropped>\w+)",
    re.IGNORECASE | re.DOTALL,
)


def _functions_the_files_define() -> tuple[dict[str, str], list[str]]:
    """(function name → body) after replaying every migration's SQL in order; and the migrations that had SQL."""
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    plan: list[tuple[str, str]] = []
    for leaf in sorted(loader.graph.leaf_nodes()):
        plan += [node for node in loader.graph.forwards_plan(leaf) if node not in plan]
    bodies: dict[str, str] = {}
    with_sql = []
    for node in plan:
        for operation in loader.graph.nodes[node].operations:
            if not isinstance(operation, RunSQL) or not isinstance(operation.sql, str):
                continue
            with_sql.append(f"{node[0]}.{node[1]}")
            for match in _STATEMENT.finditer(operation.sql):
                if match["created"]:
                    bodies[match["created"]] = match["body"]
                else:
                    bodies.pop(match["dropped"], None)
    return bodies, with_sql


@pytest.mark.django_db
def test_installed_functions_are_the_ones_the_sql_files_define() -> None:
    expected, with_sql = _functions_the_files_define()
    # Guards the comparison against passing because it read nothing.
    assert {"billing_ledger_apply", "billing_credithold_held_total", "billing_charged_credits"} <= set(expected)
    assert "accounts.0003_ledger_rules" in with_sql
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname LIKE 'billing\\_%%'"
        )
        installed = dict(cursor.fetchall())
    assert sorted(installed) == sorted(expected)
    different = [name for name in expected if installed[name] != expected[name]]
    assert different == [], f"installed bodies differ from the .sql files: {different}"


def test_every_migration_sql_file_has_its_reverse_and_is_read_by_a_migration() -> None:
    files = sorted(REPO_ROOT.glob("*/migrations/sql/*.sql"))
    forward = [path for path in files if not path.name.endswith(".reverse.sql")]
    assert len(forward) >= 8
    for path in forward:
        assert path.with_name(path.name.replace(".sql", ".reverse.sql")).is_file(), path
        migration = path.parent.parent / f"{path.stem}.py"
        readers = [m for m in path.parent.parent.glob("*.py") if f'"{path.stem}"' in m.read_text()]
        assert migration.is_file() or readers, f"no migration reads {path.relative_to(REPO_ROOT)}"
