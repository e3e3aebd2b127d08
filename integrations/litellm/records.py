"""Judge one LiteLLM StandardLoggingPayload: a UsageFact to bill, or why not.

SPEC section 3 is the contract. A record arrives as its own raw JSON
(receipts.delivery) and is decoded by a typed msgspec decoder that builds only
the fields billing reads (`messages`, `response`, `model_map_information`'s
price table and every unknown field are skipped, not built) and reads money
as Decimal straight from the JSON digits. Everything is judged here, before
the database sees it: every string against its column's real length and for
NUL, every number bounded, credits computed and range-checked. A record that
fails is `invalid`, named by field, never truncated, never a 500.
"""

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import Raw, Struct

from accounts.money import current_charge_rate, fits_bigint, fits_cost_column
from billing_project.exactjson import dumps_exact, loads_exact
from billing_project.text_rules import call_id_problem, control_character_problem
from litellm_billing_plugin.end_user import END_USER_HEADER, resolve_end_user
from receipts.facts import NotBillable, UsageFact
from receipts.models import ChargeReceipt

# No call has this many tokens; bounding them keeps every sum inside bigint.
MAX_TOKENS = 10**12
_MAX_ATTEMPT = 2**31 - 1
_MAX_DETAIL = 300
# A JSON number whose text is short enough to convert in constant time (no 1e2000000 surprises).
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]{0,39})(?:\.[0-9]{1,60})?(?:[eE][+-]?[0-9]{1,4})?")
_EMPTY_JSON = re.compile(rb'\s*(?:|null|\{\s*\}|"")\s*')
_FIELD_PATH = re.compile(r"at `\$\.?([^`]*)`")


def _max_length(name: str) -> int:
    return ChargeReceipt._meta.get_field(name).max_length  # type: ignore[return-value]


# Column sizes come from the model: a value that does not fit is refused, never cut.
_LIMITS = {
    "litellm_call_id": _max_length("litellm_call_id"),
    "id": _max_length("request_id"),
    "run_id": _max_length("run_id"),
    "end_user": _max_length("end_user"),
    "model_group": _max_length("model_group"),
    "model": _max_length("model"),
    "custom_llm_provider": _max_length("provider"),
    "call_type": _max_length("call_type"),
    "metadata.user_api_key_hash": _max_length("api_key_hash"),
    "metadata.user_api_key_alias": _max_length("api_key_alias"),
    "metadata.user_api_key_team_id": _max_length("team_id"),
}


class _Prices(Struct):
    input_cost_per_token: Raw = Raw()
    output_cost_per_token: Raw = Raw()


class _ModelMap(Struct):
    model_map_value: _Prices | None = None


class _Metadata(Struct):
    user_api_key_hash: str | None = None
    user_api_key_alias: str | None = None
    user_api_key_team_id: str | None = None
    user_api_key_end_user_id: Raw = Raw()
    spend_logs_metadata: Raw = Raw()
    requester_custom_headers: dict[str, Raw] | None = None


class _Record(Struct):
    """The fields of LiteLLM's StandardLoggingPayload that billing reads; the rest is skipped."""

    litellm_call_id: str | None = None
    id: str | None = None
    status: str | None = None
    response_cost: Raw = Raw()
    response_cost_failure_debug_info: Raw = Raw()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model_group: str | None = None
    model: str | None = None
    custom_llm_provider: str | None = None
    call_type: str | None = None
    stream: bool | None = None
    cache_hit: bool | None = None
    startTime: float | None = None
    endTime: float | None = None
    end_user: str | None = None
    metadata: _Metadata | None = None
    model_map_information: _ModelMap | None = None
    cost_breakdown: dict[str, Raw] | None = None


class _CallIdOnly(Struct):
    litellm_call_id: Raw = Raw()


_RECORD = msgspec.json.Decoder(_Record)
_CALL_ID_ONLY = msgspec.json.Decoder(_CallIdOnly)
_SPEND_METADATA = msgspec.json.Decoder(dict[str, Raw] | str | None)
_SPEND_METADATA_TEXT = msgspec.json.Decoder(dict[str, Raw])
_RUN_ID = msgspec.json.Decoder(str | int | None)
_ATTEMPT = msgspec.json.Decoder(int | str | None)
_HEADER = msgspec.json.Decoder(str | None)


