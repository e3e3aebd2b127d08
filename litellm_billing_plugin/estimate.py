"""The worst-case cost of a call, in exact Decimal arithmetic (no LiteLLM import here).

max cost = prompt tokens × input price + output cap × output price, where the
output cap is the request's own limit (`max_tokens`, `max_completion_tokens`,
`max_output_tokens`) or else the model's max output tokens, times `n` choices.
Prices come from LiteLLM's model map as floats; they are turned into Decimal
through `str()` (1.5e-07 → Decimal("1.5E-7")), so no binary-float error enters
the sum. Where a price could be higher than the base one for this request (a
long-context tier, a priority service tier, reasoning tokens, prompt-cache
writes) the higher price is used: the estimate must never be below the real cost.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_INPUT_TIER = re.compile(r"input_cost_per_token_above_(\d+)k_tokens")
_OUTPUT_TIER = re.compile(r"output_cost_per_token_above_(\d+)k_tokens")
_OUTPUT_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def price(value: object) -> Decimal | None:
    """A price from LiteLLM's map as an exact Decimal; None when absent or not a usable number."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() and result >= 0 else None


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


@dataclass(frozen=True, kw_only=True)
class Prices:
    input_per_token: Decimal
    output_per_token: Decimal
    max_output_tokens: int | None


def prices_for_request(
    info: Mapping[str, object], *, prompt_tokens: int, service_tier: str | None = None, cache_write: bool = False
) -> Prices | None:
    """The highest per-token prices that may apply to this request; None when the model has no price."""
    input_price = price(info.get("input_cost_per_token"))
    output_price = price(info.get("output_cost_per_token"))
    if input_price is None or output_price is None:
        return None
    candidates_in = [input_price]
    candidates_out = [output_price, price(info.get("output_cost_per_reasoning_token"))]
    for key, value in info.items():
        # LiteLLM charges a tier's prices (input and output) once the prompt is above its threshold.
        if (match := _INPUT_TIER.fullmatch(key)) and prompt_tokens > int(match.group(1)) * 1000:
            candidates_in.append(price(value))
        elif (match := _OUTPUT_TIER.fullmatch(key)) and prompt_tokens > int(match.group(1)) * 1000:
            candidates_out.append(price(value))
    if service_tier:
        candidates_in.append(price(info.get(f"input_cost_per_token_{service_tier}")))
        candidates_out.append(price(info.get(f"output_cost_per_token_{service_tier}")))
    if cache_write:
        candidates_in.append(price(info.get("cache_creation_input_token_cost")))
    max_output = _positive_int(info.get("max_output_tokens")) or _positive_int(info.get("max_tokens"))
    return Prices(
        input_per_token=max(p for p in candidates_in if p is not None),
        output_per_token=max(p for p in candidates_out if p is not None),
        max_output_tokens=max_output,
    )


def requested_output_tokens(request: Mapping[str, object]) -> int | None:
    """The request's own output limit (the largest, if it sends several), or None."""
    limits = [n for key in _OUTPUT_LIMIT_KEYS if (n := _positive_int(request.get(key))) is not None]
    return max(limits) if limits else None


def choices(request: Mapping[str, object]) -> int:
    """How many completions the request asks for (`n`): each may use the whole output cap."""
    return _positive_int(request.get("n")) or 1


def max_cost(*, prompt_tokens: int, output_tokens: int | None, prices: Prices | None, default_usd: Decimal) -> Decimal:
    """prompt × input price + output × output price; `default_usd` when a price or the output cap is unknown."""
    if prices is None:
        return default_usd
    prompt_cost = prompt_tokens * prices.input_per_token
    if output_tokens is None:  # no limit in the request and none in the model map: no bound to compute
        return max(prompt_cost, default_usd)
    return prompt_cost + output_tokens * prices.output_per_token


def usd_text(amount: Decimal) -> str:
    """A Decimal as plain positional text ("0.0000015", never "1.5E-6"), as the authorize body wants."""
    return format(amount, "f")
