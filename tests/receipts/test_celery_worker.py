"""The safety nets running for real: Celery workers on a Redis broker, and `manage.py billing_worker`.

Redis: REDIS_URL when set and reachable, else 127.0.0.1:6379 when reachable,
else a `redis-server` started here on a free port (bin/bootstrap-redis, run
by bin/test, installs it on a fresh machine). Never skipped: without Redis the
test fails and says how to get it.

The workers are subprocesses against the test database (hence transactional
tests), a queue of their own (so a shared Redis is left alone) and the
loopback LiteLLM stand-in. Every wait is for a condition, with a deadline.
"""

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from django.core.management import call_command
from django.utils import timezone

from accounts.models import CreditLedgerEntry
from payers.models import EndUserAlias
from receipts.models import ChargeReceipt, DeferredUsage
from tests.books import ingest_records
from tests.factories import BillingAccountFactory, EndUserAliasFactory, bind_trusted_gateway, litellm_record
from tests.gunicorn_server import django_database_url
from tests.litellm_standin import MASTER_KEY, SpendLogStandIn, spend_log_row
from tests.paths import REPO_ROOT
from tests.processes import free_port, wait_until

BASE_DIR = REPO_ROOT
DEADLINE_SECONDS = 90


def wait_for(condition: Callable[[], Any], what: str, *, deadline: float = DEADLINE_SECONDS, logs: Any = ()) -> Any:
    def tails() -> str:
        return "\n".join(f"--- {p}:\n{Path(p).read_text()[-3000:]}" for p in logs if Path(p).exists())

    return wait_until(condition, what, deadline_s=deadline, detail=tails)


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env_url = os.environ.get("REDIS_URL")
    if env_url and _reachable(env_url):
        yield env_url
        return
    if _reachable("redis://127.0.0.1:6379/15"):
        yield "redis://127.0.0.1:6379/15"  # a shared local Redis: a high db number and our own queue
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            "the real-broker test needs Redis: none is reachable (REDIS_URL, 127.0.0.1:6379) and redis-server "
            "is not installed. Run bin/bootstrap-redis (bin/test does) or set REDIS_URL."
        )
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: proc.poll() is not None or _reachable(url), "redis-server to accept connections", deadline=30)
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
        print(f"started redis-server on port {port} for the worker test", file=sys.stderr)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def standin(settings) -> Iterator[SpendLogStandIn]:
    with SpendLogStandIn() as server:
        settings.LITELLM_BASE_URL = server.url
        settings.LITELLM_MASTER_KEY = MASTER_KEY
        yield server


