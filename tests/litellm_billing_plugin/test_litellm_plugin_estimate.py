"""The plugin's estimate, settings and answer handling, without a proxy.

The pure parts (Decimal arithmetic, settings, the meaning of each authorize answer) run here;
the parts that call LiteLLM (token counter, model map, router deployments) run in
.venv-litellm's Python, since LiteLLM is not installed in ours.
"""

import asyncio
import json
import subprocess
from decimal import Decimal

import httpx
import pytest
import yaml

from litellm_billing_plugin import estimate
from litellm_billing_plugin.client import (
    Authorized,
    BillingClient,
    Refused,
    Rejected,
    Unavailable,
    classify,
    startup_problem,
)
from litellm_billing_plugin.settings import OnUnavailable, PluginSettings, SettingsError
from tests.litellm_proxy import LITELLM_PYTHON, PLUGIN_CALLBACK, ROOT, base_env

GPT_4O_MINI = {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "max_output_tokens": 16384}
DEFAULT = Decimal("0.75")


def test_prices_are_exact_decimals_from_the_float_text() -> None:
    prices = estimate.prices_for_request(GPT_4O_MINI, prompt_tokens=10)

    assert prices == estimate.Prices(
        input_per_token=Decimal("1.5E-7"), output_per_token=Decimal("6E-7"), max_output_tokens=16384
    )
    # 10 × 0.00000015 + 20 × 0.0000006, with no binary-float residue (float gives 1.3500000000000001e-05).
    assert estimate.max_cost(prompt_tokens=10, output_tokens=20, prices=prices, default_usd=DEFAULT) == Decimal(
        "0.0000135"
    )
    assert estimate.usd_text(Decimal("1.35E-5")) == "0.0000135"


def test_the_highest_applicable_price_is_used() -> None:
    info = {
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "input_cost_per_token_above_128k_tokens": 2e-06,
        "output_cost_per_token_above_128k_tokens": 4e-06,
        "input_cost_per_token_priority": 1.7e-06,
        "output_cost_per_token_priority": 3e-06,
        "output_cost_per_reasoning_token": 2.5e-06,
        "cache_creation_input_token_cost": 1.25e-06,
        "max_tokens": 4096,
    }
    short = estimate.prices_for_request(info, prompt_tokens=1000)
    assert (short.input_per_token, short.output_per_token) == (Decimal("0.000001"), Decimal("0.0000025"))
    assert short.max_output_tokens == 4096  # max_tokens when there is no max_output_tokens
    long = estimate.prices_for_request(info, prompt_tokens=128_001)
    assert (long.input_per_token, long.output_per_token) == (Decimal("0.000002"), Decimal("0.000004"))
    priority = estimate.prices_for_request(info, prompt_tokens=10, service_tier="priority")
    assert (priority.input_per_token, priority.output_per_token) == (Decimal("0.0000017"), Decimal("0.000003"))
    cached = estimate.prices_for_request(info, prompt_tokens=10, cache_write=True)
    assert cached.input_per_token == Decimal("0.00000125")


@pytest.mark.parametrize(
    "info",
    [{}, {"input_cost_per_token": 1e-06}, {"input_cost_per_token": None, "output_cost_per_token": 1e-06}],
)
def test_unknown_prices_give_the_default_ceiling(info: dict) -> None:
    prices = estimate.prices_for_request(info, prompt_tokens=100)

    assert prices is None
    assert estimate.max_cost(prompt_tokens=100, output_tokens=50, prices=prices, default_usd=DEFAULT) == DEFAULT


def test_no_output_cap_gives_at_least_the_default() -> None:
    prices = estimate.Prices(
        input_per_token=Decimal("0.001"), output_per_token=Decimal("0.002"), max_output_tokens=None
    )

    assert estimate.max_cost(prompt_tokens=10, output_tokens=None, prices=prices, default_usd=DEFAULT) == DEFAULT
    assert estimate.max_cost(prompt_tokens=1000, output_tokens=None, prices=prices, default_usd=DEFAULT) == Decimal(
        "1.000"
    )


