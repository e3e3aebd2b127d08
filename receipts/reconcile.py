"""Reconcile receipts with LiteLLM's spend logs, and the books with themselves.

`python manage.py reconcile` and the scheduled `receipts.tasks.reconcile_books`
both call run_reconcile(). Kinds of discrepancy:

Against LiteLLM (its spend logs of the window, matched by `litellm_call_id`,
by `request_id` only for rows that have no call id):
- missing_receipt: LiteLLM billed a call (a success, or a failure with a
  cost) that has no receipt. `--apply` backfills it through
  commit_usage_facts(), idempotent with a late callback.
- cost_mismatch: the receipt's cost differs from LiteLLM's spend (or the
  call has more than one receipt).
- unknown_to_litellm: a receipt of the window that LiteLLM has no log for.

Inside the books:
- balance_drift: an account's balance differs from the sum of its ledger.
- orphan_usage: a usage entry without its receipt, or a receipt of the
  window without exactly one usage entry.
- credits_mismatch: charged credits differ from ceil(cost × rate × markup),
  or the usage entry does not debit exactly the receipt's credits.
- summary_drift: LedgerDailySummary differs from the ledger on a day of the window.
- invoice_identity: for an account and a month of the window, opening +
  added − used (read like the invoice, from the summary) differs from the
  closing balance the ledger gives, or the opening balances differ.

Memory stays flat however large the window: pages of spend logs are streamed
into a temporary table with COPY and every comparison is one set-wise SQL
statement; only the first BILLING_RECONCILE_REPORT_LIMIT discrepancies of a
kind are read back into Python (all are counted).
"""

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError, connection, transaction
from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry, EndUserAlias
from accounts.money import billing_markup, credits_per_usd
from receipts import metrics
from receipts.exactjson import loads_exact
from receipts.litellm_client import (
    PAGE_SIZE_MAX,
    LiteLLMClient,
    LiteLLMError,
    SpendLogPage,
    SpendLogRow,
    row_metadata,
)
from receipts.models import ChargeReceipt, DeferredUsage
from receipts.usage import UsageFact, parse_usage_record

logger = logging.getLogger(__name__)

LITELLM_KINDS = ("missing_receipt", "cost_mismatch", "unknown_to_litellm")
BOOK_KINDS = ("balance_drift", "orphan_usage", "credits_mismatch", "summary_drift", "invoice_identity")
KINDS = LITELLM_KINDS + BOOK_KINDS

# Spend logs are read a little beyond the window so that a receipt at its edge
# still finds its row (LiteLLM keeps startTime to the millisecond).
EDGE = timedelta(seconds=60)
# Receipts are first matched among those started near the window (an index
# range: a receipt's startTime is the spend log's); rows still unmatched are
# then looked up by call id across all time, one index probe each.
NEAR = timedelta(minutes=10)
_SLICE_MAX = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_BACKFILL_CHUNK = 500
_TIE_REREADS = 5
_CACHE_HIT_SUFFIX = re.compile(r"_cache_hit[0-9.]+$")

_R = ChargeReceipt._meta.db_table
_L = CreditLedgerEntry._meta.db_table
_A = BillingAccount._meta.db_table
_AL = EndUserAlias._meta.db_table
_D = DeferredUsage._meta.db_table


class ReconcileInputError(ValueError):
    """A bad --since/--until/--account."""


