"""The billing plugin inside the real LiteLLM 1.108.7 proxy (fail_closed, keys from custom_auth).

One proxy for the module, loading `litellm_billing_plugin.hook.billing_plugin` from its config;
the billing service is a loopback stub (tests/stub_billing.py) that records what the plugin sends
and answers as each test says; models point at a loopback OpenAI-compatible stub provider
(tests/stub_openai_server.py) that counts the requests it gets, so "the model was never called" is
measured. Keys come from a `general_settings: custom_auth` function, so two keys with two teams can
be used without LiteLLM's database.
"""

import hashlib
import json
import secrets
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.litellm_proxy import (
    LiteLLMProxy,
    StubProvider,
    plugin_env,
    provider_model,
    proxy_config,
    running_litellm_proxy,
)
from tests.stub_billing import Recorded, StubBilling, allow, refuse

pytestmark = pytest.mark.e2e

TIMEOUT_SECONDS = 0.5
KEY_ALPHA = f"sk-alpha-{secrets.token_hex(8)}"
KEY_BETA = f"sk-beta-{secrets.token_hex(8)}"
TEAMS = {KEY_ALPHA: "team-alpha", KEY_BETA: "team-beta"}


@pytest.fixture(scope="module")
def proxy(
    billing: StubBilling, provider: StubProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiteLLMProxy]:
    config = proxy_config(
        provider_model("gpt-4o-mini", provider.api_base),
        provider_model("broken", provider.failing_api_base),
        provider_model("slow", provider.slow_api_base),
        plugin=True,
    )
    env = plugin_env(billing.base_url, billing.token, on_unavailable="fail_closed", timeout_s=TIMEOUT_SECONDS)
    workdir = tmp_path_factory.mktemp("litellm")
    with running_litellm_proxy(config, workdir=workdir, env=env, teams=TEAMS) as running:
        yield running


@pytest.fixture
def client(proxy: LiteLLMProxy, billing: StubBilling, provider: StubProvider) -> Iterator[httpx.Client]:
    billing.reset()
    provider.reset()
    with httpx.Client(base_url=proxy.base_url, timeout=60.0, trust_env=False) as http:
        yield http


def chat(
    client: httpx.Client, key: str = KEY_ALPHA, *, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], **body}
    return client.post(
        "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}", **(headers or {})}
    )


def only_authorization(billing: StubBilling) -> Recorded:
    (request,) = billing.authorizations()
    assert request.headers["authorization"] == f"Bearer {billing.token}"
    return request


def test_refused_call_gets_402_with_our_json_and_the_model_is_never_called(
    client: httpx.Client, billing: StubBilling, provider: StubProvider
) -> None:
    billing.reset(answer=refuse)
    response = chat(client, user="broke-user")

    assert response.status_code == 402, response.text
    _, refusal = refuse(only_authorization(billing))
    error = response.json()["error"]
    assert error["code"] == "402"
    assert error["provider_specific_fields"] == refusal
    assert json.loads(error["message"]) == refusal
    assert provider.stats() == {"ok": 0, "fail": 0}
    assert billing.releases() == []  # a refused call has no hold to release


def test_allowed_call_goes_through_with_its_call_id_key_team_end_user_and_run(
    client: httpx.Client, billing: StubBilling, provider: StubProvider
) -> None:
    response = chat(
        client,
        headers={"x-litellm-end-user-id": "end-user-from-header"},
        user="end-user-from-body",
        metadata={"spend_logs_metadata": {"run_id": "run-42", "attempt": 1}},
        max_tokens=20,
    )

    assert response.status_code == 200, response.text
    assert provider.stats() == {"ok": 1, "fail": 0}
    body = only_authorization(billing).body
    assert body == {
        "litellm_call_id": response.headers["x-litellm-call-id"],
        "key_hash": hashlib.sha256(KEY_ALPHA.encode()).hexdigest(),  # what LiteLLM logs as user_api_key_hash
        "team_id": "team-alpha",
        "end_user": "end-user-from-header",  # the header wins over the body's `user`, as in LiteLLM's record
        "run_id": "run-42",
        "model": "gpt-4o-mini",
        "estimated_cost_usd": body["estimated_cost_usd"],
        "priced": True,  # LiteLLM knows gpt-4o-mini's price
        "deadline_ms": int(TIMEOUT_SECONDS * 900),  # the service holds nothing once the plugin stopped waiting
    }
    assert Decimal(body["estimated_cost_usd"]) > 0
    assert "e" not in body["estimated_cost_usd"].lower()  # positional decimal text, never 1.5E-7
    assert billing.releases() == []  # success: the service settles the hold from the usage record