def test_request_output_limits_and_choices() -> None:
    assert estimate.requested_output_tokens({"max_tokens": 50, "max_completion_tokens": 80}) == 80
    assert estimate.requested_output_tokens({"max_output_tokens": "12"}) == 12
    assert estimate.requested_output_tokens({"max_tokens": 0, "max_completion_tokens": True}) is None
    assert estimate.choices({"n": 3}) == 3
    assert estimate.choices({}) == 1


@pytest.mark.parametrize("bad", [None, True, "abc", float("nan"), -1e-06, "Infinity"])
def test_unusable_prices_are_none(bad: object) -> None:
    assert estimate.price(bad) is None


def test_settings_from_env() -> None:
    settings = PluginSettings.from_env({"BILLING_URL": "http://web:8000/", "BILLING_INGEST_TOKEN": "t"})

    assert settings.authorize_url == "http://web:8000/api/internal/billing/authorize"
    assert settings.on_unavailable is OnUnavailable.FAIL_CLOSED
    assert settings.timeout_seconds == 1.0
    assert settings.default_hold_usd == Decimal("1.00")
    fail_open = PluginSettings.from_env(
        {"BILLING_URL": "http://x", "BILLING_INGEST_TOKEN": "t", "BILLING_PLUGIN_ON_UNAVAILABLE": "FAIL_OPEN"}
    )
    assert fail_open.on_unavailable is OnUnavailable.FAIL_OPEN


def test_each_setting_is_written_once() -> None:
    """One URL and the plugin's own token; the callback's endpoint and header derive from them."""
    env = {"BILLING_SERVICE_URL": "http://web:8000", "BILLING_AUTHORIZE_TOKEN": "auth", "BILLING_INGEST_TOKEN": "ing"}
    settings = PluginSettings.from_env(env)
    assert (settings.billing_url, settings.token, settings.token_setting) == (
        "http://web:8000",
        "auth",
        "BILLING_AUTHORIZE_TOKEN",
    )
    assert settings.callback_environment(env) == {
        "GENERIC_LOGGER_ENDPOINT": "http://web:8000/api/internal/billing/ingest",
        "GENERIC_LOGGER_HEADERS": "Authorization=Bearer ing",
    }
    # What the operator set stays theirs; without the ingest token nothing is derived.
    assert settings.callback_environment({**env, "GENERIC_LOGGER_ENDPOINT": "http://elsewhere"}) == {
        "GENERIC_LOGGER_HEADERS": "Authorization=Bearer ing"
    }
    bare = PluginSettings.from_env({"BILLING_SERVICE_URL": "http://web:8000", "BILLING_AUTHORIZE_TOKEN": "a"})
    assert bare.callback_environment({}) == {}
    # Names of 1.0: BILLING_URL, and the ingest token authorizing against a service without scoped tokens.
    legacy = PluginSettings.from_env({"BILLING_URL": "http://old:8000", "BILLING_INGEST_TOKEN": "t"})
    assert (legacy.url_setting, legacy.token_setting, legacy.token) == ("BILLING_URL", "BILLING_INGEST_TOKEN", "t")


def _service(status: int, body: dict) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


def test_the_startup_check_names_the_setting_at_fault() -> None:
    settings = PluginSettings.from_env({"BILLING_SERVICE_URL": "http://web:8000", "BILLING_AUTHORIZE_TOKEN": "t"})
    assert startup_problem(settings, transport=_service(200, {"scope": "authorize"})) is None
    refused = startup_problem(settings, transport=_service(401, {"error": "Invalid bearer token"}))
    assert refused is not None and "refuses BILLING_AUTHORIZE_TOKEN (HTTP 401)" in refused
    elsewhere = startup_problem(settings, transport=_service(404, {}))
    assert elsewhere is not None and "BILLING_SERVICE_URL=http://web:8000 is not the billing service" in elsewhere

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    unreachable = startup_problem(settings, transport=httpx.MockTransport(down))
    assert unreachable is not None and "BILLING_SERVICE_URL=http://web:8000 does not answer" in unreachable


