"""A month of realistic LiteLLM usage for `bin/run`'s demo (accounts/management/commands/billing_demo.py).

Each record has the shape of LiteLLM 1.108's StandardLoggingPayload as its
`generic_api` callback sends it (taken from tests/fixtures/litellm-1.108-*.json),
trimmed of what billing never reads (LiteLLM's whole price table, hidden
params) and with `messages`/`response` redacted the way
`turn_off_message_logging: true` does. The records come from LiteLLM's master
key (`litellm_proxy_master_key`), the topology of a trusted gateway that names
its own end users. Call ids are fixed, so posting the month again bills nothing
twice; only the timestamps move with today's date.

Nothing here touches the database: the command posts these bodies to the real
ingest endpoint.
"""

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from integrations.litellm.keys import LITELLM_MASTER_KEY_HASH

DAYS = 30
# End users of the demo account (each gets an alias), and one nobody has bound yet.
END_USERS = ("demo-user", "demo-notebook", "demo-batch-job")
UNBOUND_END_USER = "demo-new-hire"
REDACTED = "redacted-by-litellm"  # litellm.constants.REDACTED_BY_LITELLM
_NAMESPACE = uuid.UUID("5b0f6c1e-8a43-4d7e-9f0a-3c1d2e4b5a69")
# Decimal written as a JSON number (its digits), never through a float.
_ENCODER = msgspec.json.Encoder(decimal_format="number")


@dataclass(frozen=True)
class Model:
    group: str  # LiteLLM's model_group: what the caller asked for
    model: str  # the deployment LiteLLM routed to
    provider: str
    call_type: str
    input_per_token: Decimal  # USD, LiteLLM's model map (Nov 2026)
    output_per_token: Decimal
    mode: str


MODELS = (
    Model(
        "gpt-4o-mini",
        "openai/gpt-4o-mini",
        "openai",
        "acompletion",
        Decimal("0.00000015"),
        Decimal("0.0000006"),
        "chat",
    ),
    Model("gpt-4o", "openai/gpt-4o", "openai", "acompletion", Decimal("0.0000025"), Decimal("0.00001"), "chat"),
    Model(
        "claude-haiku",
        "anthropic/claude-3-5-haiku-20241022",
        "anthropic",
        "acompletion",
        Decimal("0.0000008"),
        Decimal("0.000004"),
        "chat",
    ),
    Model(
        "embed-small",
        "openai/text-embedding-3-small",
        "openai",
        "aembedding",
        Decimal("0.00000002"),
        Decimal("0"),
        "embedding",
    ),
)
# A fine-tune LiteLLM has no price for: its record arrives without a cost and is deferred (unknown_cost).
UNPRICED = Model(
    "support-bot", "openai/ft:gpt-4o-mini:acme::demo", "openai", "acompletion", Decimal(0), Decimal(0), "chat"
)


@dataclass(frozen=True)
class Call:
    """One call of the demo month; `day` counts from the oldest (0) to today (DAYS - 1)."""

    day: int
    index: int
    model: Model
    end_user: str
    seconds_into_day: int
    prompt_tokens: int
    completion_tokens: int
    stream: bool

    @property
    def litellm_call_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"demo-call/{self.day}/{self.index}"))

    @property
    def cost_usd(self) -> Decimal | None:
        if self.model is UNPRICED:
            return None
        return self.prompt_tokens * self.model.input_per_token + self.completion_tokens * self.model.output_per_token


def _calls_of_day(day: int) -> list[Call]:
    """The same calls for the same day index on every run (seeded), whatever today's date is."""
    rng = random.Random(f"billing-demo/{day}")
    weekend = day % 7 in (5, 6)
    calls = []
    for index in range(rng.randint(2, 5) if weekend else rng.randint(7, 13)):
        model = rng.choices(MODELS, weights=(6, 2, 3, 2))[0]
        embedding = model.call_type == "aembedding"
        calls.append(
            Call(
                day=day,
                index=index,
                model=model,
                end_user=rng.choices(END_USERS, weights=(5, 3, 2))[0],
                seconds_into_day=rng.randint(7 * 3600, 20 * 3600),
                prompt_tokens=rng.randint(40, 3000) if not embedding else rng.randint(200, 8000),
                completion_tokens=0 if embedding else rng.randint(20, 900),
                stream=not embedding and rng.random() < 0.35,
            )
        )
    if day == DAYS - 1:
        # Today also brings the two records that wait: a cost LiteLLM did not know, an end user nobody bound.
        calls.append(Call(day, len(calls), UNPRICED, "demo-user", 9 * 3600, 812, 164, False))
        calls.append(Call(day, len(calls), MODELS[0], UNBOUND_END_USER, 10 * 3600, 95, 40, False))
    return sorted(calls, key=lambda call: call.seconds_into_day)


