#!/usr/bin/env python
"""Reconcile benchmark: `manage.py reconcile` over a day of 1,000,000 spend-log rows and 1,000,000 receipts.

    .venv/bin/python bench/reconcile.py                    # 1M rows (+ a 100k day): ~12 minutes, mostly setup
    .venv/bin/python bench/reconcile.py --rows 200000      # a quick look

What it does (bench/README.md, "Reconcile", has the figures):
1. PostgreSQL: DATABASE_URL's server if set (a fresh database is created on
   it and dropped at the end), else a throwaway embedded server in a temp dir.
   `migrate`, 100 billing accounts with one end-user alias each.
2. Two UTC days of calls: a small one (--small-rows, 100,000) and a large one
   (--rows, 1,000,000). For each call a LiteLLM_SpendLogs-shaped row (the
   pinned columns, `metadata` the ~1.9 KB SpendLogsMetadata JSON) goes into a
   table that the spend-log stand-in serves, and a receipt goes into
   receipts_chargereceipt, both with COPY; the usage debits follow with one
   INSERT … SELECT (the ledger and summary triggers run for every entry).
   Planted per day: missing receipts, cost mismatches, receipts unknown to
   LiteLLM, receipts without a debit (orphan_usage), receipts charged the
   wrong credits, plus balance and summary drifts (triggers disabled for that).
3. The stand-in of LiteLLM's /spend/logs/v2 (tests/litellm_standin.py) runs in
   its own process. Each row is serialised once by PostgreSQL as the v2 route
   serialises it (json_build_object of the list columns, metadata an object)
   into a file sorted by startTime; a page is then a binary search and a slice
   of that file, with LiteLLM's capped count. So the pages are exactly the
   pinned shape, and the figures are the reconciler's, not the stand-in's
   (a real LiteLLM spends 10-50 ms of SQL on each page: see bench/README.md).
4. `manage.py reconcile --json` runs as a subprocess for each day; wall time,
   the subprocess's peak RSS (wait4's ru_maxrss), the stand-in's CPU time and
   the discrepancies found (checked against what was planted) are printed.

It is a benchmark, not a test; it checks only that every planted discrepancy was found.
"""

import argparse
import bisect
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402
from billing_project.db import conninfo_from_settings  # noqa: E402

ACCOUNTS = 100
PLANT = {"missing_receipt": 100, "cost_mismatch": 100, "unknown_to_litellm": 100, "orphan_usage": 10}
PLANT_CREDITS = 10
PLANT_BALANCE = 3
PLANT_SUMMARY = 2
TARGET_SECONDS = 60.0
SPEND_TABLE = "bench_spend_logs"
MARK = "@@CALL@@"

SPEND_TABLE_DDL = f"""
CREATE UNLOGGED TABLE {SPEND_TABLE} (
    request_id text PRIMARY KEY,
    call_type text NOT NULL,
    api_key text NOT NULL DEFAULT '',
    spend double precision NOT NULL DEFAULT 0,
    total_tokens integer NOT NULL DEFAULT 0,
    prompt_tokens integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    "startTime" timestamp(3) NOT NULL,
    "endTime" timestamp(3) NOT NULL,
    "completionStartTime" timestamp(3),
    model text NOT NULL DEFAULT '',
    model_id text DEFAULT '',
    model_group text DEFAULT '',
    custom_llm_provider text DEFAULT '',
    api_base text DEFAULT '',
    "user" text DEFAULT '',
    metadata json DEFAULT '{{}}',
    cache_hit text DEFAULT '',
    cache_key text DEFAULT '',
    request_tags json DEFAULT '[]',
    team_id text,
    organization_id text,
    end_user text,
    requester_ip_address text,
    session_id text,
    status text,
    mcp_namespaced_tool_name text,
    agent_id text,
    litellm_call_id text,
    request_duration_ms integer
)
"""
SPEND_COPY_COLUMNS = (
    'request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens, "startTime", '
    '"endTime", "completionStartTime", model, model_id, model_group, custom_llm_provider, api_base, "user", '
    "metadata, cache_hit, cache_key, request_tags, team_id, organization_id, end_user, requester_ip_address, "
    "session_id, status, litellm_call_id, request_duration_ms"
)
# Each row as FastAPI would serialise it on /spend/logs/v2 (_SPEND_LOG_LIST_COLUMNS, metadata hydrated),
# built once by PostgreSQL after the COPY so that serving a page costs the stand-in next to nothing.
ROW_JSON_SQL = f"""
CREATE UNLOGGED TABLE {SPEND_TABLE}_json AS
SELECT "startTime", json_build_object(
    'request_id', request_id, 'call_type', call_type, 'api_key', api_key, 'spend', spend,
    'total_tokens', total_tokens, 'prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens,
    'startTime', "startTime" AT TIME ZONE 'UTC', 'endTime', "endTime" AT TIME ZONE 'UTC',
    'completionStartTime', "completionStartTime" AT TIME ZONE 'UTC', 'model', model, 'model_id', model_id,
    'model_group', model_group, 'custom_llm_provider', custom_llm_provider, 'api_base', api_base,
    'user', "user", 'metadata', metadata, 'cache_hit', cache_hit, 'cache_key', cache_key,
    'request_tags', request_tags::text, 'team_id', team_id, 'organization_id', organization_id,
    'end_user', end_user, 'requester_ip_address', requester_ip_address, 'session_id', session_id,
    'status', status, 'mcp_namespaced_tool_name', mcp_namespaced_tool_name, 'agent_id', agent_id,
    'litellm_call_id', litellm_call_id, 'request_duration_ms', request_duration_ms)::text AS row_json
  FROM {SPEND_TABLE}
"""
# --- the stand-in's row source (in its own process) -------------------------------------------------


