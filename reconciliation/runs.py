"""Per-run reconcile: one registered run's calls in LiteLLM's spend logs against its receipts.

`python manage.py reconcile --run RUN_ID` and `POST /api/internal/billing/runs/<run_id>/reconcile`.

How a run's calls are found. An executor calls LiteLLM with `user = "{run_id}/{attempt}"`,
and the pinned LiteLLM (1.108.7) filters `/spend/logs/v2` by the `end_user` column exactly
(`ui_view_spend_logs`); it has no filter on the caller's spend-log metadata (only
key_alias and error fields are metadata filters), so the run's calls are read end user by
end user:

- the attempts already known here (receipts billed to the run, and open or closed
  deferrals, whose end user is "{run_id}/{digits}"), verbatim;
- "{run_id}/0", "{run_id}/1", ... up to the highest known attempt, then on until
  EMPTY_ATTEMPTS_TO_STOP consecutive attempts have no spend-log row (attempts are
  numbered in order by the executor), at most MAX_ATTEMPTS;
- the end users of receipts that named the run in their spend-log metadata: their
  rows are read too, and only those whose metadata names the run are kept.

A call that names the run only in its metadata and whose end user has no receipt at all is
not found here; the window-wide `reconcile --apply` finds it.

The rows are COPYed into the same temp table as the window-wide reconcile and compared
by the same SQL (missing_receipt.sql, cost_mismatch.sql), and missing receipts are
billed by reconciliation.backfill.backfill(), i.e. through commit_usage_facts(): the
payer is resolved exactly as for a callback (a non-gateway key naming the run pays itself).
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DataError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import BillingAccount
from billing_project.exactjson import loads_exact
from integrations.litellm.client import (
    PAGE_SIZE_MAX,
    LiteLLMClient,
    LiteLLMError,
    SpendLogRow,
)
from integrations.litellm.spendlogs import row_names_run
from payers.models import PayerSource, RunBinding
from payers.selectors import run_id_from_end_user
from receipts.models import ChargeReceipt, DeferredUsage
from reconciliation import metrics
from reconciliation.backfill import backfill
from reconciliation.checks import OPEN_DEFERRAL_PARAM, create_found_table, sql, temp_tables_cursor
from reconciliation.spendlogs import EDGE, copy_rows, create_rows_table, index_rows_table
from reconciliation.window import ReconcileInputError, Window

logger = logging.getLogger(__name__)

# An executor may start calling before the gateway's registration commits: read a day before it.
LOOKBACK = timedelta(days=1)
EMPTY_ATTEMPTS_TO_STOP = 2
MAX_ATTEMPTS = 1000
_PAGE_REREADS = 3


class RunNotFound(LookupError):
    """No registered run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no registered run {run_id!r}")
        self.run_id = run_id


@dataclass
class RunReconcileResult:
    run_id: str
    account: BillingAccount
    window: Window
    end_users: list[str] = field(default_factory=list)
    spend_log_rows: int = 0
    # The run's receipts billed to the run's account (payer_source "run"), after the backfill.
    receipts: int = 0
    charged_credits: int = 0
    # Receipts of calls that named the run but were billed to someone else (a non-gateway key).
    receipts_billed_elsewhere: int = 0
    backfilled: int = 0
    backfill: dict[str, int] = field(default_factory=dict)
    # What is still wrong after the backfill (missing_receipt, cost_mismatch, unknown_to_litellm).
    discrepancies: list[dict[str, Any]] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def outcome(self) -> str:
        return "discrepancies" if self.discrepancies else "clean"

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "account": str(self.account.public_id),
            "window": self.window.as_dict(),
            "end_users": self.end_users,
            "spend_log_rows": self.spend_log_rows,
            "receipts": self.receipts,
            "backfilled": self.backfilled,
            "charged_credits": self.charged_credits,
            "receipts_billed_elsewhere": self.receipts_billed_elsewhere,
            "backfill": self.backfill,
            "discrepancies": self.discrepancies,
            "outcome": self.outcome,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def reconcile_run(
    *,
    run_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    client: LiteLLMClient | None = None,
) -> RunReconcileResult:
    """Read the run's spend logs, backfill its missing receipts, report what is left.

    Raises RunNotFound for an unregistered run, ReconcileInputError for a bad window and
    LiteLLMError (LiteLLMUnavailable when transient) when LiteLLM cannot be read; then
    nothing is backfilled. Every call is timed in billing_run_reconcile_latency_seconds.
    """
    started = time.monotonic()
    outcome = "error"
    try:
        result = _reconcile_run(run_id=run_id, since=since, until=until, client=client)
        outcome = result.outcome
        result.duration_seconds = time.monotonic() - started
        return result
    except RunNotFound:
        outcome = "not_found"
        raise
    except LiteLLMError:
        outcome = "source_error"
        raise
    finally:
        metrics.run_reconcile_latency_seconds.observe(time.monotonic() - started)
        metrics.run_reconciles_total.labels(outcome=outcome).inc()


