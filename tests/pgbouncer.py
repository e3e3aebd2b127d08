"""A real PgBouncer (Debian's package) in transaction pooling in front of the test database, for a test.

    with running_pgbouncer(direct_url, workdir=tmp_path) as bouncer:
        bouncer.url   # a DATABASE_URL through PgBouncer

Every client transaction may run on another server connection, as in a scaled-out deployment. PgBouncer
refuses to run as root: then it runs as the owner of the database's socket directory (the embedded
PostgreSQL's user), or `nobody` for a TCP server.
"""

import os
import pwd
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg

from tests.processes import ProcessStartError, RunningProcess, free_port, wait_until

DATABASE = "billing"


def pgbouncer_bin() -> str:
    found = os.environ.get("PGBOUNCER_BIN") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(found).exists():
        raise ProcessStartError("pgbouncer is not installed: run bin/bootstrap-pgbouncer (bin/test does)")
    return found


@dataclass
class PgBouncer(RunningProcess):
    url: str = ""


def _server(direct_url: str) -> dict[str, str]:
    parts = urlsplit(direct_url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    return {
        "host": host,
        "port": str(parts.port or 5432),
        "dbname": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
    }


@contextmanager
def running_pgbouncer(direct_url: str, *, workdir: Path) -> Iterator[PgBouncer]:
    server = _server(direct_url)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    target = " ".join(f"{k}={v}" for k, v in server.items() if v)
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{DATABASE} = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 3
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
"""
    )
    argv = [pgbouncer_bin()]
    if os.geteuid() == 0:
        host = server["host"]
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        argv += ["-u", owner]
        os.chmod(workdir, 0o755)  # noqa: S103 - PgBouncer runs as another user and reads its config here
        ini.chmod(0o644)
    argv.append(str(ini))
    user = server["user"]
    url = f"postgresql://{user}@127.0.0.1:{port}/{DATABASE}"
    bouncer = PgBouncer.start(
        "pgbouncer", argv, port=port, log_path=workdir / "pgbouncer.log", env=dict(os.environ), url=url
    )

    def answers() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    try:
        wait_until(answers, "PgBouncer to serve", deadline_s=30.0, detail=bouncer.log_tail)
        yield bouncer
    finally:
        bouncer.stop()
