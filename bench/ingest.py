#!/usr/bin/env python
"""Ingest benchmark: the service under gunicorn against the same writes in plain SQL.

    .venv/bin/python bench/ingest.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/ingest.py --scale 0.3   # a quick look

What it does (bench/README.md, "Ingest", has the figures):
1. PostgreSQL: DATABASE_URL's server if set (a fresh database is created on
   it and dropped at the end), else a throwaway embedded server in a temp dir.
2. `migrate`, one billing account and its end-user alias.
3. The service the production way: gunicorn with gthread workers
   (billing_project/gunicorn.conf.py), DEBUG off.
4. Several client threads (httpx) POST LiteLLM json_array batches of 1, 100
   and 512 records to /api/internal/billing/ingest. The records are the real
   LiteLLM 1.108 samples (tests/fixtures/litellm-1.108-json-array-batch.json),
   each with a fresh litellm_call_id. Records/s and p50/p99 latency per batch
   size are printed.
5. The same database writes in plain SQL through psycopg, batched the same
   way, one transaction per batch: receipt INSERT … ON CONFLICT DO NOTHING,
   one balance UPDATE, ledger INSERT, into copies of the tables (LIKE …
   INCLUDING ALL: same columns, indexes and checks, no triggers, no foreign
   keys). Then the ratio service/raw.
6. A check that every posted record has exactly one receipt and that the
   balance equals the ledger.

It is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402
from billing_project.db import conninfo_from_settings  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "litellm-1.108-json-array-batch.json"
END_USER = "bench-end-user"
MARK = "@@BENCH-CALL-ID@@"
BATCH_SIZES = (1, 100, 512)
# Batches per size at --scale 1: sized so that the whole run stays near two minutes on 2 cores.
BATCHES = {1: 1500, 100: 60, 512: 40}
TARGET_RATIO = 0.5
TARGET_P99_512_MS = 250.0


# --- records -------------------------------------------------------------------------------------


@dataclass
class Template:
    """One sample record as JSON text split around its call id, and its raw-SQL receipt values."""

    parts: list[str]  # the body text of the record; join with the call id
    raw_parts: list[str]  # the stored (stripped) record text; join with the call id
    receipt: dict[str, Any]  # receipt column values, call-id dependent ones filled per record


def load_templates() -> list[Template]:
    from accounts.money import usd_to_credits
    from receipts.exactjson import dumps_exact, loads_exact
    from receipts.usage import UsageFact, parse_usage_record

    templates = []
    for record in loads_exact(SAMPLE.read_text()):
        record["litellm_call_id"] = MARK
        record["id"] = f"chatcmpl-{MARK}"
        record["end_user"] = END_USER
        record["metadata"]["user_api_key_end_user_id"] = END_USER
        fact = parse_usage_record(record)
        assert isinstance(fact, UsageFact), fact
        receipt = {
            "source_system": "litellm",
            "request_id": fact.request_id,
            "run_id": None if fact.run_id == MARK else fact.run_id,  # None: the call id
            "attempt": fact.attempt,
            "status": fact.status,
            "model_group": fact.model_group,
            "model": fact.model,
            "provider": fact.provider,
            "call_type": fact.call_type,
            "stream": fact.stream,
            "cache_hit": fact.cache_hit,
            "prompt_tokens": fact.prompt_tokens,
            "completion_tokens": fact.completion_tokens,
            "total_tokens": fact.total_tokens,
            "cost_usd": fact.cost_usd,
            "charged_credits": usd_to_credits(fact.cost_usd),
            "zero_cost_suspect": fact.zero_cost_suspect,
            "end_user": fact.end_user,
            "api_key_hash": fact.api_key_hash,
            "api_key_alias": fact.api_key_alias,
            "team_id": fact.team_id,
            "started_at": fact.started_at,
            "ended_at": fact.ended_at,
        }
        templates.append(
            Template(
                parts=dumps_exact(record).split(MARK),
                raw_parts=dumps_exact(fact.record).split(MARK),
                receipt=receipt,
            )
        )
    return templates


def batch_body(templates: list[Template], size: int) -> bytes:
    """A json_array body of `size` records, each with a fresh litellm_call_id."""
    records = []
    for i in range(size):
        template = templates[i % len(templates)]
        records.append(str(uuid.uuid4()).join(template.parts))
    return ("[" + ", ".join(records) + "]").encode()


# --- measuring -------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    batch_size: int
    batches: int
    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Service phases: time spent in the ingest view (IngestBatch.duration_ms), without HTTP and queueing.
    view_ms: list[float] = field(default_factory=list)

    @property
    def records(self) -> int:
        return self.batch_size * self.batches

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def percentile(self, p: float, data: list[float] | None = None) -> float:
        data = sorted(self.latencies_ms if data is None else data)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, max(0, math.ceil(p / 100 * len(data)) - 1))]  # nearest rank


def run_phase(phase: Phase, make_sender: Callable[[], tuple[Callable[[int], None], Callable[[], None]]]) -> Phase:
    """Run `phase.batches` batches from `phase.clients` threads; each thread gets its own sender."""
    lock = threading.Lock()
    remaining = [phase.batches]
    barrier = threading.Barrier(phase.clients + 1)

    def client() -> None:
        send, close = make_sender()
        try:
            barrier.wait()
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                try:
                    send(phase.batch_size)
                except Exception as exc:  # noqa: BLE001  (reported, the run goes on)
                    with lock:
                        phase.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    phase.latencies_ms.append(elapsed)
        finally:
            close()

    threads = [threading.Thread(target=client, name=f"{phase.name}-{i}") for i in range(phase.clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    return phase


# --- the service -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(*, env: dict[str, str], workers: int, threads: int, log_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {
        **env,
        "WEB_CONCURRENCY": str(workers),
        "WEB_THREADS": str(threads),
        "GUNICORN_ACCESSLOG": str(log_dir / "access.log"),
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "gunicorn", "billing_project.wsgi", "-c", "billing_project/gunicorn.conf.py"]
    argv += ["-b", f"127.0.0.1:{port}"]
    log = (log_dir / "gunicorn.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base_url, timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/healthz").status_code == 200:
                    return proc, base_url
            except httpx.HTTPError:
                pass
            try:
                code = proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            raise SystemExit(f"gunicorn exited ({code}):\n{(log_dir / 'gunicorn.log').read_text()[-4000:]}")
    proc.terminate()
    raise SystemExit(f"gunicorn not ready in 60s:\n{(log_dir / 'gunicorn.log').read_text()[-4000:]}")


def service_sender(base_url: str, token: str, templates: list[Template]) -> Callable[[], tuple]:
    import httpx

    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        client = httpx.Client(
            base_url=base_url,
            timeout=60,
            trust_env=False,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

        def send(size: int) -> None:
            # Inside the timed call, but only a string join: well under a millisecond for 512 records.
            body = batch_body(templates, size)
            response = client.post("/api/internal/billing/ingest", content=body)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            processed = response.json()["processed"]
            if processed != size:
                raise RuntimeError(f"processed {processed} of {size}: {response.text[:300]}")

        return send, client.close

    return make


# --- plain SQL ---------------------------------------------------------------------------------------

RAW_TABLES = """
DROP TABLE IF EXISTS bench_ledger, bench_receipt, bench_account;
CREATE TABLE bench_account (LIKE accounts_billingaccount INCLUDING ALL);
CREATE TABLE bench_receipt (LIKE receipts_chargereceipt INCLUDING ALL);
CREATE TABLE bench_ledger (LIKE accounts_creditledgerentry INCLUDING ALL);
"""
RECEIPT_COLUMNS = [
    "account_id",
    "source_system",
    "source_reference",
    "litellm_call_id",
    "request_id",
    "run_id",
    "attempt",
    "status",
    "model_group",
    "model",
    "provider",
    "call_type",
    "stream",
    "cache_hit",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "charged_credits",
    "zero_cost_suspect",
    "end_user",
    "api_key_hash",
    "api_key_alias",
    "team_id",
    "started_at",
    "ended_at",
    "created_at",
    "raw_record",
]
_RECEIPT_ROW = "(" + ", ".join(["%s"] * (len(RECEIPT_COLUMNS) - 1)) + ", %s::jsonb)"
_LEDGER_ROW = "(%s, %s, 'usage', %s, %s, '', %s)"


def raw_sender(conninfo: str, account_id: int, templates: list[Template]) -> Callable[[], tuple]:
    import psycopg

    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        conn = psycopg.connect(conninfo)

        def send(size: int) -> None:
            now = datetime.now(UTC)
            params: list[Any] = []
            for i in range(size):
                template = templates[i % len(templates)]
                call_id = str(uuid.uuid4())
                r = template.receipt
                run_id = r["run_id"] or call_id
                params += [account_id, "litellm", f"{run_id}/{r['attempt']}/{call_id}", call_id]
                params += [r["request_id"].replace(MARK, call_id), run_id, r["attempt"], r["status"]]
                params += [r["model_group"], r["model"], r["provider"], r["call_type"], r["stream"], r["cache_hit"]]
                params += [r["prompt_tokens"], r["completion_tokens"], r["total_tokens"], r["cost_usd"]]
                params += [r["charged_credits"], r["zero_cost_suspect"], r["end_user"], r["api_key_hash"]]
                params += [r["api_key_alias"], r["team_id"], r["started_at"], r["ended_at"], now]
                params.append(call_id.join(template.raw_parts))
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    f"INSERT INTO bench_receipt ({', '.join(RECEIPT_COLUMNS)}) VALUES "
                    + ", ".join([_RECEIPT_ROW] * size)
                    + " ON CONFLICT (source_system, source_reference) DO NOTHING RETURNING id, charged_credits",
                    params,
                )
                inserted = sorted(cur.fetchall())
                if len(inserted) != size:
                    raise RuntimeError(f"inserted {len(inserted)} of {size}")
                total = sum(credits for _, credits in inserted)
                cur.execute(
                    "UPDATE bench_account SET balance_credits = balance_credits - %s WHERE id = %s "
                    "RETURNING balance_credits",
                    [total, account_id],
                )
                (balance,) = cur.fetchone()
                balance += total
                ledger: list[Any] = []
                for receipt_id, credits in inserted:
                    balance -= credits
                    ledger += [account_id, -credits, balance, receipt_id, now]
                cur.execute(
                    "INSERT INTO bench_ledger (account_id, amount_credits, reason, balance_after, receipt_id, memo, "
                    "created_at) VALUES " + ", ".join([_LEDGER_ROW] * len(inserted)),
                    ledger,
                )

        return send, conn.close

    return make


# --- orchestration -----------------------------------------------------------------------------------


def print_table(service: dict[int, Phase], raw: dict[int, Phase], extra: list[Phase]) -> None:
    def ms(value: float) -> str:
        return f"{value:.0f}" if not math.isnan(value) else "-"

    print()
    header = (
        f"{'path':<8} {'batch':>5} {'clients':>7} {'records':>7} {'records/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'view p50':>8} {'view p99':>8}  {'service/raw':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for size in BATCH_SIZES:
        ratio = service[size].rate / raw[size].rate if raw[size].rate else float("nan")
        rows += [("service", service[size], f"{ratio:.2f}"), ("raw SQL", raw[size], "")]
    rows += [("service", p, f"({p.name})") for p in extra]
    for path, p, note in rows:
        print(
            f"{path:<8} {p.batch_size:>5} {p.clients:>7} {p.records:>7} {p.rate:>9.0f} {ms(p.percentile(50)):>7} "
            f"{ms(p.percentile(99)):>7} {ms(p.percentile(50, p.view_ms)):>8} {ms(p.percentile(99, p.view_ms)):>8}  "
            f"{note:>11}"
        )
    print("(p50/p99: client-side latency of one POST or one raw transaction; view: time inside the ingest view)")
    print()
    for size in (size for size in BATCH_SIZES if size > 1):
        ratio = service[size].rate / raw[size].rate
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(f"batch {size}: service/raw = {ratio:.2f} ({verdict} the target of >= {TARGET_RATIO})")
    for p in [service[512], *[e for e in extra if e.batch_size == 512]]:
        verdict = "meets" if p.percentile(99) <= TARGET_P99_512_MS else "MISSES"
        print(
            f"batch 512, {p.clients} client(s): p99 {p.percentile(99):.0f} ms "
            f"({verdict} the target of <= {TARGET_P99_512_MS:.0f} ms)"
        )


def profile_ingest(templates: list[Template], *, batches: int, token: str) -> None:
    """Where a 512-record batch spends its time: stage timings, then cProfile of the view (test client)."""
    import cProfile
    import pstats
    import statistics

    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from receipts import services
    from receipts.body import parse_ingest_body
    from receipts.exactjson import dumps_exact
    from receipts.usage import judge

    statements: dict[str, float] = {}

    def timed(execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            words = sql.split()
            key = " ".join(words[:3] if words[0] == "INSERT" else words[:1]).replace('"', "")
            statements[key] = statements.get(key, 0.0) + time.perf_counter() - started

    stages: dict[str, list[float]] = {}

    def note(name: str, seconds: float) -> None:
        stages.setdefault(name, []).append(seconds * 1000)

    for _ in range(batches):
        body = batch_body(templates, 512)
        t = time.perf_counter()
        records = parse_ingest_body(body)
        note(f"parse the body ({len(body) / 1e6:.1f} MB, Decimal numbers)", time.perf_counter() - t)
        t = time.perf_counter()
        facts = [judge(r) for r in records]
        note("judge 512 records (validate, strip)", time.perf_counter() - t)
        now = timezone.now()
        t = time.perf_counter()
        [services._receipt_row(f, account_id=1, now=now) for f in facts]
        note("  receipt column values incl. raw_record JSON (_receipt_row)", time.perf_counter() - t)
        t = time.perf_counter()
        for f in facts:
            dumps_exact(f.record)
        note("  of which raw_record JSON (dumps_exact)", time.perf_counter() - t)
        statements.clear()
        t = time.perf_counter()
        with connection.execute_wrapper(timed):
            services.commit_usage_facts(facts=facts)
        note("commit_usage_facts (one transaction)", time.perf_counter() - t)
        for key, seconds in statements.items():
            note(f"  SQL {key}", seconds)
    print(f"\nStages of one 512-record batch, in process, {batches} batches (ms):")
    print(f"{'stage':<58} {'median':>7} {'min':>7}")
    for name, values_ms in stages.items():
        print(f"{name:<58} {statistics.median(values_ms):>7.1f} {min(values_ms):>7.1f}")

    client = Client()
    profiler = cProfile.Profile()
    for i in range(batches + 2):
        body = batch_body(templates, 512)
        if i == 2:
            profiler.enable()
        response = client.post(
            "/api/internal/billing/ingest",
            data=body,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert response.status_code == 200, response.content[:300]
    profiler.disable()
    print(f"\ncProfile of {batches} POSTs of 512 records through the view (test client), by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (WEB_CONCURRENCY), default 3")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker (WEB_THREADS), default 8")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads, default 4")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of batches (default 1.0)")
    parser.add_argument("--keep", action="store_true", help="keep gunicorn's logs (printed path)")
    parser.add_argument(
        "--profile", action="store_true", help="instead: where a 512-record batch spends its time (in process)"
    )
    args = parser.parse_args(argv)

    token = secrets.token_urlsafe(48)
    database_url, cleanup_db = fresh_database("bench_ingest")
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(64),
            "BILLING_INGEST_TOKEN": token,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "CELERY_BROKER_URL": "",
            "DJANGO_SETTINGS_MODULE": "billing_project.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import django

    django.setup()
    import psycopg
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import BillingAccount, CreditLedgerEntry, EndUserAlias
    from receipts.models import ChargeReceipt, IngestBatch

    log_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    proc = None
    try:
        started = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        account = BillingAccount.objects.create(name="bench")
        EndUserAlias.objects.create(account=account, end_user=END_USER)
        templates = load_templates()
        conninfo = conninfo_from_settings(connection.settings_dict)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(RAW_TABLES)
            (raw_account,) = conn.execute(
                "INSERT INTO bench_account (public_id, name, balance_credits, created_at) "
                "VALUES (gen_random_uuid(), 'raw', 0, now()) RETURNING id"
            ).fetchone()
        connection.close()
        print(f"bench: migrated in {time.perf_counter() - started:.1f}s", flush=True)
        if args.profile:
            profile_ingest(templates, batches=max(3, round(10 * args.scale)), token=token)
            return 0

        proc, base_url = start_gunicorn(
            env=dict(os.environ), workers=args.workers, threads=args.threads, log_dir=log_dir
        )
        print(f"bench: gunicorn ({args.workers} gthread workers x {args.threads} threads) at {base_url}", flush=True)
        make_service = service_sender(base_url, token, templates)
        make_raw = raw_sender(conninfo, raw_account, templates)

        def service_phase(phase: Phase) -> Phase:
            last = IngestBatch.objects.order_by("-id").values_list("id", flat=True).first() or 0
            run_phase(phase, make_service)
            durations = IngestBatch.objects.filter(id__gt=last).values_list("duration_ms", flat=True)
            phase.view_ms = [d for d in durations if d is not None]
            connection.close()
            return phase

        def batches(size: int) -> int:
            return max(args.clients, round(BATCHES[size] * args.scale))

        # Warm-up: every worker loads Django, opens its connection, and the caches fill.
        for size in BATCH_SIZES:
            run_phase(Phase("warm-up", size, args.clients * args.workers, args.clients), make_service)
            run_phase(Phase("warm-up raw", size, args.clients, args.clients), make_raw)

        service: dict[int, Phase] = {}
        raw: dict[int, Phase] = {}
        for size in BATCH_SIZES:
            service[size] = service_phase(Phase("service", size, batches(size), args.clients))
            print(f"bench: service batch {size}: {service[size].rate:.0f} records/s", flush=True)
            raw[size] = run_phase(Phase("raw", size, batches(size), args.clients), make_raw)
            print(f"bench: raw SQL batch {size}: {raw[size].rate:.0f} records/s", flush=True)
        # One sender, as one LiteLLM proxy sends (its flush lock sends one batch at a time).
        single = service_phase(Phase("1 sender, like one LiteLLM proxy", 512, max(10, batches(512) // 2), 1))
        print_table(service, raw, [single])

        errors = [e for p in [*service.values(), *raw.values(), single] for e in p.errors]
        if errors:
            print(f"\n{len(errors)} errors, first: {errors[0]}")

        # The books: one receipt per record posted, balance equal to the ledger.
        account.refresh_from_db()
        ledger_sum = sum(CreditLedgerEntry.objects.filter(account=account).values_list("amount_credits", flat=True))
        receipts = ChargeReceipt.objects.count()
        debits = CreditLedgerEntry.objects.filter(account=account, reason="usage").count()
        ok = account.balance_credits == ledger_sum and receipts == debits
        print(
            f"\nbooks: {receipts} receipts, {debits} usage debits, balance {account.balance_credits} "
            f"== ledger {ledger_sum}: {'OK' if ok else 'MISMATCH'}"
        )
        connection.close()
        return 0 if ok and not errors else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        connection.close()
        if args.keep:
            print(f"gunicorn logs kept in {log_dir}")
        else:
            for path in log_dir.iterdir():
                path.unlink()
            log_dir.rmdir()
        cleanup_db()


if __name__ == "__main__":
    sys.exit(main())
