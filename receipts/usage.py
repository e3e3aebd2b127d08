"""Turn one LiteLLM StandardLoggingPayload into a UsageFact, or say why not.

SPEC section 3 is the contract. Each record is judged alone: a bad record
never affects its neighbours. Unknown fields are ignored (LiteLLM adds
fields between versions); `messages` and `response` are never kept.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from accounts.money import fits_cost_column

SOURCE_SYSTEM = "litellm"
# Dropped before anything is stored: prompt and completion text (privacy, size).
_DROPPED_FIELDS = ("messages", "response")
_MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class UsageFact:
    """A usage record LiteLLM priced, ready for commit_usage_fact()."""

    litellm_call_id: str
    request_id: str
    run_id: str
    attempt: int
    end_user: str
    cost_usd: Decimal
    status: str
    model_group: str
    model: str
    provider: str
    call_type: str
    stream: bool
    cache_hit: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    zero_cost_suspect: bool
    api_key_hash: str
    api_key_alias: str
    team_id: str
    started_at: datetime | None
    ended_at: datetime | None
    record: dict[str, Any]

    @property
    def source_reference(self) -> str:
        return source_reference(run_id=self.run_id, attempt=self.attempt, litellm_call_id=self.litellm_call_id)


@dataclass(frozen=True)
class NotBillable:
    """A record that produced no fact. `kind` says what to do with it.

    kind: "deferred" (keep and retry: unknown cost or end user),
          "invalid" (keep for staff: fails validation),
          "skipped" (nothing to bill: a failed call with no cost).
    """

    kind: str
    reason: str
    detail: str
    litellm_call_id: str
    record: Any
    run_id: str = ""
    attempt: int = 0
    request_id: str = ""
    end_user: str = ""

    @property
    def source_reference(self) -> str | None:
        if not self.litellm_call_id:
            return None
        return source_reference(run_id=self.run_id, attempt=self.attempt, litellm_call_id=self.litellm_call_id)


def source_reference(*, run_id: str, attempt: int, litellm_call_id: str) -> str:
    return f"{run_id}/{attempt}/{litellm_call_id}"


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def strip_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without prompt/completion text and without LiteLLM's model-map dump.

    `model_map_information` is ~10 KB of price-table per record; only the
    per-token prices that the zero-cost check reads are kept.
    """
    kept = {k: v for k, v in record.items() if k not in _DROPPED_FIELDS}
    info = record.get("model_map_information")
    if isinstance(info, dict):
        value = info.get("model_map_value") if isinstance(info.get("model_map_value"), dict) else {}
        kept["model_map_information"] = {
            "model_map_key": info.get("model_map_key"),
            "model_map_value": {
                k: value.get(k) for k in ("input_cost_per_token", "output_cost_per_token") if k in value
            },
        }
    return kept


