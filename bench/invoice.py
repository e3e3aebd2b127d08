#!/usr/bin/env python
"""Invoice benchmark: an account with 1,000,000 usage entries in one month.

    .venv/bin/python bench/invoice.py                   # about 6 minutes on 2 cores, mostly building data
    .venv/bin/python bench/invoice.py --entries 100000  # a quick look

What it does (bench/README.md, "Invoice", has the figures):
1. PostgreSQL: DATABASE_URL's server if set (a fresh database is created on
   it and dropped at the end), else a throwaway embedded server in a temp dir.
2. `migrate`; a user owning an account; `--history` usage entries spread over
   the 12 months before the invoiced month (so the opening balance has real
   history behind it), a grant before the month and top-ups, a refund and an
   adjustment in it.
3. `--entries` receipts in the invoiced month (last month), written with
   INSERT … SELECT generate_series, then their usage ledger entries with
   INSERT … SELECT from the receipts, one transaction per chunk. The ledger
   triggers run for every row exactly as in production: they move the
   balance, set balance_after and maintain invoices.LedgerDailySummary and
   LedgerPayerSummary (receipts come from 7 API keys and 40 end users).
   A second account gets 10,000 receipts (for the admin's account filter).
   Then VACUUM ANALYZE, as autovacuum would.
4. Timings (p50/p99 over --runs): invoice_for_account(); the invoice page,
   its CSV and its JSON through Django's test client (the full view,
   template and middleware); /billing/balance; the same numbers in plain SQL
   over the raw ledger joined to receipts (the comparison); and the admin's
   receipt and ledger lists on the million rows.
5. Checks that the invoice equals the raw-ledger numbers, that opening + added
   − used = closing, that the closing balance is the account's balance and that
   the breakdowns by API key and end user sum to the credits used.
6. Ingest-side cost of the summary trigger: one INSERT of --trigger-batch usage
   entries with no summary trigger, migration 0002's row-level trigger and
   0003's statement-level one (rolled back; bench/README.md has the figures).

It is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402

TARGET_P50_MS = 50.0
# (model group, model, provider, prompt tokens, completion tokens): picked by entry number % 10.
GROUPS = [
    ("gpt-4o", "openai/gpt-4o", "openai", 900, 300),
    ("gpt-4o", "openai/gpt-4o", "openai", 1200, 500),
    ("gpt-4o-mini", "openai/gpt-4o-mini", "openai", 400, 120),
    ("gpt-4o-mini", "openai/gpt-4o-mini", "openai", 250, 80),
    ("gpt-4o-mini", "openai/gpt-4o-mini", "openai", 600, 200),
    ("claude-3-5-sonnet", "anthropic/claude-3-5-sonnet", "anthropic", 2000, 700),
    ("claude-3-5-sonnet", "anthropic/claude-3-5-sonnet", "anthropic", 1500, 400),
    ("text-embedding-3-small", "openai/text-embedding-3-small", "openai", 300, 0),
    ("llama-3-70b", "groq/llama-3-70b", "groq", 800, 250),
    ("gemini-1.5-pro", "gemini/gemini-1.5-pro", "gemini", 1000, 350),
]


# --- database ---------------------------------------------------------------------------------------


# --- data -----------------------------------------------------------------------------------------------

# Receipt i (i = first .. last) of account %(account)s: a deterministic call id, a model group
# from GROUPS, a cost of k/1,000,000 USD with k in 1..997, charged as ceil(cost × rate × markup)
# like accounts.money.charged_credits, at an evenly spread time from %(start)s by %(step)s seconds.
RECEIPTS_SQL = """
INSERT INTO receipts_chargereceipt (
    account_id, source_system, source_reference, litellm_call_id, request_id, run_id, attempt, status,
    model_group, model, provider, call_type, stream, cache_hit, prompt_tokens, completion_tokens,
    total_tokens, cost_usd, charged_credits, credits_per_usd, markup, zero_cost_suspect, provisional_cost, end_user,
    api_key_hash,
    api_key_alias, team_id, payer_source, spend_log_request_id, started_at, ended_at, created_at)
