"""Can they pay, end to end: the real LiteLLM 1.108.7 proxy with the billing plugin loaded from its config,
the real service under gunicorn on the test database, and a loopback stub provider that counts requests.

The plugin's BILLING_URL is the service's authorize API; LiteLLM's generic_api callback delivers the
usage records to the service's ingest endpoint, whose receipts settle the holds. Keys come from a
`custom_auth` function (LiteLLM logs each key's sha256), each bound to its own account.
"""

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def bind(key: str, name: str, credits: int = 0) -> BillingAccount:
    account = BillingAccountFactory(name=name)
    ApiKeyBinding.objects.create(key_hash=key_hash(key), account=account)
    if credits:
        grant_credits(account=account, amount_credits=credits, reason="grant", idempotency_key=f"e2e-{name}")
    return account


def chat(client: httpx.Client, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        headers={"Authorization": f"Bearer {key}"},
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Re-check the database until `condition` holds (bounded): the callback lands asynchronously."""
    holds = CreditHold.objects.values("litellm_call_id", "status", "held_credits", "receipt_id")
    processes.wait_until(condition, what, deadline_s=SETTLE_DEADLINE_S, detail=lambda: str(list(holds.all())))


def books_tie(service_db: str) -> None:
    done = manage(service_db, "reconcile", "--books-only")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def proxy(live_service: Service, provider: StubProvider, tmp_path: Path) -> Iterator[LiteLLMProxy]:
    config = proxy_config(
        provider_model("gpt-4o-mini", provider.api_base),
        provider_model("broken", provider.failing_api_base),
        plugin=True,
        generic_api=["success", "failure"],
    )
    env = {
        **plugin_env(
            live_service.base_url, os.environ["BILLING_AUTHORIZE_TOKEN"], on_unavailable="fail_closed", timeout_s=5
        ),
        **generic_api_env(live_service.base_url, live_service.token),
    }
    with running_litellm_proxy(config, workdir=tmp_path / "litellm", env=env, teams=TEAMS) as running:
        yield running


def test_holds_through_the_real_proxy(live_service: Service, proxy: LiteLLMProxy, provider: StubProvider) -> None:
    service_db = django_database_url()
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
