"""The one HTTP client of LiteLLM (pinned litellm[proxy]==1.108.7): every call billing makes to it.

What the pinned source serves (litellm/proxy/spend_tracking/spend_management_endpoints.py):

- `GET /spend/logs?request_id=X` (no dates): every `LiteLLM_SpendLogs` row whose
  `request_id` or `litellm_call_id` equals X, across all time, as a JSON array
  of whole rows (up to 10,000, newest first).
- `GET /spend/logs/v2?start_date=&end_date=&page=&page_size=`: one page of the
  rows whose `startTime` lies in [start_date, end_date] (both inclusive,
  "YYYY-MM-DD HH:MM:SS" in UTC, so whole seconds), as
  `{"data", "total", "page", "page_size", "total_pages", "total_is_capped"}`.
  `page_size` is at most 1000; `total` is capped at 10,000
  (`SPEND_LOGS_PAGINATION_COUNT_CAP`, then `total_is_capped` is true) although
  deeper pages are still served; pages are OFFSET pages ordered by `startTime`
  alone, so rows with equal times can move between pages.
  A row has `request_id`, `litellm_call_id`, `spend` (a JSON number),
  `status`, `end_user`, `startTime`/`endTime` (ISO 8601), tokens,
  `model`, `model_group`, `custom_llm_provider`, `call_type`, `cache_hit`
  ("True"/"False"), `api_key` (the hashed key), `team_id`, and `metadata`:
  the `SpendLogsMetadata` JSON that LiteLLM stores as a string; the v2 route
  hydrates it into an object, the v1 route returns the stored value. Both
  forms are accepted here.
- The same v2 route with `end_user=X`: only the rows whose `end_user`
  column equals X (an exact match, ANDed with the required start/end window;
  `ui_view_spend_logs` adds `end_user = $n` to its WHERE clause).

Money is parsed from the JSON text into Decimal with msgspec, which reads a
JSON number's digits into a Decimal, never through a float: typed structs for
the pages, `float_hook=Decimal` for the untyped single-call lookups.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import msgspec
from django.conf import settings

logger = logging.getLogger(__name__)

PAGE_SIZE_MAX = 1000
COUNT_CAP = 10_000
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class LiteLLMError(Exception):
    """LiteLLM's spend-log API could not be read (the message says why)."""


class LiteLLMUnavailable(LiteLLMError):
    """A transient failure: LiteLLM down, a timeout, 429 or 5xx. Worth retrying later."""


class SpendLogMetadata(msgspec.Struct):
    """The parts of a row's `metadata` that billing needs (everything else is skipped unparsed).

    Typed loosely: a surprising value here never makes a page unreadable.
    """

    user_api_key: Any = None
    user_api_key_alias: Any = None
    user_api_key_team_id: Any = None
    # Kept as JSON text: copied into the record only when a receipt is backfilled.
    spend_logs_metadata: msgspec.Raw = msgspec.Raw(b"null")
    model_map_information: msgspec.Raw = msgspec.Raw(b"null")


class SpendLogRow(msgspec.Struct):
    """One `LiteLLM_SpendLogs` row as the v2 route serves it (unknown columns are ignored)."""

    request_id: str
    spend: Decimal | None = None
    litellm_call_id: str | None = None
    status: str | None = None
    end_user: str | None = None
    startTime: str | None = None  # LiteLLM's column names
    endTime: str | None = None
    model: str | None = None
    model_group: str | None = None
    custom_llm_provider: str | None = None
    call_type: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cache_hit: str | bool | None = None
    api_key: str | None = None
    team_id: str | None = None
    # An object (v2 hydrates it) or the JSON string LiteLLM stores; see row_metadata().
    metadata: SpendLogMetadata | str | None = None


class SpendLogPage(msgspec.Struct):
    data: list[SpendLogRow]
    total: int = 0
    page: int = 1
    page_size: int = 0
    total_pages: int = 0
    total_is_capped: bool = False


_page_decoder = msgspec.json.Decoder(SpendLogPage)
# Whole v1 rows, untyped: every JSON float becomes a Decimal from its digits (ints stay ints).
_rows_decoder = msgspec.json.Decoder(float_hook=Decimal)
_metadata_decoder = msgspec.json.Decoder(SpendLogMetadata)
_EMPTY_METADATA = SpendLogMetadata()


def row_metadata(row: SpendLogRow) -> SpendLogMetadata:
    """The row's metadata whether LiteLLM served it as an object or as the JSON string it stores."""
    metadata = row.metadata
    if isinstance(metadata, SpendLogMetadata):
        return metadata
    if isinstance(metadata, str) and metadata.lstrip().startswith("{"):
        try:
            return _metadata_decoder.decode(metadata)
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            pass  # metadata is for audit and backfill only: a surprising shape never hides the row
    return _EMPTY_METADATA


def _litellm_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class CallCost:
    """The cost LiteLLM's spend logs hold for one call."""

    spend: Decimal | None
    request_id: str
    status: str | None