def test_end_user_from_the_body_alone(client: httpx.Client, billing: StubBilling) -> None:
    response = chat(client, user="end-user-from-body")

    assert response.status_code == 200, response.text
    body = only_authorization(billing).body
    assert body["end_user"] == "end-user-from-body"
    assert body["run_id"] is None


def test_two_keys_send_their_own_key_hash_and_team(client: httpx.Client, billing: StubBilling) -> None:
    for key in (KEY_ALPHA, KEY_BETA):
        assert chat(client, key).status_code == 200

    sent = [(r.body["key_hash"], r.body["team_id"]) for r in billing.authorizations()]
    assert sent == [
        (hashlib.sha256(KEY_ALPHA.encode()).hexdigest(), "team-alpha"),
        (hashlib.sha256(KEY_BETA.encode()).hexdigest(), "team-beta"),
    ]


def test_provider_failure_releases_the_hold(client: httpx.Client, billing: StubBilling, provider: StubProvider) -> None:
    response = chat(client, model="broken")

    assert response.status_code == 500, response.text
    assert provider.stats() == {"ok": 0, "fail": 1}
    call_id = response.headers["x-litellm-call-id"]
    assert only_authorization(billing).body["litellm_call_id"] == call_id
    (release,) = billing.releases()
    assert release.path == f"/api/internal/billing/authorize/{call_id}"
    assert release.headers["authorization"] == f"Bearer {billing.token}"


@pytest.mark.parametrize(
    ("answer", "hang_seconds"),
    [
        (lambda request: (503, {"error": "maintenance"}), 0.0),
        (allow, TIMEOUT_SECONDS * 4),  # an answer that would allow, but comes too late
    ],
    ids=["5xx", "timeout"],
)
def test_billing_service_unavailable_fail_closed_refuses_without_calling_the_model(
    client: httpx.Client, billing: StubBilling, provider: StubProvider, answer: Any, hang_seconds: float
) -> None:
    billing.reset(answer=answer, hang_seconds=hang_seconds)
    response = chat(client)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["provider_specific_fields"] == {"allowed": False, "reason": "billing_unavailable"}
    assert len(billing.authorizations()) == 1
    assert provider.stats() == {"ok": 0, "fail": 0}


def test_another_4xx_from_the_service_is_a_bug_and_refuses(
    client: httpx.Client, billing: StubBilling, provider: StubProvider
) -> None:
    billing.reset(answer=lambda request: (400, {"error": "bad", "field": "estimated_cost_usd"}))
    response = chat(client)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["provider_specific_fields"] == {"allowed": False, "reason": "billing_error"}
    assert provider.stats() == {"ok": 0, "fail": 0}


LOREM = (
    "Billing for language models needs an honest upper bound on what a call can cost before it is made. "
    "Numbers like 3.14159, names like Zürich and code like `for i in range(10): print(i)` all tokenize differently. "
)


