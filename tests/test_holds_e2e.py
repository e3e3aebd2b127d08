"""Can they pay, end to end: the real LiteLLM 1.108.7 proxy with the billing plugin loaded from its config,
the real service under gunicorn on the test database, and a loopback stub provider that counts requests.

The plugin's BILLING_URL is the service's authorize API; LiteLLM's generic_api callback delivers the
usage records to the service's ingest endpoint, whose receipts settle the holds. Keys come from a
`custom_auth` function (LiteLLM logs each key's sha256), each bound to its own account.
"""

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.db import connection

from accounts.models import ApiKeyBinding, BillingAccount, CreditHold
from accounts.services import grant_credits
from receipts.models import ChargeReceipt
from tests.factories import BillingAccountFactory
from tests.gunicorn_server import Service, database_url, manage
from tests.litellm_proxy import PLUGIN_CALLBACK, StubProvider, running_litellm_proxy, running_stub_provider

pytestmark = pytest.mark.e2e

KEY_BROKE = f"sk-broke-{secrets.token_hex(8)}"
KEY_RICH = f"sk-rich-{secrets.token_hex(8)}"
KEY_FIVE = f"sk-five-{secrets.token_hex(8)}"
TEAMS = {KEY_BROKE: "team-broke", KEY_RICH: "team-rich", KEY_FIVE: "team-five"}
CONCURRENT_CALLS = 50
FITS = 5
SETTLE_DEADLINE_S = 45.0
# The same body every time, so every call has the same worst-case estimate; the stub provider answers
# min(max_tokens, 200) completion tokens, so the real cost is close to (never above) the estimate.
MESSAGES = [{"role": "user", "content": "Say hello to the billing service."}]
MAX_TOKENS = 200

CUSTOM_AUTH = """
import json
import os

from litellm.proxy._types import UserAPIKeyAuth

TEAMS = json.loads(os.environ["TEST_PLUGIN_TEAMS"])


async def user_api_key_auth(request, api_key: str) -> UserAPIKeyAuth:
    if api_key not in TEAMS:
        raise Exception("unknown key")
    return UserAPIKeyAuth(api_key=api_key, team_id=TEAMS[api_key])
"""


def bind(key: str, name: str, credits: int = 0) -> BillingAccount:
    account = BillingAccountFactory(name=name)
    ApiKeyBinding.objects.create(key_hash=hashlib.sha256(key.encode()).hexdigest(), account=account)
    if credits:
        grant_credits(account=account, amount_credits=credits, reason="grant", idempotency_key=f"e2e-{name}")
    return account


