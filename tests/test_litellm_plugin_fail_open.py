"""The billing plugin with BILLING_PLUGIN_ON_UNAVAILABLE=fail_open, and the master key.

Its own proxy (the fail mode is read at start). Without custom_auth, the master key authenticates:
LiteLLM logs it as the literal `litellm_proxy_master_key`, and the plugin must send the same.
"""

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.litellm_proxy import (
    PLUGIN_CALLBACK,
    LiteLLMProxy,
    StubProvider,
    running_litellm_proxy,
    running_stub_provider,
)
from tests.stub_billing import StubBilling

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def billing() -> Iterator[StubBilling]:
    stub = StubBilling(token=f"tok-{secrets.token_urlsafe(24)}").start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProvider]:
    with running_stub_provider(workdir=tmp_path_factory.mktemp("provider")) as stub:
        yield stub


@pytest.fixture(scope="module")
def proxy(
    billing: StubBilling, provider: StubProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiteLLMProxy]:
    config = {
        "model_list": [
            {
                "model_name": "gpt-4o-mini",
                "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-fake", "api_base": provider.api_base},
            }
        ],
        "litellm_settings": {"callbacks": [PLUGIN_CALLBACK], "num_retries": 0},
    }
    env = {
        "BILLING_URL": billing.base_url,
        "BILLING_INGEST_TOKEN": billing.token,
        "BILLING_PLUGIN_TIMEOUT_SECONDS": "0.5",
        "BILLING_PLUGIN_ON_UNAVAILABLE": "fail_open",
    }
    with running_litellm_proxy(config, workdir=tmp_path_factory.mktemp("litellm"), env=env) as running:
        yield running


def chat(proxy: LiteLLMProxy) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        headers=proxy.auth_headers,
        timeout=60.0,
        trust_env=False,
    )


def test_master_key_is_sent_as_litellm_logs_it(proxy: LiteLLMProxy, billing: StubBilling) -> None:
    billing.reset()
    response = chat(proxy)

    assert response.status_code == 200, response.text
    (request,) = billing.authorizations()
    assert request.body["key_hash"] == "litellm_proxy_master_key"
    assert request.body["team_id"] is None
    assert request.body["litellm_call_id"] == response.headers["x-litellm-call-id"]


def test_fail_open_allows_calls_while_the_service_is_down_and_counts_them(
    proxy: LiteLLMProxy, billing: StubBilling, provider: StubProvider
) -> None:
    provider.reset()
    billing.reset(answer=lambda request: (502, {"error": "bad gateway"}))
    first = chat(proxy)
    billing.stop()  # now nothing listens: connection refused
    second = chat(proxy)

    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert provider.stats() == {"ok": 2, "fail": 0}
    log = proxy.log_text()
    for total, call in enumerate((first, second), start=1):
        call_id = call.headers["x-litellm-call-id"]
        assert f"call {call_id} allowed without a hold (fail_open, unavailable_allowed_total={total})" in log, log[
            -3000:
        ]