SELECT %(account)s, 'litellm', c.call_id || '/0/' || c.call_id, c.call_id, 'chatcmpl-' || c.call_id, c.call_id,
       0, 'success', g.model_group, g.model, g.provider,
       CASE WHEN g.completion = 0 THEN 'aembedding' ELSE 'acompletion' END, (i %% 3 = 0), false,
       g.prompt, g.completion, g.prompt + g.completion, m.cost,
       ceil(m.cost * %(rate)s::numeric * %(markup)s::numeric)::bigint, %(rate)s::numeric, %(markup)s::numeric,
       false, false, %(end_user)s || '-' || (i %% %(end_users)s), md5('key' || (i %% %(keys)s)),
       CASE WHEN i %% %(keys)s %% 2 = 0 THEN 'key-' || (i %% %(keys)s) ELSE '' END, '', 'key', '',
       t.at, t.at + interval '2 seconds', t.at
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
 CROSS JOIN LATERAL (SELECT md5(%(seed)s || i)::uuid::text AS call_id) AS c
 CROSS JOIN LATERAL (SELECT ((i * 7919) %% 997 + 1)::numeric / 1000000 AS cost) AS m
 CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + make_interval(secs => i * %(step)s::float8) AS at) AS t
 CROSS JOIN LATERAL (
     SELECT (%(groups)s::text[])[1 + i %% 10] AS model_group, (%(models)s::text[])[1 + i %% 10] AS model,
            (%(providers)s::text[])[1 + i %% 10] AS provider, (%(prompts)s::int[])[1 + i %% 10] AS prompt,
            (%(completions)s::int[])[1 + i %% 10] AS completion
 ) AS g
 ORDER BY i
"""

# The usage debits of those receipts, in time order. The ledger triggers do the rest.
LEDGER_SQL = """
INSERT INTO accounts_creditledgerentry
    (account_id, amount_credits, reason, balance_after, receipt_id, idempotency_key, memo, created_by_id, created_at)
SELECT account_id, -charged_credits, 'usage', 0, id, NULL, '', NULL, created_at
  FROM receipts_chargereceipt
 WHERE id > %(after)s
 ORDER BY id
"""

CREDIT_SQL = """
INSERT INTO accounts_creditledgerentry
    (account_id, amount_credits, reason, balance_after, receipt_id, idempotency_key, memo, created_by_id, created_at)
VALUES (%s, %s, %s, 0, NULL, %s, 'bench', NULL, %s)
"""


# Who calls: receipt i is made with API key i % KEYS (every other one with an alias) for end user i % END_USERS.
KEYS, END_USERS = 7, 40


def receipt_params(
    *, account_id: int, end_user: str, first: int, last: int, seed: str, start: datetime, step: float
) -> dict[str, Any]:
    """RECEIPTS_SQL's parameters for receipts first..last (the current charging rate)."""
    from accounts.money import billing_markup, credits_per_usd

    return {
        "account": account_id,
        "end_user": end_user,
        "end_users": END_USERS,
        "keys": KEYS,
        "first": first,
        "last": last,
        "seed": seed,
        "start": start,
        "step": step,
        "rate": str(credits_per_usd()),
        "markup": str(billing_markup()),
        "groups": [g[0] for g in GROUPS],
        "models": [g[1] for g in GROUPS],
        "providers": [g[2] for g in GROUPS],
        "prompts": [g[3] for g in GROUPS],
        "completions": [g[4] for g in GROUPS],
    }


def add_usage(
    *, account_id: int, end_user: str, count: int, start: datetime, end: datetime, seed: str, chunk: int
) -> float:
    """`count` receipts and usage entries from start to end, one transaction per chunk; returns seconds."""
    from django.db import connection, transaction

    step = (end - start).total_seconds() / max(count, 1)
    started = time.perf_counter()
    done = 0
    while done < count:
        size = min(chunk, count - done)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM receipts_chargereceipt")
            (after,) = cursor.fetchone()
            cursor.execute(
                RECEIPTS_SQL,
                receipt_params(
                    account_id=account_id,
                    end_user=end_user,
                    first=done,
                    last=done + size - 1,
                    seed=seed,
                    start=start,
                    step=step,
                ),
            )
            cursor.execute(LEDGER_SQL, {"after": after})
        done += size
        if done % 100_000 < size or done == count:
            rate = done / (time.perf_counter() - started)
            print(f"bench:   {done:>9,d} / {count:,d} usage entries ({rate:,.0f}/s)", flush=True)
    return time.perf_counter() - started