@pytest.mark.parametrize(
    "env",
    [
        {"BILLING_INGEST_TOKEN": "t"},
        {"BILLING_URL": "web:8000", "BILLING_INGEST_TOKEN": "t"},
        {"BILLING_URL": "http://x"},
        {"BILLING_URL": "http://x", "BILLING_INGEST_TOKEN": "t", "BILLING_PLUGIN_ON_UNAVAILABLE": "maybe"},
        {"BILLING_URL": "http://x", "BILLING_INGEST_TOKEN": "t", "BILLING_PLUGIN_TIMEOUT_SECONDS": "0"},
        {"BILLING_URL": "http://x", "BILLING_INGEST_TOKEN": "t", "BILLING_HOLD_DEFAULT_USD": "-1"},
        {"BILLING_URL": "http://x", "BILLING_INGEST_TOKEN": "t", "BILLING_HOLD_DEFAULT_USD": "lots"},
    ],
)
def test_bad_settings_stop_the_plugin(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        PluginSettings.from_env(env)


HOLD = {
    "allowed": True,
    "hold_id": "h1",
    "held_credits": 5,
    "available_credits": 9,
    "expires_at": "2030-01-01T00:00:00Z",
}
REFUSAL = {"allowed": False, "reason": "unknown_payer", "available_credits": 0, "required_credits": 5}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, HOLD, Authorized(hold_id="h1", body=HOLD)),
        (402, REFUSAL, Refused(body=REFUSAL)),
        (503, {"error": "x"}, Unavailable("HTTP 503")),
        (500, None, Unavailable("HTTP 500")),
        (400, {"error": "bad", "field": "model"}, Rejected(status=400, body={"error": "bad", "field": "model"})),
        (401, None, Rejected(status=401)),
        (200, {"allowed": False}, Rejected(status=200, body={"allowed": False})),
        (402, {"error": "x"}, Rejected(status=402, body={"error": "x"})),
    ],
)
def test_what_each_answer_means(status: int, body: dict | None, expected: object) -> None:
    response = httpx.Response(status, content=b"not json" if body is None else json.dumps(body).encode())

    assert classify(response) == expected


def test_connection_errors_and_timeouts_are_unavailable() -> None:
    settings = PluginSettings.from_env(
        {"BILLING_URL": "http://billing.invalid", "BILLING_INGEST_TOKEN": "t", "BILLING_PLUGIN_TIMEOUT_SECONDS": "0.2"}
    )

    def refuse_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=HOLD)

    async def run(handler: object) -> object:
        client = BillingClient(settings, transport=httpx.MockTransport(handler))
        try:
            return await client.authorize({"litellm_call_id": "c1"})
        finally:
            await client.aclose()

    assert isinstance(asyncio.run(run(refuse_connection)), Unavailable)
    assert asyncio.run(run(stall)) == Unavailable("timeout")


