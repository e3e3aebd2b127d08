"""The discrepancy checks: each one set-wise SQL statement (sql/<name>.sql) inserting into reconcile_found.

Against LiteLLM (its spend logs of the window in reconcile_rows, matched by
`litellm_call_id`, by `request_id` only for rows that have no call id):
missing_receipt, cost_mismatch, unknown_to_litellm. Inside the books:
balance_drift, held_drift, orphan_usage, credits_mismatch, summary_drift, invoice_identity.
Each .sql file says what its kind means; parameters are named (%(since)s ...).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from django.db import connection, transaction

from accounts.models import BillingAccount
from billing_project.dates import utc_midnight
from receipts.models import OPEN_DEFERRED_STATUSES
from reconciliation.window import Window, month_bounds

_SQL_DIR = Path(__file__).resolve().parent / "sql"

# Receipts are first matched among those started near the window (an index
# range: a receipt's startTime is the spend log's); rows still unmatched are
# then looked up by call id across all time, one index probe each.
NEAR = timedelta(minutes=10)

TEMP_TABLES = ("reconcile_found", "reconcile_diff", "reconcile_rows")


@contextmanager
def temp_tables_cursor() -> Iterator[Any]:
    """A cursor inside one transaction that holds a run's temp tables, dropped when it ends.

    Temp tables live in a session; behind PgBouncer in transaction pooling only a transaction keeps its
    session, so the whole run is one transaction (what fails rolls the tables back with it).
    """
    with transaction.atomic(), connection.cursor() as cursor:
        _drop(cursor)
        yield cursor
        _drop(cursor)


def _drop(cursor: Any) -> None:
    for table in TEMP_TABLES:
        cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")


@cache
def sql(name: str) -> str:
    """The statement in sql/<name>.sql."""
    return (_SQL_DIR / f"{name}.sql").read_text()


# The deferral statuses that still wait (receipts.models), as the SQL's %(open_statuses)s array.
OPEN_DEFERRAL_PARAM = [str(status) for status in OPEN_DEFERRED_STATUSES]


def create_found_table(cursor: Any) -> None:
    cursor.execute(sql("reconcile_found"))


def compare_with_litellm(cursor: Any, window: Window, account: BillingAccount | None) -> None:
    """missing_receipt, cost_mismatch, unknown_to_litellm: receipts against reconcile_rows."""
    params = {
        "since": window.since,
        "until": window.until,
        "near_from": window.since - NEAR,
        "near_to": window.until + NEAR,
        "account": account.pk if account else None,
        "open_statuses": OPEN_DEFERRAL_PARAM,
    }
    cursor.execute(sql("litellm_diff"), params)
    cursor.execute(sql("litellm_diff_lookup"))
    for name in ("missing_receipt", "cost_mismatch", "unknown_to_litellm"):
        cursor.execute(sql(name), params)


def check_books(cursor: Any, window: Window, account: BillingAccount | None) -> None:
    """balance_drift, held_drift, orphan_usage, credits_mismatch, summary_drift, invoice_identity."""
    first_day = window.since.astimezone(UTC).date()
    last_day = (window.until - timedelta(microseconds=1)).astimezone(UTC).date()
    params = {
        "since": window.since,
        "until": window.until,
        "account": account.pk if account else None,
        "first_day": first_day,
        "last_day": last_day,
        "days_from": utc_midnight(first_day),
        "days_to": utc_midnight(last_day + timedelta(days=1)),
    }
    for name in ("balance_drift", "held_drift", "orphan_usage", "receipt_usage", "summary_drift"):
        cursor.execute(sql(name), params)
    for month_start, month_end in month_bounds(first_day, last_day):
        month = {
            "ms": utc_midnight(month_start),
            "me": utc_midnight(month_end),
            "ms_day": month_start,
            "me_day": month_end,
            "period": month_start.strftime("%Y-%m"),
        }
        cursor.execute(sql("invoice_identity"), {**params, **month})