class FileSource:
    """Pages sliced out of one file of row JSON sorted by startTime (memory-mapped; the stand-in's process only).

    Serving a page is a binary search and a slice of bytes, so the figures measure the
    reconciler rather than the stand-in. Each row is written as `<json>,\n`.
    """

    def __init__(self, path: Path, times: Any, offsets: Any) -> None:
        import mmap

        self.handle = path.open("rb")
        self.data = mmap.mmap(self.handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.times, self.offsets = times, offsets

    @classmethod
    def build(cls, conninfo: str, path: Path) -> "FileSource":
        import psycopg

        times, offsets = array("d"), array("q", [0])
        with psycopg.connect(conninfo) as conn, conn.cursor(name="rows") as cur, path.open("wb") as out:
            cur.itersize = 5000
            cur.execute(f'SELECT extract(epoch FROM "startTime")::float8, row_json FROM {SPEND_TABLE}_json ORDER BY 1')
            position = 0
            for moment, row_json in cur:
                chunk = row_json.encode() + b",\n"
                out.write(chunk)
                position += len(chunk)
                times.append(moment)
                offsets.append(position)
        return cls(path, times, offsets)

    def page(
        self,
        *,
        start: datetime,
        end: datetime,
        ascending: bool,
        offset: int,
        limit: int,
        cap: int,
        end_user: str | None = None,
    ) -> tuple[bytes, int]:
        if end_user is not None:
            raise NotImplementedError("the bench's file of rows is not indexed by end user")
        low = bisect.bisect_left(self.times, start.timestamp())
        high = bisect.bisect_right(self.times, end.timestamp())
        count = high - low
        if ascending:
            first, last = low + offset, min(low + offset + limit, high)
            body = self.data[self.offsets[first] : self.offsets[last]] if first < last else b""
        else:
            first, last = max(high - offset - limit, low), high - offset
            lines = self.data[self.offsets[first] : self.offsets[last]].split(b",\n")[:-1] if first < last else []
            body = b",\n".join(reversed(lines)) + (b",\n" if lines else b"")
        return b"[" + body[:-2] + b"]", min(count, cap + 1)

    def by_request_id(self, key: str) -> bytes:
        return b"[]"


def serve(conninfo: str, port_file: Path) -> None:
    """The stand-in process: write the rows to a file, then serve them until SIGTERM."""
    import signal

    from tests.litellm_standin import SpendLogStandIn

    started = time.perf_counter()
    source = FileSource.build(conninfo, port_file.with_name("spend-logs.jsonl"))
    print(f"bench: stand-in: {len(source.times):,} rows written in {time.perf_counter() - started:.0f}s", flush=True)
    standin = SpendLogStandIn(source=source)
    standin.start()
    port_file.write_text(standin.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    standin.stop()


# --- data ---------------------------------------------------------------------------------------------


def call_id(day: int, i: int) -> str:
    return str(uuid.UUID(int=(day << 96) | (0xB1 << 80) | i))


def request_id(day: int, i: int) -> str:
    return f"chatcmpl-{uuid.UUID(int=(day << 96) | (0xA5 << 80) | i)}"


def cost_of(i: int) -> Decimal:
    return Decimal(i % 997 + 1) * Decimal("0.0000001")


def generate_day(conn: Any, *, day: int, start: datetime, rows: int, accounts: list[int]) -> dict[str, int]:
    """COPY a day's spend logs and receipts, plant discrepancies, debit the rest; returns what was planted."""
    from accounts.money import current_charge_rate
    from billing_project.exactjson import dumps_exact
    from receipts.models import ChargeReceipt
    from tests.litellm_standin import API_KEY_HASH, spend_logs_metadata

    step = 86400 / rows
    # Spread over the day on one stride, each kind at its own offset: disjoint by construction.
    stride = rows // 100
    assert stride > 10, "at least 1,100 rows a day"

    def spread(count: int, offset: int) -> set[int]:
        return {j * stride + offset for j in range(count)}

    missing = spread(PLANT["missing_receipt"], 1)
    mismatched = spread(PLANT["cost_mismatch"], 2)
    unknown = spread(PLANT["unknown_to_litellm"], 3)
    orphans = spread(PLANT["orphan_usage"], 4)
    miscredited = spread(PLANT_CREDITS, 5)
    meta_parts = dumps_exact(spend_logs_metadata(litellm_call_id=MARK, cost=Decimal("0.0000135"))).split(MARK)
    tags = '["User-Agent: python-httpx"]'
    fields = [f for f in ChargeReceipt._meta.concrete_fields if not f.primary_key]
    raw_record = dumps_exact({"bench": True, "source": "bench/reconcile.py"})

    t0 = time.perf_counter()
    with conn.cursor() as cur, cur.copy(f"COPY {SPEND_TABLE} ({SPEND_COPY_COLUMNS}) FROM STDIN") as copy:
        for i in range(rows):
            if i in unknown:
                continue
            at = start + timedelta(seconds=i * step)
            cid = call_id(day, i)
            copy.write_row(
                (
                    request_id(day, i),
                    "acompletion",
                    API_KEY_HASH,
                    float(cost_of(i)),  # LiteLLM's spend column is a double precision
                    30,
                    10,
                    20,
                    at,
                    at + timedelta(milliseconds=250),
                    at + timedelta(milliseconds=250),
                    "openai/gpt-4o-mini",
                    "3298353453c8eb9c2c4bce304f4c954ed4de8ff537fe27095f2f487c318a4319",
                    "gpt-4o-mini",
                    "openai",
                    "https://api.openai.com",
                    "default_user_id",
                    cid.join(meta_parts),
                    "False",
                    "Cache OFF",
                    tags,
                    "",
                    "",
                    f"bench-user-{i % ACCOUNTS}",
                    "127.0.0.1",
                    cid,
                    "success",
                    cid,
                    250,
                )
            )
    t1 = time.perf_counter()
    columns = ", ".join(f.column for f in fields)
    with conn.cursor() as cur, cur.copy(f"COPY receipts_chargereceipt ({columns}) FROM STDIN") as copy:
        for i in range(rows):
            if i in missing:
                continue
            at = start + timedelta(seconds=i * step)
            cid = call_id(day, i)
            cost = cost_of(i) + (Decimal("0.000001") if i in mismatched else 0)
            credits = current_charge_rate().credits_for(cost) + (1 if i in miscredited else 0)
            values = {
                "account": accounts[i % ACCOUNTS],
                "source_system": "litellm",
                "source_reference": f"{cid}/0/{cid}",
                "litellm_call_id": cid,
                "request_id": request_id(day, i),
                "run_id": cid,
                "attempt": 0,
                "status": "success",
                "model_group": "gpt-4o-mini",
                "model": "openai/gpt-4o-mini",
                "provider": "openai",
                "call_type": "acompletion",
                "stream": False,
                "cache_hit": False,
                "prompt_tokens": 10,
                "completion_tokens": 20,
                "total_tokens": 30,
                "cost_usd": cost,
                "charged_credits": credits,
                "zero_cost_suspect": False,
                "end_user": f"bench-user-{i % ACCOUNTS}",
                "api_key_hash": API_KEY_HASH,
                "api_key_alias": "",
                "team_id": "",
                "started_at": at,
                "ended_at": at + timedelta(milliseconds=250),
                "created_at": at + timedelta(seconds=1),
                "raw_record": raw_record,
            }
            copy.write_row([values[f.name] for f in fields])
    t2 = time.perf_counter()
    # Usage debits for every receipt of the day but the planted orphans (the triggers move balances and
    # summaries), a few thousand per transaction as LiteLLM batches would: one transaction of a million
    # would make each account row's update chain, and so every balance update, ever longer.
    orphan_refs = [f"{call_id(day, i)}/0/{call_id(day, i)}" for i in orphans]
    low, high = conn.execute(
        "SELECT min(id), max(id) FROM receipts_chargereceipt WHERE started_at >= %s AND started_at < %s",
        [start, start + timedelta(days=1)],
    ).fetchone()
    for chunk in range(low, high + 1, 5000):
        conn.execute(
            """
            INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, receipt_id, memo, created_at)
            SELECT r.account_id, -r.charged_credits, 'usage', r.id, '', r.created_at
              FROM receipts_chargereceipt r
             WHERE r.id >= %s AND r.id < %s AND NOT (r.source_reference = ANY(%s))
             ORDER BY r.account_id, r.id
            """,
            [chunk, min(chunk + 5000, high + 1), orphan_refs],
        )
    t3 = time.perf_counter()
    print(
        f"bench: day {start.date()}: {rows:,} calls; spend logs COPY {t1 - t0:.0f}s, receipts COPY {t2 - t1:.0f}s, "
        f"ledger INSERT…SELECT {t3 - t2:.0f}s",
        flush=True,
    )
    return {
        "missing_receipt": len(missing),
        "cost_mismatch": len(mismatched),
        "unknown_to_litellm": len(unknown),
        "orphan_usage": len(orphans),
        "credits_mismatch": len(miscredited),
    }


def plant_book_drifts(conn: Any, *, accounts: list[int], day: date) -> None:
    """Balances and summaries the triggers would refuse to let drift."""
    conn.execute("ALTER TABLE accounts_billingaccount DISABLE TRIGGER account_balance_guard")
    conn.execute(
        "UPDATE accounts_billingaccount SET balance_credits = balance_credits + 11 WHERE id = ANY(%s)",
        [accounts[:PLANT_BALANCE]],
    )
    conn.execute("ALTER TABLE accounts_billingaccount ENABLE TRIGGER account_balance_guard")
    conn.execute("ALTER TABLE invoices_ledgerdailysummary DISABLE TRIGGER summary_guard")
    conn.execute(
        "UPDATE invoices_ledgerdailysummary SET entries = entries + 1 WHERE day = %s AND account_id = ANY(%s)",
        [day, accounts[-PLANT_SUMMARY:]],
    )
    conn.execute("ALTER TABLE invoices_ledgerdailysummary ENABLE TRIGGER summary_guard")


# --- running ------------------------------------------------------------------------------------------


def run_reconcile(env: dict[str, str], since: datetime, until: datetime, workdir: Path) -> dict[str, Any]:
    """`manage.py reconcile --json` as a subprocess: its report, wall time and peak RSS (wait4)."""
    argv = [sys.executable, "manage.py", "reconcile", "--since", since.isoformat(), "--until", until.isoformat()]
    out_path, err_path = workdir / "reconcile.json", workdir / "reconcile.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, "--json"], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code not in (0, 1):
        raise SystemExit(f"reconcile exited {code}:\n{err_path.read_text()[-3000:]}")
    report = json.loads(out_path.read_text())
    return {"report": report, "wall": wall, "maxrss_mb": usage.ru_maxrss / 1024, "code": code}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="calls on the large day (default 1,000,000)")
    parser.add_argument("--small-rows", type=int, default=100_000, help="calls on the small day (default 100,000)")
    parser.add_argument(
        "--hold", action="store_true", help="afterwards keep the database and stand-in up until interrupted"
    )
    parser.add_argument("--serve", nargs=2, metavar=("CONNINFO", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]))
        return 0

    import signal

    # SIGTERM cleans up like Ctrl-C does (the embedded server and the stand-in are stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    database_url, cleanup_db = fresh_database("bench_reconcile")
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(64),
            "BILLING_INGEST_TOKEN": secrets.token_urlsafe(48),
            "DEBUG": "false",
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

    standin_proc = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    try:
        started = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        conninfo = conninfo_from_settings(connection.settings_dict)
        connection.close()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            conn.execute(SPEND_TABLE_DDL)
            accounts = [
                row[0]
                for row in conn.execute(
                    "INSERT INTO accounts_billingaccount (public_id, name, balance_credits, created_at) "
                    "SELECT gen_random_uuid(), 'bench ' || n, 0, now() FROM generate_series(1, %s) AS n RETURNING id",
                    [ACCOUNTS],
                ).fetchall()
            ]
            conn.execute(
                "INSERT INTO accounts_enduseralias (end_user, account_id, created_at) "
                "SELECT 'bench-user-' || (ordinality - 1), id, now() "
                "FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(id)",
                [accounts],
            )
            today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            days = {
                "small": (today - timedelta(days=3), args.small_rows),
                "large": (today - timedelta(days=2), args.rows),
            }
            planted = {}
            for index, (name, (start, rows)) in enumerate(days.items(), start=1):
                planted[name] = generate_day(conn, day=index, start=start, rows=rows, accounts=accounts)
            plant_book_drifts(conn, accounts=accounts, day=days["large"][0].date())
            conn.execute(ROW_JSON_SQL)
            conn.execute(f'CREATE INDEX ON {SPEND_TABLE}_json ("startTime")')
            conn.execute("VACUUM ANALYZE")
        print(f"bench: data ready in {time.perf_counter() - started:.0f}s", flush=True)

        port_file = workdir / "standin-url"
        standin_proc = subprocess.Popen([sys.executable, __file__, "--serve", conninfo, str(port_file)], cwd=ROOT)
        deadline = time.monotonic() + 900
        while not (port_file.exists() and port_file.read_text()):
            if standin_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the spend-log stand-in did not start")
            time.sleep(0.1)
        env = {**os.environ, "LITELLM_BASE_URL": port_file.read_text(), "LITELLM_MASTER_KEY": "sk-standin-master-key"}
        port_file.unlink()

        results = {}
        for name, (start, rows) in days.items():
            before = _cpu_of(standin_proc.pid)
            result = run_reconcile(env, start, start + timedelta(days=1), workdir)
            result["standin_cpu"] = _cpu_of(standin_proc.pid) - before
            result["rows"] = rows
            results[name] = result
            report = result["report"]
            print(
                f"bench: {name} day, {rows:,} calls: {result['wall']:.1f}s wall, "
                f"peak RSS {result['maxrss_mb']:.0f} MB, "
                f"{report['spend_log_rows']:,} spend-log rows read, stand-in CPU {result['standin_cpu']:.1f}s, "
                f"found {json.dumps({k: v for k, v in report['found'].items() if v})}, "
                f"phases {json.dumps(report['timings'])}",
                flush=True,
            )
        _check(results, planted)
        print_table(results)
        if args.hold:
            print(f"bench: holding: DATABASE_URL={database_url} LITELLM_BASE_URL={env['LITELLM_BASE_URL']}", flush=True)
            threading.Event().wait()
        return 0
    finally:
        if standin_proc is not None:
            standin_proc.terminate()
            standin_proc.wait(timeout=30)
        cleanup_db()
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check(results: dict[str, Any], planted: dict[str, dict[str, int]]) -> None:
    for name, result in results.items():
        found = result["report"]["found"]
        expected = dict(planted[name])
        if name == "large":
            expected["balance_drift"] = PLANT_BALANCE
            expected["summary_drift"] = PLANT_SUMMARY
            expected["invoice_identity"] = 0  # entries drifted, amounts did not
        for kind, count in expected.items():
            if found.get(kind) != count:
                raise SystemExit(f"bench: {name} day: expected {count} {kind}, reconcile found {found.get(kind)}")
    print("bench: every planted discrepancy was found", flush=True)


def print_table(results: dict[str, Any]) -> None:
    print("\n| window | spend-log rows | receipts | wall time | peak RSS | rows/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for result in results.values():
        rows = result["report"]["spend_log_rows"]
        print(
            f"| 1 day | {rows:,} | {result['rows']:,} | {result['wall']:.1f} s | {result['maxrss_mb']:.0f} MB | "
            f"{rows / result['wall']:,.0f} |"
        )
    large = results["large"]["wall"]
    verdict = "under" if large < TARGET_SECONDS else "OVER"
    print(f"\nlarge window: {large:.1f}s, {verdict} the {TARGET_SECONDS:.0f}s target ({math.ceil(large)}s)")


if __name__ == "__main__":
    sys.exit(main())
