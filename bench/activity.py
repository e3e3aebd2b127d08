#!/usr/bin/env python
"""Activity benchmark: the first page of an account with 10,000,000 receipts (issue 18: p99 ≤ 50 ms).

    .venv/bin/python bench/activity.py                      # 10M receipts: most of the time is building them
    .venv/bin/python bench/activity.py --receipts 1000000   # a quicker look

1. PostgreSQL: DATABASE_URL's server if set (a fresh database, dropped at the end), else an embedded one.
2. `migrate`; an owner with an account; `--receipts` receipts spread over the last 90 days by call time
   (INSERT … SELECT generate_series, bench/invoice.py's generator, in chunks; no ledger entries: the page reads
   receipts), plus 200 waiting calls (open deferrals with the account); VACUUM ANALYZE.
3. Timings through Django's test client, session auth, the full view: GET /api/billing/activity (first page,
   50 rows), the first page filtered by model, a page 100 pages deep (keyset cursor), and the HTML page with its
   30-day chart; p50/p99 over --runs. It asserts nothing about speed.
"""

import argparse
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402

TARGET_P99_MS = 50.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receipts", type=int, default=10_000_000, help="receipts of the account (10,000,000)")
    parser.add_argument("--chunk", type=int, default=500_000, help="receipts per INSERT (500,000)")
    parser.add_argument("--runs", type=int, default=200, help="requests per timing (200)")
    args = parser.parse_args(argv)

    database_url, cleanup_db = fresh_database("bench_activity")
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": secrets.token_urlsafe(64),
            "BILLING_INGEST_TOKEN": secrets.token_urlsafe(48),
            "DEBUG": "false",
            "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",
            "CELERY_BROKER_URL": "",
            "DJANGO_SETTINGS_MODULE": "billing_project.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from accounts.services import billing_account_create
    from bench.invoice import RECEIPTS_SQL, receipt_params
    from receipts.models import DeferredUsage

    try:
        call_command("migrate", verbosity=0, interactive=False)
        owner = get_user_model().objects.create_user("bench-owner", password=secrets.token_urlsafe(12))
        account = billing_account_create(name="Bench account", owner=owner)
        now = datetime.now(UTC)
        start = now - timedelta(days=90)
        step = 90 * 86400 / args.receipts
        built = time.perf_counter()
        for first in range(0, args.receipts, args.chunk):
            last = min(first + args.chunk, args.receipts) - 1
            params = receipt_params(
                account_id=account.pk, end_user="bench-user", first=first, last=last, seed="a", start=start, step=step
            )
            with connection.cursor() as cursor:
                cursor.execute(RECEIPTS_SQL, params)
            print(f"bench: {last + 1:,} receipts ({time.perf_counter() - built:.0f} s)", flush=True)
        DeferredUsage.objects.bulk_create(
            [
                DeferredUsage(
                    source_reference=f"waiting-{i}/0/waiting-{i}",
                    litellm_call_id=f"waiting-{i}",
                    reason=DeferredUsage.Reason.UNKNOWN_COST,
                    account=account,
                    called_at=now - timedelta(minutes=i),
                )
                for i in range(200)
            ]
        )
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE receipts_chargereceipt")
            cursor.execute("VACUUM ANALYZE receipts_deferredusage")
        print(f"bench: data built in {time.perf_counter() - built:.0f} s", flush=True)

        client = Client()
        client.force_login(owner)

        def timed(label: str, url: str, params: dict[str, str]) -> None:
            for _ in range(5):
                client.get(url, params, secure=True)
            durations = []
            for _ in range(args.runs):
                began = time.perf_counter()
                response = client.get(url, params, secure=True)
                durations.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.content[:300]
            p99 = percentile(durations, 99)
            verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
            print(
                f"  {label}: p50 {statistics.median(durations):.1f} ms, p99 {p99:.1f} ms "
                f"(target p99 ≤ {TARGET_P99_MS:.0f} ms: {verdict})",
                flush=True,
            )

        api = "/api/billing/activity"
        cursor = ""
        for _ in range(100):
            cursor = client.get(api, {"cursor": cursor} if cursor else {}, secure=True).json()["next"]
        print(
            f"\nActivity of one account with {args.receipts:,} receipts and 200 waiting calls ({args.runs} requests):"
        )
        timed("first page (JSON, 50 rows)", api, {})
        timed("first page filtered by model", api, {"model": "gpt-4o-mini"})
        timed("page 101 (keyset cursor)", api, {"cursor": cursor})
        timed(
            "billed only, one week of call time",
            api,
            {"status": "billed", "since": (now - timedelta(days=7)).isoformat()},
        )
        timed("HTML page with its 30-day chart", "/billing/activity/", {})
        return 0
    finally:
        connection.close()
        cleanup_db()


if __name__ == "__main__":
    sys.exit(main())
