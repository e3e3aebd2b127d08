"""LiteLLM's spend logs as the reconcile reads them: the reader that pages through them and the mapping of a
row into the columns of reconcile_rows (and back into the record shape ingest judges, for a backfill).

Everything named after LiteLLM's spend-log fields lives here; reconciliation speaks of key_hash, team_id,
caller_metadata and price_map.
"""

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from billing_project.exactjson import loads_exact
from integrations.litellm.client import (
    PAGE_SIZE_MAX,
    LiteLLMClient,
    LiteLLMError,
    SpendLogPage,
    SpendLogRow,
    row_metadata,
)

logger = logging.getLogger(__name__)

_SLICE_MAX = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_TIE_REREADS = 5
_CACHE_HIT_SUFFIX = re.compile(r"_cache_hit[0-9.]+$")

# The columns a spend-log row is copied into (reconcile_rows), in COPY order; spend_log_record() reads them back.
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
    ("key_hash", "text"),
    ("team_id", "text"),
    ("key_alias", "text"),
    ("caller_metadata", "text"),
    ("price_map", "text"),
)


def _raw_json(raw: Any) -> str | None:
    text = bytes(raw).decode()
    return None if text in ("", "null") else text


def spend_row_values(row: SpendLogRow) -> tuple[Any, ...]:
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


def spend_log_record(row: Sequence[Any]) -> dict[str, Any]:
    """A StandardLoggingPayload-shaped record rebuilt from a row of SPEND_COLUMNS (what ingest judges)."""
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
        key_hash,
        team_id,
        key_alias,
        caller_metadata,
        price_map,
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
            "spend_logs_metadata": loads_exact(caller_metadata) if caller_metadata else None,
            "user_api_key_hash": key_hash or None,
            "user_api_key_alias": key_alias,
            "user_api_key_team_id": team_id or None,
            "user_api_key_end_user_id": end_user or None,
        },
    }
    if price_map:
        record["model_map_information"] = loads_exact(price_map)
    return record


def row_names_run(row: SpendLogRow, run_id: str) -> bool:
    """Whether the row's `spend_logs_metadata.run_id` is the run (a string or an integer, as ingest reads it)."""
    raw = bytes(row_metadata(row).spend_logs_metadata)
    if raw in (b"", b"null"):
        return False
    try:
        value = loads_exact(raw.decode())
    except ValueError:
        return False
    named = value.get("run_id") if isinstance(value, dict) else None
    if isinstance(named, int) and not isinstance(named, bool):
        named = str(named)
    return named == run_id