def add_credit(account_id: int, amount: int, reason: str, at: datetime) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(CREDIT_SQL, [account_id, amount, reason, f"bench-{reason}-{secrets.token_hex(6)}", at])


# --- ingest-side cost of the summary trigger ----------------------------------------------------------

# Migration 0002's row-level trigger (its SQL file, up to the summary guard that 0002 also installs).
ROW_TRIGGER_SQL = Path(__file__).resolve().parent.parent / "invoices/migrations/sql/0002_summary_trigger.sql"
# (label, SQL run first in the transaction): which summary trigger the timed INSERT fires.
TRIGGER_VARIANTS = [
    ("no summary trigger (ledger_apply only)", "ALTER TABLE accounts_creditledgerentry DISABLE TRIGGER {statement}"),
    (
        "row trigger (0002: daily summary only, one upsert per entry)",
        "ALTER TABLE accounts_creditledgerentry DISABLE TRIGGER {statement};"
        " ALTER TABLE accounts_creditledgerentry ENABLE TRIGGER ledger_summarise",
    ),
    (
        "statement trigger (0003: daily + payer summary, one upsert per group)",
        "ALTER TABLE accounts_creditledgerentry ENABLE TRIGGER {statement}",
    ),
]


def trigger_cost(*, account_id: int, day: datetime, batch: int, runs: int) -> list[tuple[str, list[float]]]:
    """ms to INSERT `batch` usage entries in one statement, under each summary trigger of TRIGGER_VARIANTS.

    Each run is one transaction, rolled back: the variant's triggers are switched, `batch` receipts
    of one minute of `day` are written (not timed), then their debits with one INSERT … SELECT (timed).
    Variants take turns, so load from elsewhere falls on all of them alike. The row-level trigger of
    migration 0002 is created for the measurement (disabled) and dropped at the end.
    """
    from django.db import connection, transaction

    row_trigger = ROW_TRIGGER_SQL.read_text().split("-- Only the ledger trigger")[0]
    with connection.cursor() as cursor:
        cursor.execute(row_trigger)
        cursor.execute("ALTER TABLE accounts_creditledgerentry DISABLE TRIGGER ledger_summarise")
    samples: dict[str, list[float]] = {label: [] for label, _ in TRIGGER_VARIANTS}
    try:
        for run in range(runs + 2):  # the first two rounds warm up
            for label, switch in TRIGGER_VARIANTS:
                with connection.cursor() as cursor:
                    try:
                        with transaction.atomic():
                            cursor.execute(switch.format(statement="ledger_summarise_statement"))
                            cursor.execute("SELECT coalesce(max(id), 0) FROM receipts_chargereceipt")
                            (after,) = cursor.fetchone()
                            first = 10_000_000 + run * batch
                            cursor.execute(
                                RECEIPTS_SQL,
                                receipt_params(
                                    account_id=account_id,
                                    end_user="bench-user",
                                    first=first,
                                    last=first + batch - 1,
                                    seed=f"trigger-{label}",
                                    start=day - timedelta(seconds=first * 0.1),
                                    step=0.1,
                                ),
                            )
                            started = time.perf_counter()
                            cursor.execute(LEDGER_SQL, {"after": after})
                            elapsed = (time.perf_counter() - started) * 1000
                            raise _Rollback
                    except _Rollback:
                        pass
                if run >= 2:
                    samples[label].append(elapsed)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER ledger_summarise ON accounts_creditledgerentry")
            cursor.execute("DROP FUNCTION billing_ledger_summarise()")
    return list(samples.items())


class _Rollback(Exception):
    """Leaves a measurement's transaction without keeping anything."""