class _Invalid(Exception):
    def __init__(self, field: str, detail: str, *, reason: str = "") -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail
        self.reason = reason or f"invalid_{field.replace('.', '_')}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: str | None, name: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise _Invalid(name, f"`{name}` is required", reason=f"missing_{name}")
        return ""
    if "\x00" in value:
        raise _Invalid(name, f"`{name}` contains a NUL character")
    limit = _LIMITS[name]
    if len(value) > limit:
        raise _Invalid(name, f"`{name}` is {len(value)} characters long; at most {limit} fit")
    return value


def bounded_number(raw: bytes) -> Decimal | None:
    """A JSON number's exact Decimal, or None when it is not a number of bounded size."""
    text = raw.strip()
    if len(text) > 110 or not _JSON_NUMBER.fullmatch(text):
        return None
    return Decimal(text.decode())


def _count(value: int | None, name: str) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_TOKENS:
        raise _Invalid(name, f"`{name}` must be between 0 and {MAX_TOKENS}, got {_shown(value)}")
    return value


def _timestamp(value: float | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        # A timestamp, not money: float precision is fine here.
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Invalid(name, f"`{name}` is out of range: {_shown(value)}") from exc


def _cost(record: _Record) -> Decimal | None:
    """The USD cost, or None when LiteLLM did not know it (then defer, never charge 0)."""
    if not _EMPTY_JSON.fullmatch(bytes(record.response_cost_failure_debug_info)):
        return None
    raw = bytes(record.response_cost)
    if _EMPTY_JSON.fullmatch(raw):
        return None
    cost = bounded_number(raw)
    if cost is None:
        raise _Invalid("response_cost", f"`response_cost` must be a JSON number, got {_shown(raw.decode())}")
    if cost < 0:
        raise _Invalid("response_cost", f"`response_cost` must not be negative, got {cost}")
    if not fits_cost_column(cost):
        raise _Invalid("response_cost", f"`response_cost` {cost} has more digits than the ledger keeps")
    if not fits_bigint(current_charge_rate().credits_for(cost)):
        raise _Invalid("response_cost", f"`response_cost` {cost} is too large to charge in credits")
    return cost


def _spend_logs_metadata(metadata: _Metadata) -> dict[str, Raw]:
    raw = bytes(metadata.spend_logs_metadata)
    if _EMPTY_JSON.fullmatch(raw):
        return {}
    try:
        value = _SPEND_METADATA.decode(raw)
        if isinstance(value, str):
            value = _SPEND_METADATA_TEXT.decode(value)
    except msgspec.DecodeError:
        return {}  # LiteLLM passes free-form metadata through: not ours to judge beyond run/attempt
    return value or {}


def _run_and_attempt(spend: dict[str, Raw], litellm_call_id: str) -> tuple[str, int, str]:
    """(run_id, attempt, the run id the caller named or "")."""
    run_id: Any = None
    if "run_id" in spend:
        try:
            run_id = _RUN_ID.decode(spend["run_id"])
        except msgspec.DecodeError as exc:
            raise _Invalid("metadata.spend_logs_metadata.run_id", "`run_id` must be a string or an integer") from exc
    if isinstance(run_id, int):
        run_id = str(run_id)
    if run_id is None or run_id == "":
        return litellm_call_id, _attempt(spend), ""
    if control_character_problem(run_id) or len(run_id) > _LIMITS["run_id"]:
        raise _Invalid(
            "metadata.spend_logs_metadata.run_id",
            f"`run_id` must be printable and at most {_LIMITS['run_id']} characters",
        )
    return run_id, _attempt(spend), run_id


def _attempt(spend: dict[str, Raw]) -> int:
    if "attempt" not in spend:
        return 0
    try:
        value = _ATTEMPT.decode(spend["attempt"])
    except msgspec.DecodeError:
        value = -1
    if value is None:
        return 0
    if isinstance(value, str):
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        value = int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else -1
    if not 0 <= value <= _MAX_ATTEMPT:
        raise _Invalid("metadata.spend_logs_metadata.attempt", "`attempt` must be a non-negative integer")
    return value


def _end_user(record: _Record, metadata: _Metadata) -> str:
    """The record's end user by the precedence the plugin uses too (litellm_billing_plugin.end_user)."""
    header = next(
        (value for name, value in (metadata.requester_custom_headers or {}).items() if name.lower() == END_USER_HEADER),
        None,
    )
    chosen = resolve_end_user(
        logged=record.end_user,
        key_end_user=_header_text(metadata.user_api_key_end_user_id),
        header=_header_text(header),
    )
    return _text(chosen, "end_user")


def _header_text(raw: Raw | None) -> str | None:
    """A metadata value that should be a string, or None (anything else is not an end user)."""
    if raw is None or not bytes(raw):
        return None
    try:
        return _HEADER.decode(raw)
    except msgspec.DecodeError:
        return None


def _positive_price(raw: Raw) -> bool:
    price = bounded_number(bytes(raw)) if bytes(raw) else None
    return price is not None and price > 0


def _zero_cost_suspect(record: _Record, cost: Decimal, total_tokens: int) -> bool:
    """Priced at 0 although LiteLLM's own model map lists non-zero per-token prices."""
    if cost != 0 or total_tokens <= 0 or record.model_map_information is None:
        return False
    prices = record.model_map_information.model_map_value
    return prices is not None and (
        _positive_price(prices.input_cost_per_token) or _positive_price(prices.output_cost_per_token)
    )


def _cost_breakdown(value: dict[str, Raw] | None) -> dict[str, Any] | None:
    """LiteLLM's cost breakdown for audit: its non-zero amounts, exact, and its true flags.

    Zeros, nulls and false are left out (absent reads as none): LiteLLM sends a dozen of them with every
    call (discounts, margins, tool costs), and they were a third of each receipt's bytes (bench/README.md).
    """
    if not value:
        return None
    kept: dict[str, Any] = {}
    for key, raw in list(value.items())[:32]:
        if len(key) > 64 or "\x00" in key:
            continue
        text = bytes(raw).strip()
        number = bounded_number(text)
        if number is not None and number != 0 and fits_cost_column(abs(number)):
            kept[key] = str(number)
        elif text == b"true":
            kept[key] = True
    return kept or None


def _call_id_of_invalid(raw: bytes) -> str:
    """The call id of a record that failed, when it can be read safely (for staff to search by)."""
    try:
        value = _HEADER.decode(bytes(_CALL_ID_ONLY.decode(raw).litellm_call_id) or b"null")
    except (msgspec.DecodeError, RecursionError):
        return ""
    # Kept even when it is no valid call id (a "/" in it): staff search for what the caller sent.
    if not value or "\x00" in value or len(value) > _LIMITS["litellm_call_id"]:
        return ""
    return value


def _validation_field(exc: msgspec.ValidationError) -> str:
    match = _FIELD_PATH.search(str(exc))
    return match.group(1) if match else "record"


def judge_usage_record(
    raw: bytes, *, ingest_batch_id: int | None = None, batch_position: int | None = None
) -> UsageFact | NotBillable:
    """Judge one record's raw JSON: a fact to bill, or why it is not (deferred, invalid or skipped).

    Never raises for anything about the record: whatever is wrong with it costs
    this record alone (BILLING_NEVER_THROWS).
    """
    origin = {"ingest_batch_id": ingest_batch_id, "batch_position": batch_position}
    try:
        try:
            return _judge(raw, origin)
        except msgspec.DecodeError:
            # Not strict JSON (NaN, Infinity, …): judge it as Python's json reads it, with those
            # constants as strings, so a NaN where money belongs is refused and one elsewhere is harmless.
            strict = strict_json(raw)
            if strict is None:
                raise
            return _judge(strict, origin)
    except _Invalid as exc:
        return NotBillable(
            kind="invalid",
            reason=exc.reason,
            detail=exc.detail[:_MAX_DETAIL],
            field=exc.field,
            litellm_call_id=_call_id_of_invalid(raw),
            **origin,
        )
    except msgspec.ValidationError as exc:
        name = _validation_field(exc)
        detail = f"`{name}`: {exc}"
    except msgspec.DecodeError as exc:
        name = "record"
        detail = f"unparseable: the record is not valid JSON: {exc}"
    except RecursionError:
        name = "record"
        detail = "the record nests deeper than JSON decoding allows"
    except Exception as exc:  # noqa: BLE001 - BILLING_NEVER_THROWS: any surprise costs this record only
        name = "record"
        detail = f"unexpected {type(exc).__name__} while judging the record"
    if name == "record":
        reason = "not_an_object" if "Expected `object`" in detail else "invalid_record"
    else:
        reason = f"invalid_{name.replace('.', '_')}"
    return NotBillable(
        kind="invalid",
        reason=reason,
        detail=detail[:_MAX_DETAIL],
        field=name,
        litellm_call_id=_call_id_of_invalid(raw),
        **origin,
    )


def strict_json(raw: bytes) -> bytes | None:
    try:
        value = loads_exact(raw, constants="text")
        return dumps_exact(value, for_jsonb=False).encode()
    except (ValueError, RecursionError, UnicodeError):
        return None


def parse_usage_record(record: Any) -> UsageFact | NotBillable:
    """judge_usage_record() for a record already parsed into Python (tests, spend-log rows, legacy rows)."""
    try:
        raw = dumps_exact(record, for_jsonb=False).encode()
    except (ValueError, RecursionError, UnicodeError, TypeError):
        return NotBillable(kind="invalid", reason="invalid_record", detail="the record cannot be encoded as JSON")
    return judge_usage_record(raw)


def _judge(raw: bytes, origin: dict[str, Any]) -> UsageFact | NotBillable:
    record = _RECORD.decode(raw)
    if not record.litellm_call_id:
        raise _Invalid("litellm_call_id", "`litellm_call_id` is required", reason="missing_litellm_call_id")
    call_id = record.litellm_call_id
    problem = call_id_problem(call_id)
    if problem:
        raise _Invalid("litellm_call_id", f"`litellm_call_id` {problem}")
    metadata = record.metadata or _Metadata()
    run_id, attempt, explicit_run_id = _run_and_attempt(_spend_logs_metadata(metadata), call_id)
    status = record.status or "success"
    if status not in ("success", "failure"):
        raise _Invalid("status", f"`status` must be 'success' or 'failure', got {_shown(status)}")
    cost = _cost(record)
    prompt_tokens = _count(record.prompt_tokens, "prompt_tokens")
    completion_tokens = _count(record.completion_tokens, "completion_tokens")
    total_tokens = _count(record.total_tokens, "total_tokens") or prompt_tokens + completion_tokens
    fact = UsageFact(
        litellm_call_id=call_id,
        request_id=_text(record.id, "id"),
        run_id=run_id,
        attempt=attempt,
        explicit_run_id=explicit_run_id,
        end_user=_end_user(record, metadata),
        cost_usd=cost,
        status=status,
        model_group=_text(record.model_group, "model_group"),
        model=_text(record.model, "model"),
        provider=_text(record.custom_llm_provider, "custom_llm_provider"),
        call_type=_text(record.call_type, "call_type"),
        stream=bool(record.stream),
        cache_hit=bool(record.cache_hit),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=total_tokens,
        zero_cost_suspect=cost is not None and status == "success" and _zero_cost_suspect(record, cost, total_tokens),
        api_key_hash=_text(metadata.user_api_key_hash, "metadata.user_api_key_hash"),
        api_key_alias=_text(metadata.user_api_key_alias, "metadata.user_api_key_alias"),
        team_id=_text(metadata.user_api_key_team_id, "metadata.user_api_key_team_id"),
        started_at=_timestamp(record.startTime, "startTime"),
        ended_at=_timestamp(record.endTime, "endTime"),
        cost_breakdown=_cost_breakdown(record.cost_breakdown),
        **origin,
    )
    if status == "failure" and not cost:
        # Nothing was billed by the provider: no receipt (counted by the caller).
        reason = "failure_without_cost" if cost is not None else "failure_unknown_cost"
        return NotBillable(
            kind="skipped", reason=reason, detail="failed call with no cost", litellm_call_id=call_id, **origin
        )
    if cost is None:
        return NotBillable(
            kind="deferred",
            reason="unknown_cost",
            detail="LiteLLM did not know the cost of this call",
            litellm_call_id=call_id,
            fact=fact,
            **origin,
        )
    return fact