def _reconcile_run(
    *, run_id: str, since: datetime | None, until: datetime | None, client: LiteLLMClient | None
) -> RunReconcileResult:
    run = RunBinding.objects.select_related("account").filter(run_id=run_id).first()
    if run is None:
        raise RunNotFound(run_id)
    known, metadata_end_users = _known_end_users(run)
    window = _window(run, since=since, until=until)
    result = RunReconcileResult(run_id=run_id, account=run.account, window=window)
    own_client = client is None
    client = client or LiteLLMClient()
    try:
        rows, result.end_users = _read_run_rows(client, run_id, known, metadata_end_users, window)
    finally:
        if own_client:
            client.close()
    result.spend_log_rows = len(rows)
    attempt_end_users = [e for e in result.end_users if run_id_from_end_user(e) == run_id]
    with temp_tables_cursor() as cursor:
        create_found_table(cursor)
        try:
            with transaction.atomic():
                create_rows_table(cursor)
                copy_rows(cursor, rows)
                index_rows_table(cursor)
        except DataError as exc:
            raise LiteLLMError(f"a spend-log row holds a value PostgreSQL refuses: {exc}") from exc
        cursor.execute(sql("run_diff"))
        for name in ("missing_receipt", "cost_mismatch"):
            cursor.execute(sql(name), {"account": None, "open_statuses": OPEN_DEFERRAL_PARAM})
        cursor.execute(
            sql("run_unknown_to_litellm"),
            {"run_id": run_id, "end_users": attempt_end_users, "since": window.since, "until": window.until},
        )
        result.backfill = backfill(cursor)
        result.backfilled = result.backfill["backfilled"]
        result.discrepancies = _remaining(cursor)
    mine = Q(run_id=run_id) | Q(end_user__in=attempt_end_users)
    totals = ChargeReceipt.objects.filter(mine, account=run.account, payer_source=PayerSource.RUN)
    result.receipts = totals.count()
    result.charged_credits = sum(totals.values_list("charged_credits", flat=True))
    result.receipts_billed_elsewhere = ChargeReceipt.objects.filter(mine).count() - result.receipts
    return result


def _known_end_users(run: RunBinding) -> tuple[set[str], set[str]]:
    """(attempt end users seen here, end users of receipts that named the run in their metadata)."""
    prefix = f"{run.run_id}/"
    attempts: set[str] = set()
    for query in (
        # The run's account narrows the LIKE to an index range of one account's receipts.
        ChargeReceipt.objects.filter(account=run.account, end_user__startswith=prefix),
        DeferredUsage.objects.filter(end_user__startswith=prefix),
    ):
        attempts.update(e for e in query.values_list("end_user", flat=True).distinct() if _is_attempt(e, run.run_id))
    tagged = set(ChargeReceipt.objects.filter(run_id=run.run_id).values_list("end_user", flat=True).distinct())
    tagged |= set(DeferredUsage.objects.filter(run_id=run.run_id).values_list("end_user", flat=True).distinct())
    return attempts, {e for e in tagged if e and not _is_attempt(e, run.run_id)}


def _is_attempt(end_user: str, run_id: str) -> bool:
    return run_id_from_end_user(end_user) == run_id