# --- timing ---------------------------------------------------------------------------------------------


def timed(runs: int, action: Callable[[], Any], *, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, samples: list[float]) -> str:
    return f"| {label} | {len(samples)} | {p(samples, 0.5):.1f} | {p(samples, 0.99):.1f} |"


RAW_SQL = {
    "opening": """
        SELECT coalesce(sum(amount_credits), 0) FROM accounts_creditledgerentry
         WHERE account_id = %(account)s AND created_at < %(start)s""",
    "by_reason": """
        SELECT reason, count(*), sum(amount_credits) FROM accounts_creditledgerentry
         WHERE account_id = %(account)s AND created_at >= %(start)s AND created_at < %(end)s
         GROUP BY reason ORDER BY reason""",
    "by_model_group": """
        SELECT r.model_group, count(*), -sum(l.amount_credits), sum(r.prompt_tokens), sum(r.completion_tokens),
               sum(r.total_tokens)
          FROM accounts_creditledgerentry l JOIN receipts_chargereceipt r ON r.id = l.receipt_id
         WHERE l.account_id = %(account)s AND l.reason = 'usage'
           AND l.created_at >= %(start)s AND l.created_at < %(end)s
         GROUP BY r.model_group ORDER BY r.model_group""",
    "by_day": """
        SELECT (l.created_at AT TIME ZONE 'UTC')::date AS day, count(*), -sum(l.amount_credits),
               sum(r.total_tokens)
          FROM accounts_creditledgerentry l JOIN receipts_chargereceipt r ON r.id = l.receipt_id
         WHERE l.account_id = %(account)s AND l.reason = 'usage'
           AND l.created_at >= %(start)s AND l.created_at < %(end)s
         GROUP BY day ORDER BY day""",
    "by_api_key": """
        SELECT r.api_key_hash, count(*), -sum(l.amount_credits)
          FROM accounts_creditledgerentry l JOIN receipts_chargereceipt r ON r.id = l.receipt_id
         WHERE l.account_id = %(account)s AND l.reason = 'usage'
           AND l.created_at >= %(start)s AND l.created_at < %(end)s
         GROUP BY r.api_key_hash""",
}


