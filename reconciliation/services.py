"""reconcile(): receipts against LiteLLM's spend logs, and the books against themselves, for a window.

`python manage.py reconcile` and the scheduled `reconciliation.tasks.reconcile_books`
both call it. The spend logs of the window are streamed into a temp table
(spendlogs.py), every check is one set-wise SQL statement (checks.py, sql/),
--apply backfills missing receipts through commit_usage_facts() (backfill.py),
and only the first BILLING_RECONCILE_REPORT_LIMIT discrepancies of a kind are
read back into Python (all are counted; report.py).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, DataError, transaction
from django.utils import timezone

from accounts.models import BillingAccount
from integrations.litellm.client import LiteLLMClient, LiteLLMError
from reconciliation import metrics
from reconciliation.backfill import backfill
from reconciliation.checks import check_books, compare_with_litellm, create_found_table, temp_tables_cursor
from reconciliation.models import ReconcileRun
from reconciliation.report import BOOK_KINDS, KINDS, ReconcileReport, collect
from reconciliation.spendlogs import load_spend_logs
from reconciliation.window import Window, scheduled_window

logger = logging.getLogger(__name__)


def reconcile(
    *,
    window: Window,
    account: BillingAccount | None = None,
    apply: bool = False,
    include_litellm: bool = True,
    progress: bool = False,
    report_limit: int | None = None,
    client: LiteLLMClient | None = None,
) -> ReconcileReport:
    """Run every check of the window; with apply=True backfill missing receipts. Never raises for LiteLLM.

    A LiteLLM that cannot be read is reported in `errors` (exit code 2) and
    nothing is backfilled; the in-book checks still run. Database errors propagate.
    The run is one transaction (its temp tables must not outlive it: PgBouncer).
    """
    started = time.monotonic()
    report = ReconcileReport(window=window, account=account, apply=apply, litellm_checked=include_litellm)
    limit = settings.BILLING_RECONCILE_REPORT_LIMIT if report_limit is None else report_limit
    timer = _Timer(report.timings)
    with temp_tables_cursor() as cursor:
        create_found_table(cursor)
        if include_litellm:
            own_client = client is None
            client = client or LiteLLMClient()
            try:
                try:
                    # One transaction: a page PostgreSQL refuses leaves nothing half-loaded.
                    with timer("read_litellm"), transaction.atomic():
                        report.spend_log_rows = load_spend_logs(cursor, client, window, progress=progress)
                except DataError as exc:
                    raise LiteLLMError(f"a spend-log row holds a value PostgreSQL refuses: {exc}") from exc
                with timer("compare_litellm"):
                    compare_with_litellm(cursor, window, account)
            except LiteLLMError as exc:
                logger.error("reconcile: LiteLLM's spend logs could not be read: %s", exc)
                report.errors.append({"source": "litellm", "reason": str(exc)})
            finally:
                if own_client:
                    client.close()
        with timer("books"):
            check_books(cursor, window, account)
        # Backfill heals what LiteLLM's spend logs show missing: nothing to heal without them.
        if apply and include_litellm and not report.errors:
            with timer("backfill"):
                report.backfill = backfill(cursor)
        with timer("collect"):
            collect(cursor, report, limit)
    report.duration_seconds = time.monotonic() - started
    _publish(report)
    _record(report)
    return report


def _record(report: ReconcileReport) -> None:
    """Keep what the run found, for the staff dashboard (its own transaction: a report is never lost with
    the caller's rollback, and a failure to keep it never fails the run)."""
    try:
        with transaction.atomic():
            ReconcileRun.objects.create(
                finished_at=timezone.now(),
                outcome=report.outcome,
                window_start=report.window.since,
                window_end=report.window.until,
                litellm_checked=report.litellm_checked,
                applied=report.apply,
                duration_seconds=report.duration_seconds,
                summary=report.summary(),
            )
    except DatabaseError:
        logger.exception("reconcile: could not keep the run's report for the dashboard")


def reconcile_scheduled(*, now: datetime | None = None) -> ReconcileReport:
    """The beat schedule's run (reconciliation.tasks.reconcile_books and `manage.py billing_worker`)."""
    include_litellm = bool(settings.LITELLM_MASTER_KEY)
    if not include_litellm:
        logger.info("scheduled reconcile: LITELLM_MASTER_KEY is not set; in-book checks only")
    return reconcile(
        window=scheduled_window(now), apply=settings.BILLING_RECONCILE_APPLY, include_litellm=include_litellm
    )


class _Timer:
    def __init__(self, into: dict[str, float]) -> None:
        self.into = into

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.into[name] = self.into.get(name, 0.0) + time.monotonic() - started


def _publish(report: ReconcileReport) -> None:
    for kind in KINDS:
        if kind in BOOK_KINDS or report.litellm_checked:
            metrics.reconcile_discrepancies.labels(kind=kind).set(report.remaining.get(kind, 0))
    metrics.reconcile_runs_total.labels(outcome=report.outcome).inc()
    metrics.reconcile_duration_seconds.set(report.duration_seconds)
    metrics.reconcile_rows_total.inc(report.spend_log_rows)
    now = time.time()
    metrics.reconcile_last_run_timestamp.set(now)
    if not report.errors:
        metrics.reconcile_last_success_timestamp.set(now)