# --- the window ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """[since, until) in UTC."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ReconcileInputError("window bounds must be timezone-aware")
        if self.since >= self.until:
            raise ReconcileInputError(f"--since ({self.since.isoformat()}) must be before --until")

    def as_dict(self) -> dict[str, str]:
        return {"since": _iso(self.since), "until": _iso(self.until)}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_moment(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 datetime (UTC when it names no zone)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReconcileInputError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def default_window(now: datetime | None = None) -> Window:
    """The previous UTC day."""
    today = (now or timezone.now()).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(today - timedelta(days=1), today)


def window_from_options(*, since: str | None, until: str | None, now: datetime | None = None) -> Window:
    """--since/--until: both default to the previous UTC day; one alone spans a day from it (or to now)."""
    now = (now or timezone.now()).astimezone(UTC).replace(microsecond=0)
    if since is None and until is None:
        return default_window(now)
    if since is None:
        end = parse_moment(until or "")
        return Window(end - timedelta(days=1), end)
    start = parse_moment(since)
    end = parse_moment(until) if until is not None else min(start + timedelta(days=1), now)
    return Window(start, end)


def scheduled_window(now: datetime | None = None) -> Window:
    """The schedule's window: BILLING_RECONCILE_WINDOW_SECONDS ending BILLING_RECONCILE_LAG_SECONDS ago."""
    now = (now or timezone.now()).astimezone(UTC)
    until = (now - timedelta(seconds=settings.BILLING_RECONCILE_LAG_SECONDS)).replace(second=0, microsecond=0)
    return Window(until - timedelta(seconds=settings.BILLING_RECONCILE_WINDOW_SECONDS), until)


def resolve_account(value: str) -> BillingAccount:
    """--account: the account's public UUID or its database id."""
    value = value.strip()
    query = BillingAccount.objects.all()
    try:
        account = query.filter(pk=int(value)).first() if value.isdigit() else query.filter(public_id=value).first()
    except (ValueError, DatabaseError) as exc:
        raise ReconcileInputError(f"--account {value!r} is neither an account id nor a public UUID") from exc
    if account is None:
        raise ReconcileInputError(f"no billing account {value!r}")
    return account


# --- the report ---------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    window: Window
    account: BillingAccount | None
    apply: bool
    litellm_checked: bool
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    remaining: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    items: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[dict[str, str]] = field(default_factory=list)
    spend_log_rows: int = 0
    backfill: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    # Seconds per phase (read_litellm, compare_litellm, books, backfill, collect).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 clean, 1 discrepancies left (after --apply), 2 a source could not be read."""
        if self.errors:
            return 2
        return 1 if any(self.remaining.values()) else 0

    @property
    def outcome(self) -> str:
        return {0: "clean", 1: "discrepancies", 2: "source_error"}[self.exit_code]

    def summary(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "window": self.window.as_dict(),
            "found": {k: v for k, v in self.found.items() if v},
            "remaining": {k: v for k, v in self.remaining.items() if v},
            "errors": self.errors,
            "backfill": self.backfill,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.as_dict(),
            "account": str(self.account.public_id) if self.account else None,
            "apply": self.apply,
            "litellm_checked": self.litellm_checked,
            "spend_log_rows": self.spend_log_rows,
            "found": self.found,
            "remaining": self.remaining,
            "backfill": self.backfill,
            "errors": self.errors,
            "discrepancies": self.items,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "duration_seconds": round(self.duration_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# --- reading LiteLLM's spend logs into a temporary table ---------------------------------------

_SPEND_COLUMNS = (
    ("request_id", "text"),
    ("litellm_call_id", "text"),
    ("spend", "numeric"),
    ("status", "text"),
    ("end_user", "text"),
    ("start_time", "timestamptz"),
    ("end_time", "timestamptz"),
    ("model_group", "text"),
    ("model", "text"),
    ("provider", "text"),
    ("call_type", "text"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("total_tokens", "bigint"),
    ("cache_hit", "boolean"),
    ("api_key", "text"),
    ("team_id", "text"),
    ("key_alias", "text"),
    ("spend_logs_metadata", "text"),
    ("model_map_information", "text"),
)


def _raw_json(raw: Any) -> str | None:
    text = bytes(raw).decode()
    return None if text in ("", "null") else text


def _copy_values(row: SpendLogRow) -> tuple[Any, ...]:
    meta = row_metadata(row)
    cache_hit = row.cache_hit
    if isinstance(cache_hit, str):
        cache_hit = {"true": True, "false": False}.get(cache_hit.lower())
    spend = row.spend
    return (
        row.request_id,
        row.litellm_call_id or None,
        spend,
        row.status,
        row.end_user,
        row.startTime,
        row.endTime,
        row.model_group,
        row.model,
        row.custom_llm_provider,
        row.call_type,
        row.prompt_tokens,
        row.completion_tokens,
        row.total_tokens,
        cache_hit,
        row.api_key or (meta.user_api_key if isinstance(meta.user_api_key, str) else None),
        row.team_id or (meta.user_api_key_team_id if isinstance(meta.user_api_key_team_id, str) else None),
        meta.user_api_key_alias if isinstance(meta.user_api_key_alias, str) else None,
        _raw_json(meta.spend_logs_metadata),
        # Only a zero-cost row needs LiteLLM's prices (the zero-cost-suspect check of a backfill).
        _raw_json(meta.model_map_information) if spend is not None and spend == 0 else None,
    )


@dataclass(frozen=True)
class _PageRequest:
    start: datetime
    end: datetime
    page: int
    page_size: int


@dataclass
class _Slice:
    start: datetime
    stop: datetime
    first: SpendLogPage | None = None
    seen: set[str] = field(default_factory=set)
    rereads: int = 0

    @property
    def span(self) -> timedelta:
        return self.stop - self.start


class SpendLogReader:
    """Pages through LiteLLM's spend logs of [start, end] in time slices.

    LiteLLM counts at most 10,000 rows and orders pages by startTime alone
    (OFFSET pages), so rows with equal times can move between pages. Slices
    are therefore sized to fit about one page (the next slice's length is
    aimed from the last one's count): a slice is then read in one request, and
    every slice's distinct rows are checked against LiteLLM's count. A slice
    whose count is capped is halved; one that came back short is read again,
    in halves, or (one second cannot be split) as one page of 1000 rows.
    Slices overlap at their whole-second bounds; the duplicates that gives
    are removed in the database.

    The next page is fetched (in a helper thread) while the rows of the
    current one are consumed, so LiteLLM and the database work at the same time.
    """

    def __init__(
        self,
        client: LiteLLMClient,
        *,
        page_size: int,
        first_slice: timedelta,
        on_progress: Callable[[int, timedelta], None] | None = None,
    ) -> None:
        self.client = client
        self.page_size = max(1, min(page_size, PAGE_SIZE_MAX))
        self.target_rows = max(1, self.page_size * 4 // 5)
        self.slice = _whole_seconds(first_slice)
        self.on_progress = on_progress
        self.requests = 0

    def _fetch(self, request: _PageRequest) -> SpendLogPage:
        self.requests += 1
        return self.client.spend_log_page(
            start=request.start, end=request.end, page=request.page, page_size=request.page_size
        )

    def rows(self, start: datetime, end: datetime) -> Iterator[SpendLogRow]:
        current = _Slice(start, min(start + self.slice, end))
        request: _PageRequest | None = _PageRequest(current.start, current.stop, 1, self.page_size)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spend-log-pages") as pool:
            pending = pool.submit(self._fetch, request)
            while request is not None:
                page = pending.result()
                rows, request = self._advance(current, request, page, end)
                if request is not None:
                    pending = pool.submit(self._fetch, request)
                yield from rows

    def _advance(
        self, current: _Slice, request: _PageRequest, page: SpendLogPage, end: datetime
    ) -> tuple[list[SpendLogRow], _PageRequest | None]:
        """The rows a page contributes and the request after it (None: the window is read)."""
        splittable = current.span > _SECOND
        if request.page == 1:
            current.first = page
            if page.total_is_capped and splittable:  # more than LiteLLM counts: narrower
                return [], self._restart(current, self._halve(current))
        first = current.first
        assert first is not None
        current.seen.update(row.request_id for row in page.data)
        if len(page.data) >= request.page_size and (first.total_is_capped or request.page < first.total_pages):
            return page.data, _PageRequest(current.start, current.stop, request.page + 1, request.page_size)
        if first.total_is_capped or len(current.seen) >= first.total:
            # The slice is complete (a capped single second is taken as served).
            total, span = len(current.seen), current.span
            if self.on_progress:
                self.on_progress(total, span)
            self.slice = _whole_seconds(min(_SLICE_MAX, span * 4, span * (self.target_rows / max(total, 1))))
            if current.stop >= end:
                return page.data, None
            following = _Slice(current.stop, min(current.stop + self.slice, end))
            return page.data, self._restart(current, following)
        logger.info(
            "spend logs %s..%s: %d distinct rows of %d counted; reading it again",
            current.start,
            current.stop,
            len(current.seen),
            first.total,
        )
        if splittable:
            return page.data, self._restart(current, self._halve(current))
        current.rereads += 1
        if current.rereads > _TIE_REREADS:
            raise LiteLLMError(
                f"LiteLLM served {len(current.seen)} distinct spend-log rows for "
                f"{current.start}..{current.stop} but counted {first.total}"
            )
        # One second whose rows of equal times moved between pages: one page holds them all if it can.
        size = PAGE_SIZE_MAX if first.total <= PAGE_SIZE_MAX else self.page_size
        return page.data, _PageRequest(current.start, current.stop, 1, size)

    def _halve(self, current: _Slice) -> _Slice:
        self.slice = _whole_seconds(current.span / 2)
        return _Slice(current.start, current.start + self.slice)

    def _restart(self, current: _Slice, following: _Slice) -> _PageRequest:
        """Make `current` the slice `following` (in place) and ask for its first page."""
        current.start, current.stop = following.start, following.stop
        current.first, current.seen, current.rereads = None, set(), 0
        return _PageRequest(current.start, current.stop, 1, self.page_size)


def _whole_seconds(span: timedelta) -> timedelta:
    """LiteLLM's window bounds are whole seconds: so are slices (at least one)."""
    return max(_SECOND, timedelta(seconds=int(span.total_seconds())))


def _floor_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _ceil_second(value: datetime) -> datetime:
    return value if value.microsecond == 0 else value.replace(microsecond=0) + _SECOND


def _load_spend_logs(cursor: Any, client: LiteLLMClient, window: Window, *, progress: bool) -> int:
    """COPY the spend logs of the window (plus EDGE on both sides) into reconcile_rows; returns rows read."""
    from tqdm import tqdm

    start, end = _floor_second(window.since - EDGE), _ceil_second(window.until + EDGE)
    columns = ", ".join(f"{name} {kind}" for name, kind in _SPEND_COLUMNS)
    # Slices overlap at their bounds and a re-read slice repeats rows: a request_id can come
    # twice. The comparisons below tolerate that (only their few results are made distinct).
    cursor.execute(
        f"""
        CREATE TEMP TABLE reconcile_rows ({columns},
            base_request_id text GENERATED ALWAYS AS (
                CASE WHEN litellm_call_id IS NULL THEN regexp_replace(request_id, '_cache_hit[0-9.]+$', '') END
            ) STORED)
        """
    )
    bar = tqdm(
        total=int((end - start).total_seconds()),
        unit="s",
        unit_scale=True,
        desc="LiteLLM spend logs",
        disable=not progress,
        leave=False,
    )
    read = 0

    def advance(rows: int, span: timedelta) -> None:
        bar.update(int(span.total_seconds()))
        bar.set_postfix(rows=read)

    reader = SpendLogReader(
        client,
        page_size=settings.BILLING_RECONCILE_PAGE_SIZE,
        first_slice=timedelta(seconds=settings.BILLING_RECONCILE_SLICE_SECONDS),
        on_progress=advance,
    )
    names = ", ".join(name for name, _ in _SPEND_COLUMNS)
    failure: LiteLLMError | None = None
    try:
        with cursor.copy(f"COPY reconcile_rows ({names}) FROM STDIN") as copy:
            try:
                for row in reader.rows(start, end):
                    copy.write_row(_copy_values(row))
                    read += 1
            except LiteLLMError as exc:
                failure = exc  # end the COPY cleanly; the caller's transaction drops what was read
    finally:
        bar.close()
    if failure is not None:
        raise failure
    logger.info("read %d spend-log rows in %d requests", read, reader.requests)
    # Rows without a call id (older LiteLLM) are matched by request id: usually none, so a small index.
    cursor.execute("CREATE INDEX ON reconcile_rows (base_request_id) WHERE base_request_id IS NOT NULL")
    cursor.execute("ANALYZE reconcile_rows")
    return read


# --- comparisons (each one statement into reconcile_found) -------------------------------------

_FOUND_TABLE = """
CREATE TEMP TABLE reconcile_found (
    kind text NOT NULL,
    ref text NOT NULL,
    at timestamptz,
    healable boolean NOT NULL DEFAULT false,
    healed boolean NOT NULL DEFAULT false,
    detail jsonb NOT NULL
)
"""

_TEMP_TABLES = ("reconcile_found", "reconcile_diff", "reconcile_rows")


def _account_public_ids() -> str:
    return f"(SELECT a.public_id::text FROM {_A} a WHERE a.id = {{column}})"


def _compare_with_litellm(cursor: Any, window: Window, account: BillingAccount | None) -> None:
    p = {
        "since": window.since,
        "until": window.until,
        "near_from": window.since - NEAR,
        "near_to": window.until + NEAR,
        "account": account.pk if account else None,
    }
    started = "COALESCE(r.started_at, r.created_at)"
    # One hash join of every spend-log row with the receipts started near the window, by call id,
    # keeping only the differences (normally a handful of rows): a receipt of the window without
    # a row, a row of the window without a receipt, or a call whose costs differ.
    cursor.execute(
        f"""
        CREATE TEMP TABLE reconcile_diff AS
        WITH rec AS (
            SELECT r.litellm_call_id, count(*) AS receipts, sum(r.cost_usd) AS cost_usd,
                   min(r.account_id) AS account_id, min(r.id) AS receipt_id,
                   bool_or({started} >= %(since)s AND {started} < %(until)s) AS in_window
              FROM {_R} r
             WHERE {started} >= %(near_from)s AND {started} < %(near_to)s
             GROUP BY r.litellm_call_id
        )
        SELECT DISTINCT ON (s.request_id, rec.litellm_call_id)
               s.request_id, s.litellm_call_id, s.base_request_id, s.spend, s.status, s.end_user,
               s.model_group, s.start_time, rec.litellm_call_id AS receipt_call_id, rec.receipts,
               rec.cost_usd, rec.account_id, rec.receipt_id
          FROM reconcile_rows s
          FULL JOIN rec ON rec.litellm_call_id = s.litellm_call_id
         WHERE (s.request_id IS NULL AND rec.in_window)
            OR (s.start_time >= %(since)s AND s.start_time < %(until)s
                AND CASE WHEN rec.litellm_call_id IS NULL
                         THEN COALESCE(s.status, 'success') <> 'failure' OR s.spend > 0
                         ELSE rec.cost_usd IS DISTINCT FROM s.spend OR rec.receipts > 1 END)
         ORDER BY s.request_id, rec.litellm_call_id
        """,
        p,
    )
    # Rows of the window without a receipt near it: look their receipts up across all time (one
    # index probe each), by request id for rows without a call id.
    cursor.execute(
        f"""
        UPDATE reconcile_diff d
           SET (receipts, cost_usd, account_id, receipt_id) = (
                SELECT count(*), sum(r.cost_usd), min(r.account_id), min(r.id) FROM {_R} r
                 WHERE (d.litellm_call_id IS NOT NULL AND r.litellm_call_id = d.litellm_call_id)
                    OR (d.base_request_id IS NOT NULL AND r.request_id = d.base_request_id))
         WHERE d.request_id IS NOT NULL AND d.receipt_call_id IS NULL
        """
    )
    alias_filter = f"AND d.end_user IN (SELECT end_user FROM {_AL} WHERE account_id = %(account)s)" if account else ""
    cursor.execute(
        f"""
        INSERT INTO reconcile_found (kind, ref, at, healable, detail)
        SELECT 'missing_receipt', d.request_id, d.start_time,
               d.litellm_call_id IS NOT NULL AND d.spend IS NOT NULL
                 AND NOT (d.spend = 0 AND dd.reason = 'unknown_cost' AND dd.status IN ('pending', 'failed')),
               jsonb_build_object(
                   'litellm_call_id', d.litellm_call_id, 'request_id', d.request_id,
                   'end_user', d.end_user, 'status', COALESCE(d.status, 'success'),
                   'litellm_spend', d.spend, 'model_group', d.model_group, 'start_time', d.start_time,
                   'account', (SELECT a.public_id::text FROM {_AL} al JOIN {_A} a ON a.id = al.account_id
                                WHERE al.end_user = d.end_user),
                   'deferred', CASE WHEN dd.id IS NULL THEN NULL ELSE jsonb_build_object(
                       'id', dd.id, 'reason', dd.reason, 'status', dd.status, 'attempts', dd.attempts) END)
          FROM reconcile_diff d
          LEFT JOIN LATERAL (
                SELECT id, reason, status, attempts FROM {_D} x
                 WHERE d.litellm_call_id IS NOT NULL AND x.litellm_call_id = d.litellm_call_id
                 ORDER BY x.status IN ('pending', 'failed') DESC, x.id DESC
                 LIMIT 1
               ) dd ON true
         WHERE d.request_id IS NOT NULL AND COALESCE(d.receipts, 0) = 0
           AND (COALESCE(d.status, 'success') <> 'failure' OR d.spend > 0)
           {alias_filter}
        """,
        p,
    )
    cursor.execute(
        f"""
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'cost_mismatch', d.request_id, d.start_time,
               jsonb_build_object(
                   'litellm_call_id', d.litellm_call_id, 'request_id', d.request_id, 'end_user', d.end_user,
                   'status', COALESCE(d.status, 'success'), 'litellm_spend', d.spend,
                   'receipt_cost_usd', d.cost_usd, 'receipts', d.receipts, 'receipt_id', d.receipt_id,
                   'account', {_account_public_ids().format(column="d.account_id")}, 'start_time', d.start_time)
          FROM reconcile_diff d
         WHERE d.request_id IS NOT NULL AND d.receipts > 0
           AND (d.cost_usd IS DISTINCT FROM d.spend OR d.receipts > 1)
           {"AND d.account_id = %(account)s" if account else ""}
        """,
        p,
    )
    cursor.execute(
        f"""
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'unknown_to_litellm', r.litellm_call_id, {started},
               jsonb_build_object(
                   'litellm_call_id', r.litellm_call_id, 'request_id', r.request_id, 'receipt_id', r.id,
                   'account', {_account_public_ids().format(column="r.account_id")}, 'end_user', r.end_user,
                   'cost_usd', r.cost_usd, 'charged_credits', r.charged_credits, 'started_at', r.started_at,
                   'created_at', r.created_at)
          FROM reconcile_diff d
          JOIN {_R} r ON r.litellm_call_id = d.receipt_call_id
         WHERE d.request_id IS NULL
           AND {started} >= %(since)s AND {started} < %(until)s
           {"AND r.account_id = %(account)s" if account else ""}
           AND NOT EXISTS (SELECT 1 FROM reconcile_rows s WHERE s.base_request_id = r.request_id)
        """,
        p,
    )


def _check_books(cursor: Any, window: Window, account: BillingAccount | None) -> None:
    from invoices.models import LedgerDailySummary

    summary = LedgerDailySummary._meta.db_table
    first_day = window.since.astimezone(UTC).date()
    last_day = (window.until - timedelta(microseconds=1)).astimezone(UTC).date()
    p = {
        "since": window.since,
        "until": window.until,
        "account": account.pk if account else None,
        "rate": credits_per_usd(),
        "markup": billing_markup(),
        "first_day": first_day,
        "last_day": last_day,
        "days_from": datetime.combine(first_day, datetime.min.time(), tzinfo=UTC),
        "days_to": datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC),
    }

    def only(column: str) -> str:
        return f"AND {column} = %(account)s" if account else ""

    account_of = _account_public_ids()
    cursor.execute(
        f"""
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'balance_drift', a.public_id::text, NULL,
               jsonb_build_object('account', a.public_id::text, 'name', a.name,
                                  'balance_credits', a.balance_credits, 'ledger_sum', COALESCE(l.total, 0),
                                  'difference', a.balance_credits - COALESCE(l.total, 0))
          FROM {_A} a
          LEFT JOIN (SELECT account_id, sum(amount_credits) AS total FROM {_L}
                      WHERE true {only("account_id")} GROUP BY account_id) l ON l.account_id = a.id
         WHERE a.balance_credits <> COALESCE(l.total, 0) {only("a.id")}
        """,
        p,
    )
    cursor.execute(
        f"""
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'orphan_usage', 'ledger:' || e.id, e.created_at,
               jsonb_build_object('problem', CASE WHEN e.reason = 'usage' THEN 'usage entry without a receipt'
                                                  ELSE 'non-usage entry with a receipt' END,
                                  'ledger_entry', e.id, 'reason', e.reason, 'receipt_id', e.receipt_id,
                                  'account', {account_of.format(column="e.account_id")},
                                  'amount_credits', e.amount_credits)
          FROM {_L} e
         WHERE e.created_at >= %(since)s AND e.created_at < %(until)s {only("e.account_id")}
           AND ((e.reason = 'usage') = (e.receipt_id IS NULL))
        """,
        p,
    )
    # The receipt side in one join (a receipt has at most one ledger entry: receipt_id is unique).
    cursor.execute(
        f"""
        WITH bad AS MATERIALIZED (
            SELECT r.id, r.litellm_call_id, r.account_id, r.cost_usd, r.charged_credits, r.created_at,
                   e.id AS entry_id, e.reason AS entry_reason, e.amount_credits,
                   ceil(r.cost_usd * %(rate)s * %(markup)s) AS expected
              FROM {_R} r
              LEFT JOIN {_L} e ON e.receipt_id = r.id
             WHERE r.created_at >= %(since)s AND r.created_at < %(until)s {only("r.account_id")}
               AND (e.id IS NULL OR e.reason <> 'usage' OR e.amount_credits <> -r.charged_credits
                    OR r.charged_credits <> ceil(r.cost_usd * %(rate)s * %(markup)s))
        )
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'orphan_usage', 'receipt:' || b.id, b.created_at,
               jsonb_build_object('problem', 'receipt without exactly one usage entry', 'receipt_id', b.id,
                                  'litellm_call_id', b.litellm_call_id,
                                  'account', {account_of.format(column="b.account_id")},
                                  'usage_entries', CASE WHEN b.entry_reason = 'usage' THEN 1 ELSE 0 END,
                                  'charged_credits', b.charged_credits)
          FROM bad b
         WHERE b.entry_id IS NULL OR b.entry_reason <> 'usage'
        UNION ALL
        SELECT 'credits_mismatch', 'receipt:' || b.id, b.created_at,
               jsonb_build_object('receipt_id', b.id, 'litellm_call_id', b.litellm_call_id,
                                  'account', {account_of.format(column="b.account_id")},
                                  'cost_usd', b.cost_usd, 'charged_credits', b.charged_credits,
                                  'expected_credits', b.expected, 'ledger_amount_credits', b.amount_credits)
          FROM bad b
         WHERE b.charged_credits <> b.expected OR (b.entry_reason = 'usage' AND b.amount_credits <> -b.charged_credits)
        """,
        p,
    )
    cursor.execute(
        f"""
        WITH ledger AS (
            SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date AS day, e.reason,
                   COALESCE(r.model_group, '') AS model_group, count(*) AS entries,
                   sum(e.amount_credits) AS amount_credits, sum(COALESCE(r.prompt_tokens, 0)) AS prompt_tokens,
                   sum(COALESCE(r.completion_tokens, 0)) AS completion_tokens,
                   sum(COALESCE(r.total_tokens, 0)) AS total_tokens, sum(COALESCE(r.cost_usd, 0)) AS cost_usd
              FROM {_L} e
              LEFT JOIN {_R} r ON r.id = e.receipt_id
             WHERE e.created_at >= %(days_from)s AND e.created_at < %(days_to)s {only("e.account_id")}
             GROUP BY 1, 2, 3, 4
        ), kept AS (
            SELECT account_id, day, reason, model_group, entries, amount_credits, prompt_tokens,
                   completion_tokens, total_tokens, cost_usd
              FROM {summary}
             WHERE day >= %(first_day)s AND day <= %(last_day)s {only("account_id")}
        )
        INSERT INTO reconcile_found (kind, ref, at, detail)
        SELECT 'summary_drift',
               concat_ws('/', COALESCE(l.account_id, k.account_id), COALESCE(l.day, k.day),
                         COALESCE(l.reason, k.reason), COALESCE(l.model_group, k.model_group)),
               COALESCE(l.day, k.day)::timestamp AT TIME ZONE 'UTC',
               jsonb_build_object(
                   'account', {account_of.format(column="COALESCE(l.account_id, k.account_id)")},
                   'day', COALESCE(l.day, k.day), 'reason', COALESCE(l.reason, k.reason),
                   'model_group', COALESCE(l.model_group, k.model_group),
                   'ledger', CASE WHEN l.day IS NULL THEN NULL ELSE jsonb_build_object(
                       'entries', l.entries, 'amount_credits', l.amount_credits,
                       'prompt_tokens', l.prompt_tokens, 'completion_tokens', l.completion_tokens,
                       'total_tokens', l.total_tokens, 'cost_usd', l.cost_usd) END,
                   'summary', CASE WHEN k.day IS NULL THEN NULL ELSE jsonb_build_object(
                       'entries', k.entries, 'amount_credits', k.amount_credits,
                       'prompt_tokens', k.prompt_tokens, 'completion_tokens', k.completion_tokens,
                       'total_tokens', k.total_tokens, 'cost_usd', k.cost_usd) END)
          FROM ledger l
          FULL JOIN kept k ON (k.account_id, k.day, k.reason, k.model_group)
                            = (l.account_id, l.day, l.reason, l.model_group)
         WHERE (l.entries, l.amount_credits, l.prompt_tokens, l.completion_tokens, l.total_tokens, l.cost_usd)
               IS DISTINCT FROM
               (k.entries, k.amount_credits, k.prompt_tokens, k.completion_tokens, k.total_tokens, k.cost_usd)
        """,
        p,
    )
    for month_start, month_end in _months(first_day, last_day):
        cursor.execute(
            f"""
            WITH ledger AS (
                SELECT account_id,
                       sum(amount_credits) FILTER (WHERE created_at < %(ms)s) AS opening,
                       sum(amount_credits) AS closing
                  FROM {_L}
                 WHERE created_at < %(me)s {only("account_id")}
                 GROUP BY account_id
            ), kept AS (
                SELECT account_id,
                       sum(amount_credits) FILTER (WHERE day < %(ms_day)s) AS opening,
                       sum(amount_credits) FILTER (WHERE day >= %(ms_day)s AND reason <> 'usage') AS added,
                       -sum(amount_credits) FILTER (WHERE day >= %(ms_day)s AND reason = 'usage') AS used
                  FROM {summary}
                 WHERE day < %(me_day)s {only("account_id")}
                 GROUP BY account_id
            ), book AS (
                SELECT COALESCE(l.account_id, k.account_id) AS account_id,
                       COALESCE(l.opening, 0) AS ledger_opening, COALESCE(l.closing, 0) AS ledger_closing,
                       COALESCE(k.opening, 0) AS opening, COALESCE(k.added, 0) AS added, COALESCE(k.used, 0) AS used
                  FROM ledger l FULL JOIN kept k ON k.account_id = l.account_id
            )
            INSERT INTO reconcile_found (kind, ref, at, detail)
            SELECT 'invoice_identity', b.account_id || '/' || %(period)s, %(ms)s,
                   jsonb_build_object('account', {account_of.format(column="b.account_id")},
                                      'period', %(period)s, 'opening', b.opening, 'added', b.added,
                                      'used', b.used, 'closing', b.ledger_closing,
                                      'ledger_opening', b.ledger_opening,
                                      'difference', b.opening + b.added - b.used - b.ledger_closing)
              FROM book b
             WHERE b.opening + b.added - b.used <> b.ledger_closing OR b.opening <> b.ledger_opening
            """,
            {
                **p,
                "ms": datetime.combine(month_start, datetime.min.time(), tzinfo=UTC),
                "me": datetime.combine(month_end, datetime.min.time(), tzinfo=UTC),
                "ms_day": month_start,
                "me_day": month_end,
                "period": month_start.strftime("%Y-%m"),
            },
        )


def _months(first_day: date, last_day: date) -> Iterator[tuple[date, date]]:
    """(first day, first day of the next month) of every month from first_day's to last_day's."""
    start = first_day.replace(day=1)
    while start <= last_day:
        following = (start + timedelta(days=32)).replace(day=1)
        yield start, following
        start = following


# --- backfill (--apply) -------------------------------------------------------------------------

_BACKFILL_COLUMNS = (
    "s.request_id, s.litellm_call_id, s.spend, s.status, s.end_user, "
    "EXTRACT(EPOCH FROM s.start_time), EXTRACT(EPOCH FROM s.end_time), s.model_group, s.model, s.provider, "
    "s.call_type, s.prompt_tokens, s.completion_tokens, s.total_tokens, s.cache_hit, s.api_key, s.team_id, "
    "s.key_alias, s.spend_logs_metadata, s.model_map_information"
)


def spend_log_record(row: Sequence[Any]) -> dict[str, Any]:
    """A LiteLLM StandardLoggingPayload-shaped record built from a spend-log row (for parse_usage_record)."""
    (
        request_id,
        call_id,
        spend,
        status,
        end_user,
        start,
        end,
        model_group,
        model,
        provider,
        call_type,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cache_hit,
        api_key,
        team_id,
        key_alias,
        spend_logs_metadata,
        model_map_information,
    ) = row
    record: dict[str, Any] = {
        "id": _CACHE_HIT_SUFFIX.sub("", request_id),
        "litellm_call_id": call_id,
        "response_cost": spend,
        "status": status or "success",
        "end_user": end_user or "",
        "model_group": model_group,
        "model": model,
        "custom_llm_provider": provider,
        "call_type": call_type,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total_tokens,
        "cache_hit": cache_hit,
        "startTime": start,
        "endTime": end,
        "metadata": {
            "spend_logs_metadata": loads_exact(spend_logs_metadata) if spend_logs_metadata else None,
            "user_api_key_hash": api_key or None,
            "user_api_key_alias": key_alias,
            "user_api_key_team_id": team_id or None,
            "user_api_key_end_user_id": end_user or None,
        },
        "billing_source": {"litellm_spend_log_request_id": request_id},
    }
    if model_map_information:
        record["model_map_information"] = loads_exact(model_map_information)
    return record


def _backfill(cursor: Any) -> dict[str, int]:
    """Bill every healable missing receipt through commit_usage_facts(); marks what it healed."""
    from receipts.services import commit_usage_fact, commit_usage_facts

    counts = {"backfilled": 0, "already_billed": 0, "deferred": 0, "not_billable": 0, "errors": 0}
    after = ""
    while True:
        cursor.execute(
            f"""
            SELECT {_BACKFILL_COLUMNS}
              FROM reconcile_found f JOIN reconcile_rows s ON s.request_id = f.ref
             WHERE f.kind = 'missing_receipt' AND f.healable AND f.ref > %s
             ORDER BY f.ref LIMIT %s
            """,
            [after, _BACKFILL_CHUNK],
        )
        rows = cursor.fetchall()
        if not rows:
            return counts
        after = rows[-1][0]
        facts: list[UsageFact] = []
        refs: list[str] = []
        for row in rows:
            parsed = parse_usage_record(spend_log_record(row))
            if isinstance(parsed, UsageFact):
                facts.append(parsed)
                refs.append(row[0])
            else:
                counts["not_billable"] += 1
                logger.warning("spend log %s cannot be backfilled: %s (%s)", row[0], parsed.reason, parsed.detail)
        try:
            outcomes = commit_usage_facts(facts=facts)
        except DatabaseError:
            logger.exception("backfill of %d receipts failed as a batch; one by one", len(facts))
            outcomes = []
            for fact in facts:
                try:
                    outcomes.append(commit_usage_fact(fact=fact))
                except DatabaseError:
                    logger.exception("backfill of litellm_call_id=%s failed", fact.litellm_call_id)
                    outcomes.append(None)
        healed = []
        for ref, outcome in zip(refs, outcomes, strict=True):
            if outcome is None:
                counts["errors"] += 1
            elif outcome.outcome == "processed":
                counts["backfilled"] += 1
                healed.append(ref)
            elif outcome.outcome == "duplicate":
                counts["already_billed"] += 1
                healed.append(ref)
            else:
                counts["deferred"] += 1
        if healed:
            cursor.execute(
                "UPDATE reconcile_found SET healed = true WHERE kind = 'missing_receipt' AND ref = ANY(%s)", [healed]
            )
        metrics.reconcile_backfilled_total.inc(sum(1 for o in outcomes if o and o.outcome == "processed"))


# --- the run ------------------------------------------------------------------------------------


def _collect(cursor: Any, report: ReconcileReport, limit: int) -> None:
    cursor.execute("SELECT kind, count(*), count(*) FILTER (WHERE NOT healed) FROM reconcile_found GROUP BY kind")
    for kind, found, remaining in cursor.fetchall():
        report.found[kind] = found
        report.remaining[kind] = remaining
    cursor.execute(
        """
        SELECT kind, healed, detail::text FROM (
            SELECT kind, healed, detail, row_number() OVER (PARTITION BY kind ORDER BY at NULLS FIRST, ref) AS n
              FROM reconcile_found) f
         WHERE n <= %s ORDER BY kind, n
        """,
        [limit],
    )
    for kind, healed, detail in cursor.fetchall():
        item = {"kind": kind, **loads_exact(detail)}
        if report.apply and kind == "missing_receipt":
            item["backfilled"] = healed
        report.items[kind].append(item)


def _drop_temp_tables(cursor: Any) -> None:
    for table in _TEMP_TABLES:
        cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")


def run_reconcile(
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
    """
    started = time.monotonic()
    report = ReconcileReport(window=window, account=account, apply=apply, litellm_checked=include_litellm)
    limit = settings.BILLING_RECONCILE_REPORT_LIMIT if report_limit is None else report_limit
    timer = _Timer(report.timings)
    with connection.cursor() as cursor:
        _drop_temp_tables(cursor)
        cursor.execute(_FOUND_TABLE)
        try:
            if include_litellm:
                own_client = client is None
                client = client or LiteLLMClient()
                try:
                    try:
                        # One transaction: a page PostgreSQL refuses leaves nothing half-loaded.
                        with timer("read_litellm"), transaction.atomic():
                            report.spend_log_rows = _load_spend_logs(cursor, client, window, progress=progress)
                    except DataError as exc:
                        raise LiteLLMError(f"a spend-log row holds a value PostgreSQL refuses: {exc}") from exc
                    with timer("compare_litellm"):
                        _compare_with_litellm(cursor, window, account)
                except LiteLLMError as exc:
                    logger.error("reconcile: LiteLLM's spend logs could not be read: %s", exc)
                    report.errors.append({"source": "litellm", "reason": str(exc)})
                finally:
                    if own_client:
                        client.close()
            with timer("books"):
                _check_books(cursor, window, account)
            if apply and not report.errors:
                with timer("backfill"):
                    report.backfill = _backfill(cursor)
            with timer("collect"):
                _collect(cursor, report, limit)
        finally:
            _drop_temp_tables(cursor)
    report.duration_seconds = time.monotonic() - started
    _publish(report)
    return report


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


def run_scheduled_reconcile(now: datetime | None = None) -> ReconcileReport:
    """The beat schedule's run (receipts.tasks.reconcile_books and `manage.py billing_worker`)."""
    include_litellm = bool(settings.LITELLM_MASTER_KEY)
    if not include_litellm:
        logger.info("scheduled reconcile: LITELLM_MASTER_KEY is not set; in-book checks only")
    return run_reconcile(
        window=scheduled_window(now), apply=settings.BILLING_RECONCILE_APPLY, include_litellm=include_litellm
    )
