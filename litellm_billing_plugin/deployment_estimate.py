"""The estimate of one proxied request, from LiteLLM's own token counter and model map.

A model group can have several deployments (different providers, custom
prices): the router picks one after this hook, so the estimate is the largest
over the group's deployments.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import litellm

from litellm_billing_plugin import estimate

logger = logging.getLogger("litellm_billing_plugin")

# Keys of a deployment's model_info / litellm_params that override LiteLLM's map (custom pricing).
_INFO_KEYS = ("max_output_tokens", "max_tokens")
_PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


@dataclass(frozen=True, kw_only=True)
class Breakdown:
    model: str  # the deployment's litellm_params.model (or its base_model, which LiteLLM prices)
    prompt_tokens: int
    output_tokens: int | None  # the output cap × n; None when unknown
    prices: estimate.Prices | None  # None: LiteLLM has no price for the model
    usd: Decimal
    # The output bound is the request's (max_tokens...) or the deployment's; False: only the model's limit,
    # which the service may size down from what this key has used (README, "A hold that fits the call").
    output_capped: bool = True

    @property
    def priced(self) -> bool:
        return self.prices is not None


def _pricing_model(deployment: Mapping[str, Any]) -> str:
    params = deployment.get("litellm_params") or {}
    info = deployment.get("model_info") or {}
    return str(info.get("base_model") or params.get("base_model") or params.get("model") or "")


def _model_info(deployment: Mapping[str, Any], model: str) -> dict[str, object]:
    """LiteLLM's map entry for the model, overlaid with the deployment's own prices and limits."""
    try:
        info: dict[str, object] = dict(litellm.get_model_info(model=model))
    except Exception:  # noqa: BLE001 - LiteLLM raises several types for an unmapped model
        info = {}
    params = deployment.get("litellm_params") or {}
    model_info = deployment.get("model_info") or {}
    # Custom pricing may sit in either place (LiteLLM reads both); litellm_params.max_tokens is a call
    # parameter, not a model limit, so only model_info's limits are taken.
    for source, extra_keys in ((model_info, _INFO_KEYS), (params, ())):
        for key, value in source.items():
            is_price = "cost" in key and isinstance(value, int | float | str) and not isinstance(value, bool)
            if value is not None and (is_price or key in extra_keys):
                info[key] = value
    return info


def _explicit_prices(deployment: Mapping[str, Any]) -> bool:
    """Whether the operator set the deployment's prices in the config (then a price of 0 means free)."""
    sources = (deployment.get("litellm_params") or {}, deployment.get("model_info") or {})
    return any(source.get(key) is not None for source in sources for key in _PRICE_KEYS)


def _has_cache_control(value: object, depth: int = 0) -> bool:
    """Whether the request marks any part for prompt caching (cache writes cost more than input)."""
    if depth > 6:
        return False
    if isinstance(value, Mapping):
        return "cache_control" in value or any(_has_cache_control(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v, depth + 1) for v in value)
    return False


def prompt_tokens(model: str, data: Mapping[str, Any]) -> int:
    """Prompt tokens as LiteLLM counts them, for chat, text completion, embedding and responses requests."""
    messages = data.get("messages")
    if isinstance(messages, list):
        return litellm.token_counter(
            model=model,
            messages=messages,
            tools=data.get("tools"),
            tool_choice=data.get("tool_choice"),
            use_default_image_token_count=True,  # never fetch image URLs inside the pre-call hook
        )
    text = data.get("prompt", data.get("input"))
    if isinstance(text, str):
        return litellm.token_counter(model=model, text=text)
    if isinstance(text, list):
        if all(isinstance(item, int) for item in text):  # already tokens
            return len(text)
        if all(isinstance(item, str) for item in text):
            return sum(litellm.token_counter(model=model, text=item) for item in text)
        if all(isinstance(item, list) for item in text):  # lists of tokens
            return sum(len(item) for item in text)
        return litellm.token_counter(model=model, messages=text, use_default_image_token_count=True)
    return 0


def estimate_deployment(
    deployment: Mapping[str, Any], data: Mapping[str, Any], *, call_type: str, default_usd: Decimal
) -> Breakdown:
    model = _pricing_model(deployment)
    info = _model_info(deployment, model)
    tokens = prompt_tokens(model, data)
    prices = estimate.prices_for_request(
        info,
        prompt_tokens=tokens,
        service_tier=data.get("service_tier") if isinstance(data.get("service_tier"), str) else None,
        cache_write=_has_cache_control(data.get("messages")) or _has_cache_control(data.get("system")),
    )
    capped = True
    if "embedding" in call_type:
        output: int | None = 0
    else:
        params = deployment.get("litellm_params") or {}
        cap = estimate.requested_output_tokens(data) or estimate.requested_output_tokens(params)
        capped = cap is not None
        if cap is None and prices is not None:
            cap = prices.max_output_tokens
        output = None if cap is None else cap * estimate.choices(data)
    if (
        prices is not None
        and not prices.input_per_token
        and not prices.output_per_token
        and not _explicit_prices(deployment)
    ):
        # The router registers every unmapped deployment at price 0: that means "unknown", not "free".
        prices = None
    usd = estimate.max_cost(prompt_tokens=tokens, output_tokens=output, prices=prices, default_usd=default_usd)
    return Breakdown(
        model=model, prompt_tokens=tokens, output_tokens=output, prices=prices, usd=usd, output_capped=capped
    )


def group_deployments(router: object | None, model_group: str) -> Sequence[Mapping[str, Any]]:
    """The deployments the router may send `model_group` to; the name itself when there is no router."""
    deployments = None
    if router is not None and hasattr(router, "get_model_list"):
        try:
            deployments = router.get_model_list(model_name=model_group)
        except Exception:
            logger.exception("billing plugin: could not list the deployments of %r", model_group)
    return deployments or [{"litellm_params": {"model": model_group}, "model_info": {}}]


def estimate_request(
    data: Mapping[str, Any], *, call_type: str, router: object | None, default_usd: Decimal
) -> Breakdown:
    """The worst case over the group's deployments; any failure to estimate gives `default_usd`."""
    model_group = str(data.get("model") or "")
    breakdowns = []
    for deployment in group_deployments(router, model_group):
        try:
            breakdowns.append(estimate_deployment(deployment, data, call_type=call_type, default_usd=default_usd))
        except Exception:
            logger.exception("billing plugin: could not estimate %r; using BILLING_HOLD_DEFAULT_USD", model_group)
            breakdowns.append(
                Breakdown(model=model_group, prompt_tokens=0, output_tokens=None, prices=None, usd=default_usd)
            )
    return max(breakdowns, key=lambda b: b.usd)
