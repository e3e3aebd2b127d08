"""Migration SQL kept as SQL (django-hordak's way): a migration reads its `.sql` file and the reverse beside it."""

from pathlib import Path

from django.db import migrations


def sql_file(migration_file: str, name: str) -> migrations.RunSQL:
    """RunSQL of `sql/<name>.sql` next to the migration, reversed by `sql/<name>.reverse.sql`."""
    folder = Path(migration_file).resolve().parent / "sql"
    return migrations.RunSQL((folder / f"{name}.sql").read_text(), (folder / f"{name}.reverse.sql").read_text())
