"""The service as deployed (gunicorn, gthread workers, DEBUG off) on a given database, for tests and benches.

gunicorn runs in its own process group so that a worker stuck in hostile
input (or orphaned by a kill) is always reaped with it.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from django.db import connection

from tests.processes import ROOT, RunningProcess, free_port, serving, wait_ready
from tests.tokens import token_for

START_DEADLINE_S = 60.0


def database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL for a Django DATABASES entry, in the form settings.py understands."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = settings_dict.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    name = quote(settings_dict["NAME"], safe="")
    if host.startswith("/"):  # a Unix-socket directory
        netloc = f"{credentials}@:{port}" if port else f"{credentials}@"
        return f"postgresql://{netloc}/{name}?host={quote(host, safe='/')}"
    netloc = f"{credentials}@{host or 'localhost'}" + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{name}"


def django_database_url() -> str:
    """The DATABASE_URL of the database Django is connected to: in a test, pytest-django's test database."""
    return database_url(connection.settings_dict)


def service_env(database: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "billing_project.settings",
        "LOG_LEVEL": "WARNING",
        **extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@dataclass
class Service(RunningProcess):
    token: str = ""

    def worker_pids(self) -> list[int]:
        """The master's live children (its workers)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def client(self, timeout: float = 60.0) -> httpx.Client:
        """A client that sends each request with its endpoint's scoped token (tests/tokens.py)."""

        def scoped(request: httpx.Request) -> None:
            request.headers.setdefault("Authorization", f"Bearer {token_for(request.url.path)}")

        return httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            trust_env=False,
            headers={"Content-Type": "application/json"},
            event_hooks={"request": [scoped]},
        )

    def wait_workers(self, count: int, deadline_s: float = START_DEADLINE_S) -> list[int]:
        """Wait until `count` workers are up and /healthz answers 200 (after a kill the master forks new ones)."""
        pids: list[int] = []

        def ready(response: httpx.Response) -> bool:
            pids[:] = self.worker_pids()
            return response.status_code == 200 and len(pids) >= count

        wait_ready(self, "/healthz", deadline_s=deadline_s, ready=ready)
        return pids


def start_service(
    *, database: str, log_dir: Path, token: str, workers: int = 2, threads: int = 4, **extra_env: str
) -> Service:
    """gunicorn on `database` (a DATABASE_URL), ready when its workers are up and /healthz answers 200."""
    port = free_port()
    env = service_env(
        database,
        BILLING_INGEST_TOKEN=token,
        WEB_CONCURRENCY=str(workers),
        WEB_THREADS=str(threads),
        GUNICORN_ACCESSLOG=str(log_dir / "access.log"),
        **extra_env,
    )
    argv = [sys.executable, "-m", "gunicorn", "billing_project.wsgi", "-c", "billing_project/gunicorn.conf.py"]
    argv += ["-b", f"127.0.0.1:{port}"]
    service = Service.start(
        "gunicorn", argv, port=port, log_path=log_dir / "gunicorn.log", env=env, own_group=True, token=token
    )
    try:
        service.wait_workers(workers)
    except BaseException:
        service.stop()
        raise
    return service


@contextmanager
def running_service(
    *, database: str, log_dir: Path, token: str, workers: int = 2, threads: int = 4, **extra_env: str
) -> Iterator[Service]:
    """start_service for the length of a `with`; then stopped, its log tail printed."""
    service = start_service(
        database=database, log_dir=log_dir, token=token, workers=workers, threads=threads, **extra_env
    )
    with serving(service):
        yield service


def manage(database: str, *args: str, timeout: float = 300.0, **extra_env: str) -> subprocess.CompletedProcess:
    """`python manage.py …` on `database` (a DATABASE_URL)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=service_env(database, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SEED_SCRIPT = """
from payers.models import ApiKeyBinding, EndUserAlias
from accounts.models import BillingAccount
from django.contrib.auth import get_user_model
owner = get_user_model().objects.create(username="fuzz-owner")
account = BillingAccount.objects.create(name="Fuzz Inc.", owner=owner)
for end_user in ("acct-alice", "acct-bob", "acct-carol"):
    EndUserAlias.objects.create(account=account, end_user=end_user)
# The samples were sent with LiteLLM's master key, held by a trusted gateway: its end users' aliases decide.
ApiKeyBinding.objects.create(key_hash="litellm_proxy_master_key", is_gateway=True, account=account)
"""


def migrate_and_seed(database: str) -> None:
    """migrate, then one account that acct-alice/acct-bob/acct-carol bill to (like the `account` fixture)."""
    for args in (("migrate", "--no-input", "-v", "0"), ("shell", "-c", SEED_SCRIPT)):
        done = manage(database, *args)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