def _text(record: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = record.get(key)
    if value is None or value == "":
        if required:
            raise _Invalid(f"missing_{key}", f"`{key}` is required")
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"invalid_{key}", f"`{key}` must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise _Invalid(f"invalid_{key}", f"`{key}` contains a NUL character")
    if len(value) > _MAX_ID_LENGTH:
        raise _Invalid(f"invalid_{key}", f"`{key}` is longer than {_MAX_ID_LENGTH} characters")
    return value


def _count(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _Invalid(f"invalid_{key}", f"`{key}` must be a non-negative integer, got {value!r}")
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            raise _Invalid(f"invalid_{key}", f"`{key}` must be a non-negative integer, got {value}")
        value = int(value)
    if value < 0:
        raise _Invalid(f"invalid_{key}", f"`{key}` must be a non-negative integer, got {value}")
    return value


def _flag(record: dict[str, Any], key: str) -> bool:
    value = record.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Invalid(f"invalid_{key}", f"`{key}` must be true, false or null, got {value!r}")
    return value


def _timestamp(record: dict[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not Decimal(value).is_finite():
        raise _Invalid(f"invalid_{key}", f"`{key}` must be epoch seconds, got {value!r}")
    try:
        # A timestamp, not money: float precision is fine here.
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Invalid(f"invalid_{key}", f"`{key}` is out of range: {value}") from exc


def _cost(record: dict[str, Any]) -> Decimal | None:
    """The USD cost, or None when LiteLLM did not know it (then defer, never charge 0)."""
    if record.get("response_cost_failure_debug_info") not in (None, {}, ""):
        return None
    value = record.get("response_cost")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _Invalid("invalid_response_cost", f"`response_cost` must be a number, got {value!r}")
    cost = Decimal(value)
    if not cost.is_finite():
        raise _Invalid("invalid_response_cost", f"`response_cost` must be finite, got {value}")
    if cost < 0:
        raise _Invalid("invalid_response_cost", f"`response_cost` must not be negative, got {value}")
    if not fits_cost_column(cost):
        raise _Invalid("invalid_response_cost", f"`response_cost` {value} has more digits than the ledger keeps")
    return cost


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    metadata = record.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _Invalid("invalid_metadata", "`metadata` must be an object")
    return metadata


def _run_and_attempt(metadata: dict[str, Any], litellm_call_id: str) -> tuple[str, int]:
    spend = metadata.get("spend_logs_metadata")
    if isinstance(spend, str):
        try:
            spend = json.loads(spend)
        except ValueError:
            spend = None
    if not isinstance(spend, dict):
        return litellm_call_id, 0
    run_id = spend.get("run_id")
    if run_id is None or run_id == "":
        run_id = litellm_call_id
    elif isinstance(run_id, (int, Decimal)) and not isinstance(run_id, bool):
        run_id = str(run_id)
    if not isinstance(run_id, str) or len(run_id) > _MAX_ID_LENGTH or "/" in run_id:
        raise _Invalid("invalid_run_id", "`spend_logs_metadata.run_id` must be a string without '/'")
    attempt = spend.get("attempt", 0)
    if attempt is None:
        attempt = 0
    if isinstance(attempt, str) and attempt.isdigit():
        attempt = int(attempt)
    if isinstance(attempt, Decimal) and attempt.is_finite() and attempt == attempt.to_integral_value():
        attempt = int(attempt)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt < 2**31:
        raise _Invalid("invalid_attempt", "`spend_logs_metadata.attempt` must be a non-negative integer")
    return run_id, attempt


def resolve_end_user(record: dict[str, Any], metadata: dict[str, Any]) -> str:
    """LiteLLM's end user: the record's `end_user`, else the header older versions left in metadata."""
    end_user = record.get("end_user")
    if isinstance(end_user, str) and end_user:
        return end_user
    headers = metadata.get("requester_custom_headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == "x-litellm-end-user-id" and isinstance(value, str) and value:
                return value
    fallback = metadata.get("user_api_key_end_user_id")
    if isinstance(fallback, str) and fallback:
        return fallback
    return ""


def _positive_price(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool) and Decimal(value) > 0


def _zero_cost_suspect(record: dict[str, Any], cost: Decimal, total_tokens: int) -> bool:
    """Priced at 0 although LiteLLM's own model map lists non-zero per-token prices."""
    if cost != 0 or total_tokens <= 0:
        return False
    info = record.get("model_map_information")
    value = info.get("model_map_value") if isinstance(info, dict) else None
    if not isinstance(value, dict):
        return False
    return _positive_price(value.get("input_cost_per_token")) or _positive_price(value.get("output_cost_per_token"))


def parse_usage_record(record: Any) -> UsageFact | NotBillable:
    """Judge one record: a fact to bill, or why it is not (deferred, invalid or skipped)."""
    if not isinstance(record, dict):
        return NotBillable(
            kind="invalid",
            reason="not_an_object",
            detail=f"a record must be a JSON object, got {type(record).__name__}",
            litellm_call_id="",
            record={"value": record},
        )
    stripped = strip_record(record)
    raw_call_id = record.get("litellm_call_id")
    call_id = raw_call_id if isinstance(raw_call_id, str) and 0 < len(raw_call_id) <= _MAX_ID_LENGTH else ""
    try:
        call_id = _text(record, "litellm_call_id", required=True)
        metadata = _metadata(record)
        run_id, attempt = _run_and_attempt(metadata, call_id)
        request_id = _text(record, "id")
        end_user = resolve_end_user(record, metadata)
        status = record.get("status") or "success"
        if status not in ("success", "failure"):
            raise _Invalid("invalid_status", f"`status` must be 'success' or 'failure', got {status!r}")
        cost = _cost(record)
        prompt_tokens = _count(record, "prompt_tokens")
        completion_tokens = _count(record, "completion_tokens")
        total_tokens = _count(record, "total_tokens") or prompt_tokens + completion_tokens
        stream = _flag(record, "stream")
        cache_hit = _flag(record, "cache_hit")
        started_at = _timestamp(record, "startTime")
        ended_at = _timestamp(record, "endTime")
        texts = {k: _text(record, k) for k in ("model_group", "model", "custom_llm_provider", "call_type")}
        audit = {k: metadata.get(k) for k in ("user_api_key_hash", "user_api_key_alias", "user_api_key_team_id")}
        for key, value in audit.items():
            if value is not None and not isinstance(value, str):
                raise _Invalid(f"invalid_{key}", f"`metadata.{key}` must be a string")
    except _Invalid as exc:
        return NotBillable(
            kind="invalid", reason=exc.reason, detail=exc.detail, litellm_call_id=call_id, record=stripped
        )

    ids = {"litellm_call_id": call_id, "run_id": run_id, "attempt": attempt, "request_id": request_id}
    if status == "failure" and not cost:
        # Nothing was billed by the provider: no receipt (counted by the caller).
        reason = "failure_without_cost" if cost is not None else "failure_unknown_cost"
        return NotBillable(
            kind="skipped", reason=reason, detail="failed call with no cost", record=stripped, end_user=end_user, **ids
        )
    if cost is None:
        return NotBillable(
            kind="deferred",
            reason="unknown_cost",
            detail="LiteLLM did not know the cost of this call",
            record=stripped,
            end_user=end_user,
            **ids,
        )
    return UsageFact(
        end_user=end_user,
        cost_usd=cost,
        status=status,
        model_group=texts["model_group"],
        model=texts["model"],
        provider=texts["custom_llm_provider"],
        call_type=texts["call_type"],
        stream=stream,
        cache_hit=cache_hit,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=total_tokens,
        zero_cost_suspect=status == "success" and _zero_cost_suspect(record, cost, total_tokens),
        api_key_hash=audit["user_api_key_hash"] or "",
        api_key_alias=audit["user_api_key_alias"] or "",
        team_id=audit["user_api_key_team_id"] or "",
        started_at=started_at,
        ended_at=ended_at,
        record=stripped,
        **ids,
    )


@dataclass(frozen=True)
class UnparseableLine:
    """An NDJSON line that is not JSON: kept for staff, never silently dropped."""

    line_number: int
    error: str
    text: str


def judge(record: Any) -> UsageFact | NotBillable:
    """parse_usage_record(), also for NDJSON lines that could not be parsed."""
    if isinstance(record, UnparseableLine):
        return NotBillable(
            kind="invalid",
            reason="unparseable_line",
            detail=f"line {record.line_number} is not JSON: {record.error}",
            litellm_call_id="",
            record={"line_number": record.line_number, "text": record.text[:4096]},
        )
    return parse_usage_record(record)