def _window(run: RunBinding, *, since: datetime | None, until: datetime | None) -> Window:
    """[since, until): by default from a day before the registration (or the run's first receipt) to now."""
    if since is None:
        first = (
            ChargeReceipt.objects.filter(run_id=run.run_id)
            .order_by("started_at")
            .values_list("started_at", flat=True)
            .first()
        )
        since = min(run.created_at, first or run.created_at) - LOOKBACK
    until = until or timezone.now()
    if since.tzinfo is None or until.tzinfo is None:
        raise ReconcileInputError("since and until must be timezone-aware")
    return Window(since.replace(microsecond=0), until)


def _read_run_rows(
    client: LiteLLMClient, run_id: str, known: set[str], tagged: set[str], window: Window
) -> tuple[list[SpendLogRow], list[str]]:
    """The run's rows (distinct by request_id) and the end users read, in the order read."""
    start, end = window.since - EDGE, window.until + EDGE
    rows: dict[str, SpendLogRow] = {}
    read: list[str] = []

    def take(end_user: str, *, tagged_only: bool) -> int:
        read.append(end_user)
        found = _end_user_rows(client, end_user, start, end)
        for row in found:
            if not tagged_only or row_names_run(row, run_id):
                rows.setdefault(row.request_id, row)
        return len(found)

    highest = max((int(e.rpartition("/")[2]) for e in known), default=-1)
    empty_in_a_row, attempt = 0, 0
    while attempt < MAX_ATTEMPTS and (attempt <= highest or empty_in_a_row < EMPTY_ATTEMPTS_TO_STOP):
        end_user = f"{run_id}/{attempt}"
        count = take(end_user, tagged_only=False)
        empty_in_a_row = 0 if count else empty_in_a_row + 1
        attempt += 1
    # Known attempts written another way ("run/007") and end users of metadata-tagged calls.
    for end_user in sorted(known - set(read)):
        take(end_user, tagged_only=False)
    for end_user in sorted(tagged - set(read)):
        take(end_user, tagged_only=True)
    return list(rows.values()), read


def _end_user_rows(client: LiteLLMClient, end_user: str, start: datetime, end: datetime) -> list[SpendLogRow]:
    """Every row of one end user in [start, end], checked against LiteLLM's count.

    Pages are OFFSET pages ordered by startTime alone, so rows with equal times can move
    between pages of a long read: a read that served fewer distinct rows than counted is
    done again (a few times), then refused.
    """
    for _ in range(_PAGE_REREADS):
        seen: dict[str, SpendLogRow] = {}
        page_number, capped, total = 1, False, 0
        while True:
            page = client.end_user_spend_log_page(
                end_user=end_user, start=start, end=end, page=page_number, page_size=PAGE_SIZE_MAX
            )
            if page_number == 1:
                capped, total = page.total_is_capped, page.total
            for row in page.data:
                seen.setdefault(row.request_id, row)
            if len(page.data) < PAGE_SIZE_MAX or (not capped and page_number >= page.total_pages):
                break
            page_number += 1
        if capped or len(seen) >= total:
            return list(seen.values())
        logger.info("spend logs of %r: %d distinct rows of %d counted; reading again", end_user, len(seen), total)
    raise LiteLLMError(f"LiteLLM served fewer distinct spend-log rows of end user {end_user!r} than it counted")


def _remaining(cursor: Any) -> list[dict[str, Any]]:
    """The discrepancies the backfill did not heal, first BILLING_RECONCILE_REPORT_LIMIT of them."""
    cursor.execute(
        "SELECT kind, detail::text FROM reconcile_found WHERE NOT healed ORDER BY kind, at NULLS FIRST, ref LIMIT %s",
        [settings.BILLING_RECONCILE_REPORT_LIMIT],
    )
    return [{"kind": kind, **_money_as_text(loads_exact(detail))} for kind, detail in cursor.fetchall()]


def _money_as_text(value: Any) -> Any:
    """Decimals as their exact text (a JSON renderer would make floats of them)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _money_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_money_as_text(v) for v in value]
    return value
