"""Connection details of Django's database for code that talks to psycopg directly."""

from typing import Any

import psycopg

# Rows per multi-row INSERT statement on the billing path (receipts, ledger entries, deferrals).
INSERT_CHUNK_ROWS = 1000


def conninfo_from_settings(settings_dict: dict[str, Any]) -> str:
    """A libpq conninfo string for a Django DATABASES entry (HOST may be a Unix-socket directory)."""
    return psycopg.conninfo.make_conninfo(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        host=settings_dict["HOST"] or None,
        port=str(settings_dict["PORT"]) if settings_dict["PORT"] else None,
    )