def demo_calls() -> list[list[Call]]:
    """The month, one list of calls per day (one LiteLLM delivery each), oldest day first."""
    return [_calls_of_day(day) for day in range(DAYS)]


def _record(call: Call, *, start: datetime) -> dict[str, Any]:
    model = call.model
    embedding = model.call_type == "aembedding"
    total = call.prompt_tokens + call.completion_tokens
    duration = 0.15 + call.completion_tokens * 0.012
    started = start.timestamp()
    request_id = str(uuid.uuid5(_NAMESPACE, f"demo-request/{call.day}/{call.index}"))
    cost = call.cost_usd
    usage = {"prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens, "total_tokens": total}
    if embedding:
        response: dict[str, Any] = {"model": model.group, "object": "list", "data": [], "usage": usage}
    else:
        response = {
            "id": f"chatcmpl-{request_id}",
            "created": int(started),
            "model": model.group,
            "object": "chat.completion",
            "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": REDACTED, "role": "assistant"}}],
            "usage": usage,
        }
    return {
        "id": response.get("id", request_id),
        "litellm_call_id": call.litellm_call_id,
        "trace_id": str(uuid.uuid5(_NAMESPACE, f"demo-trace/{call.day}/{call.index}")),
        "call_type": model.call_type,
        "cache_hit": False,
        "stream": call.stream,
        "status": "success",
        "status_fields": {"llm_api_status": "success", "guardrail_status": "not_run"},
        "custom_llm_provider": model.provider,
        "saved_cache_cost": 0.0,
        "startTime": started,
        "endTime": started + duration,
        "completionStartTime": started + 0.12,
        "response_time": duration,
        "model": model.model,
        "model_group": model.group,
        "model_id": uuid.uuid5(_NAMESPACE, model.model).hex,
        "api_base": "",
        "metadata": {
            "user_api_key_hash": LITELLM_MASTER_KEY_HASH,
            "user_api_key_alias": None,
            "user_api_key_team_id": None,
            "user_api_key_user_id": "default_user_id",
            "user_api_key_end_user_id": call.end_user,
            "user_api_key_request_route": "/v1/embeddings" if embedding else "/v1/chat/completions",
            "spend_logs_metadata": None,
            "requester_custom_headers": {},
            "usage_object": usage,
        },
        "response_cost": cost,
        "response_cost_failure_debug_info": None
        if cost is not None
        else {
            "error_str": f"This model isn't mapped yet. model={model.model.split('/', 1)[1]}, "
            f"custom_llm_provider={model.provider}.",
            "traceback_str": "",
            "model": model.model,
            "cache_hit": False,
            "custom_llm_provider": model.provider,
            "base_model": None,
            "call_type": model.call_type,
            "custom_pricing": False,
        },
        "cost_breakdown": None
        if cost is None
        else {
            "input_cost": call.prompt_tokens * model.input_per_token,
            "output_cost": call.completion_tokens * model.output_per_token,
            "total_cost": cost,
            "tool_usage_cost": 0.0,
            "original_cost": cost,
        },
        "model_map_information": {
            "model_map_key": model.model,
            "model_map_value": None
            if cost is None
            else {
                "key": model.model.split("/", 1)[1],
                "litellm_provider": model.provider,
                "mode": model.mode,
                "input_cost_per_token": model.input_per_token,
                "output_cost_per_token": model.output_per_token,
            },
        },
        "total_tokens": total,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "request_tags": [],
        "end_user": call.end_user,
        "requester_ip_address": "10.0.0.17",
        "user_agent": "OpenAI/Python 1.99.1",
        "messages": [{"role": "user", "content": REDACTED}],
        "response": response,
        "model_parameters": {"user": call.end_user, **({"stream": True} if call.stream else {})},
        "error_str": None,
        "error_information": None,
    }


def delivery_body(calls: list[Call], *, now: datetime) -> bytes:
    """One LiteLLM delivery (a JSON array) of a day's calls, dated `DAYS - 1 - day` days before `now`."""
    records = []
    for call in calls:
        midnight = (
            (now - timedelta(days=DAYS - 1 - call.day))
            .astimezone(UTC)
            .replace(hour=0, minute=0, second=0, microsecond=0)
        )
        # Today's calls never lie in the future.
        start = min(midnight + timedelta(seconds=call.seconds_into_day), now - timedelta(minutes=5))
        records.append(_record(call, start=start))
    return _ENCODER.encode(records)
