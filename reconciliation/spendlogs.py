"""LiteLLM's spend logs of a window, read page by page and COPYed into the temp table `reconcile_rows`.

Memory stays flat however large the window: rows are streamed from the HTTP
pages into PostgreSQL with COPY; the checks then compare set-wise in SQL.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from tqdm import tqdm

from integrations.litellm.client import (
    PAGE_SIZE_MAX,
    LiteLLMClient,
    LiteLLMError,
    SpendLogPage,
    SpendLogRow,
    row_metadata,
)
from reconciliation.window import Window

logger = logging.getLogger(__name__)

# Spend logs are read a little beyond the window so that a receipt at its edge
# still finds its row (LiteLLM keeps startTime to the millisecond).
EDGE = timedelta(seconds=60)
_SLICE_MAX = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_TIE_REREADS = 5

# The columns of reconcile_rows, in COPY order (the backfill reads them back in this order too).
SPEND_COLUMNS = (
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


def load_spend_logs(cursor: Any, client: LiteLLMClient, window: Window, *, progress: bool) -> int:
    """COPY the spend logs of the window (plus EDGE on both sides) into reconcile_rows; returns rows read."""
    start, end = _floor_second(window.since - EDGE), _ceil_second(window.until + EDGE)
    # Slices overlap at their bounds and a re-read slice repeats rows: a request_id can come
    # twice. The comparisons below tolerate that (only their few results are made distinct).
    create_rows_table(cursor)
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
    names = ", ".join(name for name, _ in SPEND_COLUMNS)
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
    index_rows_table(cursor)
    return read


def create_rows_table(cursor: Any) -> None:
    """The temp table reconcile_rows (SPEND_COLUMNS) that the checks and the backfill read."""
    columns = ", ".join(f"{name} {kind}" for name, kind in SPEND_COLUMNS)
    cursor.execute(
        f"""
        CREATE TEMP TABLE reconcile_rows ({columns},
            base_request_id text GENERATED ALWAYS AS (
                CASE WHEN litellm_call_id IS NULL THEN regexp_replace(request_id, '_cache_hit[0-9.]+$', '') END
            ) STORED)
        """
    )


def copy_rows(cursor: Any, rows: Iterable[SpendLogRow]) -> int:
    """COPY rows already read (a run's few) into reconcile_rows; returns how many."""
    names = ", ".join(name for name, _ in SPEND_COLUMNS)
    count = 0
    with cursor.copy(f"COPY reconcile_rows ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(_copy_values(row))
            count += 1
    return count


def index_rows_table(cursor: Any) -> None:
    # Rows without a call id (older LiteLLM) are matched by request id: usually none, so a small index.
    cursor.execute("CREATE INDEX ON reconcile_rows (base_request_id) WHERE base_request_id IS NOT NULL")
    cursor.execute("ANALYZE reconcile_rows")