def chat(client: httpx.Client, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        headers={"Authorization": f"Bearer {key}"},
    )


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = SETTLE_DEADLINE_S) -> None:
    """Re-check the database until `condition` holds (bounded): the callback lands asynchronously."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            holds = list(CreditHold.objects.values("litellm_call_id", "status", "held_credits", "receipt_id"))
            pytest.fail(f"timed out waiting for {what}: {holds}")
        time.sleep(0.1)


def books_tie(service_db: str) -> None:
    done = manage(service_db, "reconcile", "--books-only")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def provider(tmp_path: Any) -> Iterator[StubProvider]:
    with running_stub_provider(workdir=tmp_path / "provider") as stub:
        yield stub


@pytest.fixture
def proxy(live_service: Service, provider: StubProvider, tmp_path: Any) -> Iterator[Any]:
    deployment = {"model": "openai/gpt-4o-mini", "api_key": "sk-fake", "num_retries": 0}
    config = {
        "model_list": [
            {"model_name": "gpt-4o-mini", "litellm_params": {**deployment, "api_base": provider.api_base}},
            {"model_name": "broken", "litellm_params": {**deployment, "api_base": provider.failing_api_base}},
        ],
        "litellm_settings": {
            "callbacks": [PLUGIN_CALLBACK],
            "success_callback": ["generic_api"],
            "failure_callback": ["generic_api"],
            "num_retries": 0,
        },
        "router_settings": {"num_retries": 0},
        "general_settings": {"custom_auth": "custom_auth.user_api_key_auth"},
    }
    env = {
        "BILLING_URL": live_service.base_url,
        "BILLING_INGEST_TOKEN": live_service.token,
        "BILLING_PLUGIN_TIMEOUT_SECONDS": "5",
        "BILLING_PLUGIN_ON_UNAVAILABLE": "fail_closed",
        "GENERIC_LOGGER_ENDPOINT": f"{live_service.base_url}/api/internal/billing/ingest",
        "GENERIC_LOGGER_HEADERS": f"Authorization=Bearer {live_service.token}",
        "DEFAULT_FLUSH_INTERVAL_SECONDS": "1",
        "TEST_PLUGIN_TEAMS": json.dumps(TEAMS),
    }
    workdir = tmp_path / "litellm"
    with running_litellm_proxy(config, workdir=workdir, env=env, files={"custom_auth.py": CUSTOM_AUTH}) as running:
        yield running


def test_holds_through_the_real_proxy(live_service: Service, proxy: Any, provider: StubProvider) -> None:
    service_db = database_url(connection.settings_dict)
    broke = bind(KEY_BROKE, "Broke e2e")
    rich = bind(KEY_RICH, "Rich e2e", credits=10_000_000)

    with httpx.Client(base_url=proxy.base_url, timeout=120.0, trust_env=False) as client:
        # 1. No credits: 402 from our plugin, and the model is never called.
        provider.reset()
        refused = chat(client, KEY_BROKE)
        assert refused.status_code == 402, refused.text
        detail = refused.json()["error"]["provider_specific_fields"]
        assert detail["allowed"] is False and detail["reason"] == "insufficient_credits"
        assert detail["available_credits"] == 0 and detail["required_credits"] > 0
        assert provider.stats() == {"ok": 0, "fail": 0}
        assert not CreditHold.objects.filter(account=broke).exists()

        # 2. With credits: the call goes through; its hold settles when LiteLLM's callback lands.
        allowed = chat(client, KEY_RICH)
        assert allowed.status_code == 200, allowed.text
        assert provider.stats() == {"ok": 1, "fail": 0}
        call_id = allowed.headers["x-litellm-call-id"]
        hold = CreditHold.objects.get(litellm_call_id=call_id)
        assert hold.account == rich
        wait_until(
            lambda: CreditHold.objects.filter(litellm_call_id=call_id, status="settled").exists(), "the settlement"
        )
        hold.refresh_from_db()
        receipt = ChargeReceipt.objects.get(litellm_call_id=call_id)
        assert hold.receipt == receipt
        assert 0 < receipt.charged_credits <= hold.held_credits  # the estimate is a worst case
        rich.refresh_from_db()
        assert rich.balance_credits == 10_000_000 - receipt.charged_credits
        per_call = hold.held_credits

        # 3. A call whose provider fails: the plugin's failure hook releases its hold.
        failed = chat(client, KEY_RICH, model="broken")
        assert failed.status_code >= 500, failed.text
        failed_id = failed.headers["x-litellm-call-id"]
        wait_until(
            lambda: CreditHold.objects.filter(litellm_call_id=failed_id, status="released").exists(), "the release"
        )
        assert not ChargeReceipt.objects.filter(litellm_call_id=failed_id).exists()

        # 4. Fifty concurrent calls from an account whose balance covers exactly five of these estimates.
        five = bind(KEY_FIVE, "Five e2e", credits=FITS * per_call)
        # After five settle, balance − 0 holds = 5 × (estimate − cost) < one estimate: no sixth call fits.
        assert FITS * (per_call - receipt.charged_credits) < per_call
        provider.reset()
        with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
            answers = list(pool.map(lambda _: chat(client, KEY_FIVE), range(CONCURRENT_CALLS)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * FITS + [402] * (CONCURRENT_CALLS - FITS), [
            r.text for r in answers if r.status_code >= 500
        ]
        assert provider.stats() == {"ok": FITS, "fail": 0}
        wait_until(
            lambda: CreditHold.objects.filter(account=five, status="settled").count() == FITS, "five settlements"
        )
        assert CreditHold.objects.filter(account=five).count() == FITS
        five.refresh_from_db()
        charged = sum(ChargeReceipt.objects.filter(account=five).values_list("charged_credits", flat=True))
        assert five.balance_credits == FITS * per_call - charged >= 0  # never overspent

    books_tie(service_db)