def worker_env(standin: SpendLogStandIn, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": django_database_url(),
        "LITELLM_BASE_URL": standin.url,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_RETRY_BACKOFF_SECONDS": "0",
        "BILLING_DEFERRED_SWEEP_SECONDS": "1",
        "BILLING_DEFERRED_BASE_DELAY_SECONDS": "1",
        "BILLING_DEFERRED_MAX_DELAY_SECONDS": "2",
        "BILLING_RECONCILE_SECONDS": "3600",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        handle = log.open("wb")
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def defer_unknown_cost(**overrides: Any) -> tuple[dict[str, Any], DeferredUsage]:
    record = litellm_record(cost=None, **overrides)
    assert ingest_records(records=[record]).deferred == 1
    deferred = DeferredUsage.objects.get(litellm_call_id=record["litellm_call_id"])
    return record, deferred


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_real_workers_on_redis_bill_a_deferred_record_once_litellm_knows_its_cost(
    redis_url, standin, processes, tmp_path
):
    account = BillingAccountFactory(name="Alice")
    EndUserAliasFactory(account=account, end_user="acct-alice")
    record, deferred = defer_unknown_cost()
    DeferredUsage.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now())

    queue = f"billing-test-{uuid.uuid4().hex}"
    env = worker_env(
        standin, CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url, CELERY_TASK_DEFAULT_QUEUE=queue
    )
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    celery = [sys.executable, "-m", "celery", "-A", "billing_project", "worker", "-Q", queue, "-c", "1", "-l", "INFO"]
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    # Worker a also runs beat (the deferred-usage sweep every second); worker b only takes tasks.
    processes.start(
        [*celery, "-n", f"a-{queue}@%h", "-B", "-s", str(tmp_path / "beat-schedule"), *quiet], env=env, log=logs[0]
    )
    processes.start([*celery, "-n", f"b-{queue}@%h", *quiet], env=env, log=logs[1])
    for log in logs:
        wait_for(lambda log=log: log.exists() and " ready." in log.read_text(), f"{log.name} to be ready", logs=logs)

    # 1. LiteLLM has no cost yet: the sweep's retry counts an attempt and reschedules with backoff.
    wait_for(lambda: DeferredUsage.objects.get(pk=deferred.pk).attempts >= 1, "a first retry by the worker", logs=logs)
    deferred.refresh_from_db()
    assert deferred.status == DeferredUsage.Status.PENDING
    assert "no row for this call yet" in deferred.last_error
    assert not ChargeReceipt.objects.exists()

    # 2. LiteLLM learns the cost: the next sweep bills it, on the worker.
    standin.add(
        spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.000042"))
    )
    wait_for(
        lambda: DeferredUsage.objects.get(pk=deferred.pk).status == DeferredUsage.Status.BILLED,
        "the worker to bill the record",
        logs=logs,
    )
    receipt = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
    assert receipt.cost_usd == Decimal("0.000042") and receipt.charged_credits == 42
    assert CreditLedgerEntry.objects.filter(receipt=receipt).count() == 1

    # 3. Two workers retrying one record at once: many tasks for it, both workers busy, one receipt.
    record2, deferred2 = defer_unknown_cost()
    standin.add(
        spend_log_row(litellm_call_id=record2["litellm_call_id"], request_id=record2["id"], spend=Decimal("0.0000135"))
    )
    sender = Celery("billing-test-sender", broker=redis_url, backend=redis_url)
    sender.conf.task_default_queue = queue
    results = [sender.send_task("receipts.tasks.retry_deferred", args=[deferred2.pk]) for _ in range(8)]
    statuses = [result.get(timeout=DEADLINE_SECONDS) for result in results]
    sender.close()

    # A task that finds the row locked by the one billing it skips it and may still read "pending";
    # what must hold is that it ends billed, with exactly one receipt and one debit.
    assert "billed" in statuses and set(statuses) <= {"billed", "pending"}, statuses
    assert DeferredUsage.objects.get(pk=deferred2.pk).status == DeferredUsage.Status.BILLED
    assert ChargeReceipt.objects.filter(litellm_call_id=record2["litellm_call_id"]).count() == 1
    assert CreditLedgerEntry.objects.filter(reason="usage").count() == 2
    marker = f"deferred usage {deferred2.pk} "
    handled = [log.read_text().count(marker) for log in logs]
    assert sum(handled) >= 8, handled
    assert all(handled), f"both workers took retries of the record: {handled}"
    account.refresh_from_db()
    assert account.balance_credits == -42 - 14


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_billing_worker_without_a_broker_sweeps_on_schedule_and_stops_on_sigterm(standin, processes, tmp_path):
    account = BillingAccountFactory(name="Alice")
    EndUserAliasFactory(account=account, end_user="acct-alice")
    record, deferred = defer_unknown_cost()
    DeferredUsage.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now())
    log = tmp_path / "billing-worker.log"
    proc = processes.start(
        [sys.executable, "manage.py", "billing_worker"], env=worker_env(standin, CELERY_BROKER_URL=""), log=log
    )

    wait_for(lambda: DeferredUsage.objects.get(pk=deferred.pk).attempts >= 1, "a first sweep", logs=[log])
    standin.add(
        spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.000042"))
    )
    wait_for(
        lambda: DeferredUsage.objects.get(pk=deferred.pk).status == DeferredUsage.Status.BILLED,
        "billing_worker to bill the record",
        logs=[log],
    )
    assert ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"]).charged_credits == 42

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "billing_worker: stopped" in log.read_text()


@pytest.mark.django_db
def test_billing_worker_once_runs_the_sweep_and_the_scheduled_reconcile(settings):
    settings.LITELLM_MASTER_KEY = ""  # the schedule then runs the in-book checks only
    account = BillingAccountFactory(name="Once")
    ingest_records(records=[litellm_record(end_user="once-user")])
    DeferredUsage.objects.update(next_attempt_at=timezone.now())
    EndUserAlias.objects.create(account=account, end_user="once-user")
    bind_trusted_gateway()
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    call_command("billing_worker", "--once")

    assert DeferredUsage.objects.get().status == DeferredUsage.Status.BILLED
    assert ChargeReceipt.objects.filter(end_user="once-user").count() == 1
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("billing_reconcile_last_run_timestamp_seconds") > 0