class LiteLLMClient:
    """A small, retrying client; use as a context manager (it keeps one connection pool)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        master_key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> None:
        key = settings.LITELLM_MASTER_KEY if master_key is None else master_key
        headers = {"Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.base_url = (base_url or settings.LITELLM_BASE_URL).rstrip("/")
        self.retries = settings.LITELLM_RETRIES if retries is None else retries
        self.backoff = settings.LITELLM_RETRY_BACKOFF_SECONDS if backoff is None else backoff
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=settings.LITELLM_TIMEOUT_SECONDS if timeout is None else timeout,
        )

    def __enter__(self) -> "LiteLLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, Any]) -> bytes:
        """GET with retries of transient failures; the body as bytes (parsed by the caller, exactly)."""
        attempt = 0
        while True:
            try:
                response = self._http.get(path, params=params)
            except httpx.TimeoutException as exc:
                error: LiteLLMError = LiteLLMUnavailable(f"LiteLLM at {self.base_url} timed out on {path}: {exc}")
            except httpx.TransportError as exc:
                error = LiteLLMUnavailable(f"LiteLLM at {self.base_url} is unreachable ({path}): {exc!r}")
            else:
                if response.status_code == 200:
                    return response.content
                detail = response.text[:300].strip()
                message = f"LiteLLM answered {response.status_code} on {path}: {detail}"
                if response.status_code not in _TRANSIENT_STATUS:
                    raise LiteLLMError(message)
                error = LiteLLMUnavailable(message)
            if attempt >= self.retries:
                raise error
            delay = self.backoff * (2**attempt)
            attempt += 1
            logger.warning("%s; retry %d/%d in %.1fs", error, attempt, self.retries, delay)
            if delay > 0:
                time.sleep(delay)

    # --- one call (deferred unknown_cost records) ---------------------------------------------

    def spend_logs_for_request(self, *, request_id: str) -> list[dict[str, Any]]:
        """`/spend/logs?request_id=`: the rows whose request_id or litellm_call_id is `request_id`."""
        body = self._get("/spend/logs", {"request_id": request_id})
        try:
            rows = _rows_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise LiteLLMError(f"LiteLLM's /spend/logs answer is not JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise LiteLLMError(f"LiteLLM's /spend/logs answer is not a list but {type(rows).__name__}")
        return [row for row in rows if isinstance(row, dict)]

    def cost_of_call(self, *, request_id: str, litellm_call_id: str) -> CallCost | None:
        """The spend LiteLLM logged for this call, or None when it has no row for it (yet).

        Looked up by the record's `id` (LiteLLM's request_id); only a row whose
        litellm_call_id is this call's counts, since provider response ids can
        repeat. A cache hit's row has a suffixed request_id, so the call id
        itself (which the filter also matches) is tried second.
        """
        for key in dict.fromkeys(k for k in (request_id, litellm_call_id) if k):
            for row in self.spend_logs_for_request(request_id=key):
                if row.get("litellm_call_id") != litellm_call_id:
                    continue
                spend = row.get("spend")
                if isinstance(spend, bool) or not isinstance(spend, (int, Decimal)):
                    spend = None
                return CallCost(
                    spend=Decimal(spend) if spend is not None else None,
                    request_id=str(row.get("request_id") or ""),
                    status=row.get("status"),
                )
        return None

    # --- pages of a window (the reconciler) -----------------------------------------------------

    def spend_log_page(self, *, start: datetime, end: datetime, page: int, page_size: int) -> SpendLogPage:
        """One `/spend/logs/v2` page of the rows with start <= startTime <= end (whole seconds, UTC)."""
        return self._v2_page(start=start, end=end, page=page, page_size=page_size, filters={})

    # --- one end user's calls (per-run reconcile) -----------------------------------------------

    def end_user_spend_log_page(
        self, *, end_user: str, start: datetime, end: datetime, page: int = 1, page_size: int = PAGE_SIZE_MAX
    ) -> SpendLogPage:
        """One `/spend/logs/v2` page of `end_user`'s rows with start <= startTime <= end.

        LiteLLM matches the `end_user` column exactly (an empty string selects
        the calls without an end user) and still requires the window; `total`
        counts that end user's rows of the window only.
        """
        return self._v2_page(start=start, end=end, page=page, page_size=page_size, filters={"end_user": end_user})

    def _v2_page(
        self, *, start: datetime, end: datetime, page: int, page_size: int, filters: dict[str, str]
    ) -> SpendLogPage:
        params: dict[str, Any] = {
            "start_date": _litellm_time(start),
            "end_date": _litellm_time(end),
            "page": page,
            "page_size": page_size,
            "sort_by": "startTime",
            "sort_order": "asc",
            "exclude_internal_health_checks": "true",
            **filters,
        }
        body = self._get("/spend/logs/v2", params)
        try:
            return _page_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise LiteLLMError(f"LiteLLM's /spend/logs/v2 page {page} has an unexpected shape: {exc}") from exc
