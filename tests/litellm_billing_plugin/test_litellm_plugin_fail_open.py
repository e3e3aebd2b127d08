"""The billing plugin with BILLING_PLUGIN_ON_UNAVAILABLE=fail_open, and the master key.

Its own proxy (the fail mode is read at start). Without custom_auth, the master key authenticates:
LiteLLM logs it as the literal `litellm_proxy_master_key`, and the plugin must send the same.
"""

from collections.abc import Iterator

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
from tests.stub_billing import StubBilling

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxy(
    billing: StubBilling, provider: StubProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiteLLMProxy]:
    config = proxy_config(provider_model("gpt-4o-mini", provider.api_base), plugin=True)
    env = plugin_env(billing.base_url, billing.token, on_unavailable="fail_open", timeout_s=0.5)
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