# Run in .venv-litellm: LiteLLM's token counter and model map, a router with two deployments.
LITELLM_SCRIPT = r"""
import json, sys
from decimal import Decimal
import litellm
from litellm import Router
from litellm_billing_plugin.deployment_estimate import estimate_request

messages = [{"role": "user", "content": "Say hello."}]
router = Router(model_list=[
    {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "x"}},
    {"model_name": "mixed", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "x"}},
    {"model_name": "mixed", "litellm_params": {"model": "openai/gpt-4o", "api_key": "x"}},
    {"model_name": "custom", "litellm_params": {"model": "openai/my-own-model", "api_key": "x",
                                                 "input_cost_per_token": 0.001, "output_cost_per_token": 0.002},
     "model_info": {"max_output_tokens": 100}},
    {"model_name": "unpriced", "litellm_params": {"model": "openai/my-unpriced-model", "api_key": "x"}},
    {"model_name": "free", "litellm_params": {"model": "openai/my-free-model", "api_key": "x",
                                               "input_cost_per_token": 0, "output_cost_per_token": 0}},
])
cases = {
    "max_tokens": ({"model": "mini", "messages": messages, "max_tokens": 20}, "acompletion"),
    "model_max": ({"model": "mini", "messages": messages}, "acompletion"),
    "n2": ({"model": "mini", "messages": messages, "max_tokens": 20, "n": 2}, "acompletion"),
    "mixed": ({"model": "mixed", "messages": messages, "max_tokens": 20}, "acompletion"),
    "custom": ({"model": "custom", "messages": messages}, "acompletion"),
    "unpriced": ({"model": "unpriced", "messages": messages, "max_tokens": 20}, "acompletion"),
    "free": ({"model": "free", "messages": messages, "max_tokens": 20}, "acompletion"),
    "unknown_group": ({"model": "no-such-model", "messages": messages, "max_tokens": 20}, "acompletion"),
    "no_router": ({"model": "openai/gpt-4o-mini", "messages": messages, "max_tokens": 20}, "acompletion"),
    "embedding": ({"model": "mini", "input": ["Say hello.", "again"]}, "aembedding"),
}
mini = "openai/gpt-4o-mini"
gpt4o = litellm.get_model_info("openai/gpt-4o")
out = {"tokens": litellm.token_counter(model=mini, messages=messages),
       "embed_tokens": sum(litellm.token_counter(model=mini, text=t) for t in ["Say hello.", "again"]),
       "gpt4o": [str(gpt4o[k]) for k in ("input_cost_per_token", "output_cost_per_token")]}
for name, (data, call_type) in cases.items():
    b = estimate_request(data, call_type=call_type, router=None if name == "no_router" else router,
                         default_usd=Decimal("0.75"))
    out[name] = {"usd": str(b.usd), "model": b.model, "output_tokens": b.output_tokens}
print(json.dumps(out))
"""


def test_estimates_from_litellms_own_counter_and_model_map(tmp_path) -> None:
    result = subprocess.run(
        [str(LITELLM_PYTHON), "-c", LITELLM_SCRIPT],
        cwd=tmp_path,  # the installed plugin, not the repository's folder
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    tokens = out["tokens"]
    assert tokens > 0
    mini_in, mini_out = Decimal("1.5E-7"), Decimal("6E-7")

    assert Decimal(out["max_tokens"]["usd"]) == tokens * mini_in + 20 * mini_out
    assert out["max_tokens"]["model"] == "openai/gpt-4o-mini"  # the group resolved to its deployment
    assert out["model_max"]["output_tokens"] == 16384  # the model's max output tokens
    assert Decimal(out["model_max"]["usd"]) == tokens * mini_in + 16384 * mini_out
    assert Decimal(out["n2"]["usd"]) == tokens * mini_in + 40 * mini_out
    gpt4o_in, gpt4o_out = (Decimal(p) for p in out["gpt4o"])
    assert out["mixed"]["model"] == "openai/gpt-4o"  # the dearer of the group's deployments
    assert Decimal(out["mixed"]["usd"]) == tokens * gpt4o_in + 20 * gpt4o_out
    assert Decimal(out["custom"]["usd"]) == tokens * Decimal("0.001") + 100 * Decimal("0.002")
    # The router registers an unmapped deployment at price 0: unknown, so the ceiling; 0 set in the config is free.
    assert Decimal(out["unpriced"]["usd"]) == DEFAULT
    assert Decimal(out["free"]["usd"]) == 0
    assert Decimal(out["unknown_group"]["usd"]) == DEFAULT
    assert out["no_router"] == out["max_tokens"]
    assert out["embedding"]["output_tokens"] == 0
    assert Decimal(out["embedding"]["usd"]) == out["embed_tokens"] * mini_in


def test_the_deployed_litellm_config_loads_the_plugin_the_tests_load() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "litellm" / "config.yaml").read_text())

    assert PLUGIN_CALLBACK in config["litellm_settings"]["callbacks"]
    assert set(config["litellm_settings"]["success_callback"]) >= {"generic_api"}  # the records that settle holds
