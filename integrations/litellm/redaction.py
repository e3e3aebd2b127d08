"""What a stored delivery keeps of each record: only what billing and replay read (issue 15, privacy).

LiteLLM sends prompts and completions (`messages`, `response`), the key owner's e-mail, the caller's IP
address and user agent, request headers and much more unless its operator redacts them. None of that is
needed to bill or to replay a record, so none of it is stored, whatever LiteLLM sends: each record is
decoded into the fields integrations.litellm.records reads (values kept as their exact JSON text, never rebuilt, so
money and ids replay digit for digit) and the delivery is stored as a JSON array of those.
"""

import msgspec
from msgspec import Raw, Struct

from integrations.litellm.records import strict_json
from litellm_billing_plugin.end_user import END_USER_HEADER

# Header names under metadata.requester_custom_headers that billing reads (older LiteLLM end users).
_KEPT_HEADERS = frozenset({END_USER_HEADER})


class _Prices(Struct, omit_defaults=True):
    input_cost_per_token: Raw = Raw()
    output_cost_per_token: Raw = Raw()


class _ModelMap(Struct, omit_defaults=True):
    model_map_value: _Prices | None = None


class _Metadata(Struct, omit_defaults=True):
    user_api_key_hash: Raw = Raw()
    user_api_key_alias: Raw = Raw()
    user_api_key_team_id: Raw = Raw()
    user_api_key_end_user_id: Raw = Raw()
    spend_logs_metadata: Raw = Raw()
    requester_custom_headers: dict[str, Raw] | None = None


class _Kept(Struct, omit_defaults=True):
    """Every field integrations.litellm.records._Record reads; nothing else is decoded or kept."""

    litellm_call_id: Raw = Raw()
    id: Raw = Raw()
    status: Raw = Raw()
    response_cost: Raw = Raw()
    response_cost_failure_debug_info: Raw = Raw()
    prompt_tokens: Raw = Raw()
    completion_tokens: Raw = Raw()
    total_tokens: Raw = Raw()
    model_group: Raw = Raw()
    model: Raw = Raw()
    custom_llm_provider: Raw = Raw()
    call_type: Raw = Raw()
    stream: Raw = Raw()
    cache_hit: Raw = Raw()
    startTime: Raw = Raw()
    endTime: Raw = Raw()
    end_user: Raw = Raw()
    metadata: _Metadata | None = None
    model_map_information: _ModelMap | None = None
    cost_breakdown: Raw = Raw()


_DECODER = msgspec.json.Decoder(_Kept)
_ENCODER = msgspec.json.Encoder()


def _kept(raw: bytes) -> bytes:
    try:
        try:
            record = _DECODER.decode(raw)
        except msgspec.DecodeError:
            strict = strict_json(raw)  # NaN and friends, as integrations.litellm.records judges them
            if strict is None:
                raise
            record = _DECODER.decode(strict)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        # Not a record billing can read: nothing of it is kept (its defect is on its deferral).
        return b'{"unreadable_record":true,"bytes":%d}' % len(raw)
    headers = record.metadata.requester_custom_headers if record.metadata else None
    if headers:
        record.metadata.requester_custom_headers = {  # type: ignore[union-attr]
            k: v for k, v in headers.items() if k.lower() in _KEPT_HEADERS
        } or None
    return _ENCODER.encode(record)


def redacted_delivery(records: list[bytes]) -> bytes:
    """The delivery as stored: a JSON array of each record's billing fields, in delivery order."""
    return b"[" + b",".join(_kept(raw) for raw in records) + b"]"