def test_estimate_is_never_below_the_real_cost(client: httpx.Client, billing: StubBilling) -> None:
    """Real proxied calls of varied prompt sizes and output caps; the stub provider counts prompt tokens with
    tiktoken by OpenAI's rule and returns min(cap, 200) completion tokens; LiteLLM prices the usage."""
    calls: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
        {"messages": [{"role": "user", "content": LOREM}], "max_tokens": 64},
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": LOREM * 5}],
            "max_tokens": 150,
        },
        {"messages": [{"role": "user", "content": LOREM * 40}], "max_completion_tokens": 200},
        {"messages": [{"role": "user", "content": LOREM * 10, "name": "alice"}], "max_tokens": 500},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": LOREM * 3}]}], "max_tokens": 100},
        {"messages": [{"role": "user", "content": "No limit given."}]},
    ]
    ratios = []
    for body in calls:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", **body},
            headers={"Authorization": f"Bearer {KEY_ALPHA}"},
        )
        assert response.status_code == 200, response.text
        actual = Decimal(response.headers["x-litellm-response-cost"])
        (request,) = [
            r for r in billing.authorizations() if r.body["litellm_call_id"] == response.headers["x-litellm-call-id"]
        ]
        estimate = Decimal(request.body["estimated_cost_usd"])
        assert actual > 0
        assert estimate >= actual, (body, estimate, actual)
        ratios.append(estimate / actual)
        if response.json()["usage"]["completion_tokens"] == (
            body.get("max_tokens") or body.get("max_completion_tokens")
        ):
            # The whole output cap was used: only the prompt count can differ, so the estimate is close.
            assert estimate / actual < Decimal("1.05"), (body, estimate, actual)
    median = statistics.median(ratios)
    print(f"\nestimate/actual over {len(ratios)} calls: median {median:.4f}, " + ", ".join(f"{r:.3f}" for r in ratios))
    assert median >= 1


def test_a_long_stream_renews_its_hold_while_it_runs(client: httpx.Client, billing: StubBilling) -> None:
    """A hold of 1.5 s and a stream of 4 s: the plugin renews it every third of its lifetime (0.5 s), from
    inside the proxy's stream, so the reservation outlives the call (HOLDS_NEVER_OVERSPEND)."""

    def short_hold(request: Recorded) -> tuple[int, dict[str, Any]]:
        status, body = allow(request)
        return status, {**body, "expires_at": (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()}

    billing.reset(answer=short_hold)
    billing.hold_seconds = 1.5
    started = time.monotonic()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "slow", "messages": [{"role": "user", "content": "Tell a long story."}], "stream": True},
        headers={"Authorization": f"Bearer {KEY_ALPHA}"},
    ) as response:
        assert response.status_code == 200
        call_id = response.headers["x-litellm-call-id"]
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert time.monotonic() - started >= 3.5 and len(chunks) >= 8
    renewals = [r for r in billing.renewals() if call_id in r.path]
    assert len(renewals) >= 4, [r.path for r in billing.requests]
    assert all(r.headers["authorization"] == f"Bearer {billing.token}" for r in renewals)
    # A short call renews nothing.
    billing.requests.clear()
    assert chat(client, max_tokens=5).status_code == 200
    assert billing.renewals() == []


def test_a_client_chosen_call_id_is_refused_before_the_model(
    client: httpx.Client, billing: StubBilling, provider: StubProvider
) -> None:
    response = chat(client, headers={"x-litellm-call-id": "reused-by-a-client"})
    assert response.status_code == 400, response.text
    assert "x-litellm-call-id" in response.json()["error"]["message"]
    assert billing.authorizations() == [] and provider.stats() == {"ok": 0, "fail": 0}


def test_a_reused_call_id_answered_409_is_relayed(
    client: httpx.Client, billing: StubBilling, provider: StubProvider
) -> None:
    billing.reset(
        answer=lambda request: (409, {"error": "litellm_call_id was already used", "field": "litellm_call_id"})
    )
    response = chat(client)
    assert response.status_code == 409, response.text
    assert "already used" in response.json()["error"]["message"]
    assert provider.stats() == {"ok": 0, "fail": 0}
