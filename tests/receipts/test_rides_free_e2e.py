"""Nobody rides free, end to end (issue 15): the real LiteLLM 1.108.7 proxy, the real service under gunicorn,
a loopback provider that counts the requests it serves.

- With the billing plugin: a client-chosen `x-litellm-call-id` (any value, "/" included) is refused with 400
  before the model is called, and a model LiteLLM cannot price is refused (402 `unpriced_model`, the
  default BILLING_UNPRICED_CALLS=refuse).
- Without the plugin (the callback alone): two different calls sent with one `x-litellm-call-id` are both
  billed, each as its own receipt.
"""

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from accounts.models import BillingAccount
from accounts.services import grant_credits
from holds.models import CreditHold
from payers.models import ApiKeyBinding
from receipts.models import ChargeReceipt
from tests import processes
from tests.factories import BillingAccountFactory
from tests.gunicorn_server import Service, django_database_url, manage
from tests.litellm_proxy import (
    LiteLLMProxy,
    StubProvider,
    generic_api_env,
    key_hash,
    plugin_env,
    provider_model,
    proxy_config,
    running_litellm_proxy,
)

pytestmark = pytest.mark.e2e

KEY = f"sk-tenant-{secrets.token_hex(8)}"
TEAMS = {KEY: "team-tenant"}
CREDITS = 10_000_000


def unpriced_model(name: str, api_base: str) -> dict:
    """A deployment of a model LiteLLM's price map does not know (a fine-tune, say)."""
    params = {"model": "openai/acme-finetune-7b", "api_key": "sk-fake", "num_retries": 0, "api_base": api_base}
    return {"model_name": name, "litellm_params": params}


def bind() -> BillingAccount:
    account = BillingAccountFactory(name="Tenant e2e")
    ApiKeyBinding.objects.create(key_hash=key_hash(KEY), account=account)
    grant_credits(account=account, amount_credits=CREDITS, reason="grant", idempotency_key="e2e-tenant")
    return account


def chat(client: httpx.Client, *, model: str = "gpt-4o-mini", call_id: str | None = None, words: str = "hello"):
    headers = {"Authorization": f"Bearer {KEY}"}
    if call_id is not None:
        headers["x-litellm-call-id"] = call_id
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": words}], "max_tokens": 50},
        headers=headers,
    )


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


@pytest.fixture
def proxy_with_plugin(live_service: Service, provider: StubProvider, tmp_path: Path) -> Iterator[LiteLLMProxy]:
    config = proxy_config(
        provider_model("gpt-4o-mini", provider.api_base),
        unpriced_model("finetune", provider.api_base),
        plugin=True,
        generic_api=["success"],
    )
    env = {
        **plugin_env(
            live_service.base_url, os.environ["BILLING_AUTHORIZE_TOKEN"], on_unavailable="fail_closed", timeout_s=5
        ),
        **generic_api_env(live_service.base_url, live_service.token),
    }
    with running_litellm_proxy(config, workdir=tmp_path / "litellm", env=env, teams=TEAMS) as running:
        yield running


def test_the_plugin_refuses_chosen_call_ids_and_unpriced_models(
    live_service: Service, proxy_with_plugin: LiteLLMProxy, provider: StubProvider
) -> None:
    account = bind()
    with httpx.Client(base_url=proxy_with_plugin.base_url, timeout=120.0, trust_env=False) as client:
        provider.reset()
        for chosen in ("my-own-id", "tenant/with/slashes", "a" * 200):
            refused = chat(client, call_id=chosen)
            assert refused.status_code == 400, refused.text
            assert "x-litellm-call-id" in error_of(refused)["message"]
        assert provider.stats() == {"ok": 0, "fail": 0}

        unpriced = chat(client, model="finetune")
        assert unpriced.status_code == 402, unpriced.text
        detail = error_of(unpriced)["provider_specific_fields"]
        assert detail["reason"] == "unpriced_model" and "has no known price" in detail["message"]
        assert provider.stats() == {"ok": 0, "fail": 0}
        assert not CreditHold.objects.filter(account=account).exists()

        # A call the proxy names itself goes through and is billed.
        allowed = chat(client)
        assert allowed.status_code == 200, allowed.text
        call_id = allowed.headers["x-litellm-call-id"]
        processes.wait_until(
            lambda: ChargeReceipt.objects.filter(litellm_call_id=call_id).exists(), "the receipt", deadline_s=45.0
        )
    assert provider.stats() == {"ok": 1, "fail": 0}


@pytest.fixture
def proxy_without_plugin(live_service: Service, provider: StubProvider, tmp_path: Path) -> Iterator[LiteLLMProxy]:
    config = proxy_config(provider_model("gpt-4o-mini", provider.api_base), generic_api=["success"])
    env = generic_api_env(live_service.base_url, live_service.token)
    with running_litellm_proxy(config, workdir=tmp_path / "litellm-bare", env=env, teams=TEAMS) as running:
        yield running


def test_two_calls_with_one_chosen_call_id_are_both_billed(
    live_service: Service, proxy_without_plugin: LiteLLMProxy, provider: StubProvider
) -> None:
    account = bind()
    chosen = f"chosen-{secrets.token_hex(4)}"
    with httpx.Client(base_url=proxy_without_plugin.base_url, timeout=120.0, trust_env=False) as client:
        first = chat(client, call_id=chosen, words="a short question")
        second = chat(client, call_id=chosen, words="a much longer question that uses many more prompt tokens")
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.headers["x-litellm-call-id"] == second.headers["x-litellm-call-id"] == chosen
    processes.wait_until(
        lambda: ChargeReceipt.objects.filter(litellm_call_id=chosen).count() == 2,
        "both receipts",
        deadline_s=45.0,
        detail=lambda: str(list(ChargeReceipt.objects.filter(litellm_call_id=chosen).values("source_reference"))),
    )
    receipts = ChargeReceipt.objects.filter(litellm_call_id=chosen)
    assert all(r.account_id == account.pk and r.charged_credits > 0 for r in receipts)
    account.refresh_from_db()
    assert account.balance_credits == CREDITS - sum(r.charged_credits for r in receipts)
    done = manage(django_database_url(), "reconcile", "--books-only")
    assert done.returncode == 0, done.stdout + done.stderr