def raw_ledger_invoice(params: dict[str, Any]) -> dict[str, Any]:
    """The invoice's numbers straight from the raw ledger (what the page would cost without the summary)."""
    from django.db import connection

    out: dict[str, Any] = {}
    with connection.cursor() as cursor:
        for name, sql in RAW_SQL.items():
            cursor.execute(sql, params)
            out[name] = cursor.fetchall()
    return out


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="usage entries in the month (1,000,000)")
    parser.add_argument("--history", type=int, default=50_000, help="usage entries in the 12 months before")
    parser.add_argument("--runs", type=int, default=200, help="timed runs of each read (200)")
    parser.add_argument("--chunk", type=int, default=500, help="rows per build transaction (500, like a LiteLLM batch)")
    parser.add_argument("--trigger-runs", type=int, default=40, help="runs of each summary-trigger variant (40)")
    parser.add_argument("--trigger-batch", type=int, default=512, help="usage entries per timed INSERT (512)")
    args = parser.parse_args(argv)

    database_url, cleanup_db = fresh_database("bench_invoice")
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

    from accounts.models import CreditLedgerEntry
    from accounts.services import billing_account_create
    from invoices.models import LedgerDailySummary
    from invoices.selectors import current_period, invoice_for_account
    from payers.services import end_user_alias_create
    from receipts.models import ChargeReceipt

    try:
        call_command("migrate", verbosity=0, interactive=False)
        User = get_user_model()
        owner = User.objects.create_user("bench-owner", password=secrets.token_urlsafe(12))
        staff = User.objects.create_superuser("bench-staff", password=secrets.token_urlsafe(12))
        account = billing_account_create(name="Bench account", owner=owner)
        end_user_alias_create(account=account, end_user="bench-user")
        small = billing_account_create(name="Small account", owner=owner)
        end_user_alias_create(account=small, end_user="small-user")

        period = current_period().previous
        start = datetime.combine(period.start, datetime.min.time(), tzinfo=UTC)
        end = datetime.combine(period.end, datetime.min.time(), tzinfo=UTC)
        year_before = start - timedelta(days=365)
        print(
            f"bench: building account {account.public_id}: {args.history:,d} usage entries from "
            f"{year_before.date()} and {args.entries:,d} in {period.label}",
            flush=True,
        )
        built = time.perf_counter()
        add_credit(account.pk, 5_000_000_000, "grant", year_before - timedelta(days=1))
        add_usage(
            account_id=account.pk,
            end_user="bench-user",
            count=args.history,
            start=year_before,
            end=start - timedelta(days=1),
            seed="history",
            chunk=args.chunk,
        )
        add_credit(account.pk, 100_000_000, "top_up", start + timedelta(days=2))
        ledger_seconds = add_usage(
            account_id=account.pk,
            end_user="bench-user",
            count=args.entries,
            start=start,
            end=end - timedelta(seconds=1),
            seed="month",
            chunk=args.chunk,
        )
        add_credit(account.pk, 250_000, "refund", start + timedelta(days=14, hours=3))
        add_credit(account.pk, -12_345, "adjustment", start + timedelta(days=20, hours=5))
        add_credit(account.pk, 100_000_000, "top_up", end + timedelta(hours=1))  # next month: not invoiced
        add_usage(
            account_id=small.pk,
            end_user="small-user",
            count=10_000,
            start=start,
            end=end,
            seed="small",
            chunk=args.chunk,
        )
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        built = time.perf_counter() - built
        summary_rows = LedgerDailySummary.objects.filter(account=account).count()
        print(
            f"bench: built in {built:.0f}s ({args.entries / ledger_seconds:,.0f} usage entries/s in the month, "
            f"triggers included); {ChargeReceipt.objects.count():,d} receipts, "
            f"{CreditLedgerEntry.objects.count():,d} ledger entries, {summary_rows:,d} summary rows for the account",
            flush=True,
        )

        # --- correctness first --------------------------------------------------------------------
        account.refresh_from_db()
        invoice = invoice_for_account(account=account, period=period)
        params = {"account": account.pk, "start": start, "end": end}
        raw = raw_ledger_invoice(params)
        assert invoice.opening_credits == raw["opening"][0][0]
        assert {r: s for r, _, s in raw["by_reason"] if r != "usage"} == {
            line.reason: line.credits for line in invoice.added_by_reason if line.entries
        }
        assert invoice.used_credits == -next(s for r, _, s in raw["by_reason"] if r == "usage")
        assert sorted(
            (g.model_group, g.calls, g.credits, g.prompt_tokens, g.completion_tokens, g.total_tokens)
            for g in invoice.by_model_group
        ) == sorted(tuple(r) for r in raw["by_model_group"])
        assert [(d.day, d.calls, d.used_credits, d.total_tokens) for d in invoice.by_day if d.calls] == [
            tuple(r) for r in raw["by_day"]
        ]
        assert invoice.opening_credits + invoice.added_credits - invoice.used_credits == invoice.closing_credits
        last_in_period = CreditLedgerEntry.objects.filter(account=account, created_at__lt=end).order_by("-id").first()
        assert last_in_period is not None and invoice.closing_credits == last_in_period.balance_after
        assert invoice.totals.calls == args.entries
        # The payer breakdown (top N + others) sums to the credits used and equals the raw ledger by key.
        for lines in (invoice.by_api_key, invoice.by_end_user):
            assert sum(line.credits for line in lines) == invoice.used_credits
            assert sum(line.calls for line in lines) == invoice.totals.calls
        if all(not line.is_others for line in invoice.by_api_key):
            assert sorted((line.key, line.calls, line.credits) for line in invoice.by_api_key) == sorted(
                tuple(r) for r in raw["by_api_key"]
            )
        print(
            f"bench: invoice {period.label}: opening {invoice.opening_credits:,d} + added {invoice.added_credits:,d}"
            f" − used {invoice.used_credits:,d} = closing {invoice.closing_credits:,d} credits;"
            f" {invoice.totals.calls:,d} calls; equal to the raw ledger and to balance_after",
            flush=True,
        )

        # --- timings ---------------------------------------------------------------------------------
        runs = args.runs
        user = Client()
        user.force_login(owner)
        admin = Client()
        admin.force_login(staff)
        label = period.label
        page_url = f"/billing/invoice/{label}/?account={account.public_id}"

        def get(client: Client, url: str) -> Callable[[], None]:
            def call() -> None:
                # As behind the TLS proxy of production (DEBUG=false redirects plain HTTP).
                response = client.get(url, secure=True)
                assert response.status_code == 200, (url, response.status_code)
                response.content  # noqa: B018 - render fully

            return call

        month_receipts = ChargeReceipt.objects.filter(account=account, created_at__gte=start).order_by("id")
        first_id = month_receipts.values_list("id", flat=True).first()
        call_id = month_receipts.filter(id__gte=first_id + args.entries // 2).values_list("litellm_call_id", flat=True)[
            0
        ]
        results = [
            (
                "invoice_for_account() (selector)",
                timed(runs, lambda: invoice_for_account(account=account, period=period)),
            ),
            ("invoice page, HTML (test client)", timed(runs, get(user, page_url))),
            ("invoice page, CSV", timed(runs, get(user, page_url + "&format=csv"))),
            (
                "invoice API, JSON",
                timed(runs, get(user, f"/api/billing/invoice?period={label}&account={account.public_id}")),
            ),
            ("/billing/balance", timed(runs, get(user, f"/billing/balance?account={account.public_id}"))),
        ]
        raw_runs = max(5, runs // 20)
        results.append(
            ("plain SQL over the raw ledger (5 queries)", timed(raw_runs, lambda: raw_ledger_invoice(params), warmup=1))
        )
        admin_runs = max(10, runs // 10)
        receipts_url = "/admin/receipts/chargereceipt/"
        for name, url in [
            ("admin receipts, first page", receipts_url),
            ("admin receipts, search by call id", f"{receipts_url}?q={call_id}"),
            ("admin receipts, filter model group", f"{receipts_url}?model_group=claude-3-5-sonnet"),
            ("admin receipts, filter small account", f"{receipts_url}?account={small.public_id}"),
            (
                "admin receipts, month of date hierarchy",
                f"{receipts_url}?created_at__year={period.year}&created_at__month={period.month}",
            ),
            ("admin ledger, first page", "/admin/accounts/creditledgerentry/"),
            (
                "admin ledger, filter account + reason",
                f"/admin/accounts/creditledgerentry/?account={account.pk}&reason__exact=usage",
            ),
        ]:
            results.append((name, timed(admin_runs, get(admin, url), warmup=2)))

        print()
        print(
            f"Invoice of one account with {args.entries:,d} usage entries in {label} "
            f"({args.history:,d} more in the year before); times in ms."
        )
        print()
        print("| what | runs | p50 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: |")
        for name, samples in results:
            print(row(name, samples))
        selector_p50 = p(results[0][1], 0.5)
        page_p50 = p(results[1][1], 0.5)
        raw_p50 = p(results[5][1], 0.5)
        print()
        costs = trigger_cost(
            account_id=account.pk, day=end - timedelta(days=2), batch=args.trigger_batch, runs=args.trigger_runs
        )
        print(f"Ingest-side cost: one INSERT of {args.trigger_batch} usage entries (one LiteLLM batch); ms.")
        print()
        print("| summary trigger | runs | p50 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: |")
        for name, samples in costs:
            print(row(name, samples))
        print()
        print(
            f"target p50 < {TARGET_P50_MS:.0f} ms: selector {selector_p50:.1f} ms, full page {page_p50:.1f} ms "
            f"-> {'MET' if page_p50 < TARGET_P50_MS else 'MISSED'}; raw ledger SQL {raw_p50:.0f} ms "
            f"({raw_p50 / page_p50:.0f}x the page)"
        )
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        cleanup_db()


if __name__ == "__main__":
    sys.exit(main())
