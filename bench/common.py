"""What every benchmark needs: a fresh database to build its data in."""

import os
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit


def fresh_database(prefix: str) -> tuple[str, Callable[[], None]]:
    """(DATABASE_URL of a new, empty database named <prefix>_<random>, cleanup).

    On DATABASE_URL's server when it is set (dropped by the cleanup), else on a
    throwaway embedded PostgreSQL (stopped and deleted by the cleanup).
    """
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        from billing_project.embedded_pg import start_embedded_postgres

        server, new_url = start_embedded_postgres(database=name)
        print(f"bench: embedded PostgreSQL in a temp dir ({new_url})", flush=True)
        return new_url, lambda: server.cleanup()  # type: ignore[attr-defined]

    new_url = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    print(f"bench: database {name} created on DATABASE_URL's server", flush=True)

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return new_url, drop
