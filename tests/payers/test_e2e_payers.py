"""Who pays, end to end: the real LiteLLM 1.108.7 proxy, its generic_api callback, our service under gunicorn.

The proxy runs without its database: a `general_settings: custom_auth` function (written into the
proxy's workdir) accepts four test keys and returns a `UserAPIKeyAuth` with the key and its team,
so the callback carries `metadata.user_api_key_hash` (sha256 hex of the key) and
`user_api_key_team_id`. Models answer with `mock_response`. Bindings are made through the
service's own API, as the README tells an operator to.

1. Each key's calls land on its key's account; a request naming the other tenant's alias in `user`
   or in the `x-litellm-end-user-id` header changes nothing; an unbound key of a bound team bills
   the team's account.
2. A run: registered through the runs API, called as `user="run-42/0"` with a gateway key, one
   call made with `"no-log": true` (LiteLLM skips the generic_api callback for it but still logs
   its spend), then `POST .../runs/run-42/reconcile` against the spend-log stand-in (fed the rows
   LiteLLM logged for these calls) backfills exactly that call; the books tie. A tenant key naming
   run-42 is billed to the tenant.
"""

import io
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.db.models import Sum

from accounts.models import BillingAccount, CreditLedgerEntry
from payers.models import PayerSource
from receipts.models import ChargeReceipt, IngestBatch
from tests.books import charge_of
from tests.factories import BillingAccountFactory
from tests.gunicorn_server import Service, django_database_url, running_service
from tests.litellm_proxy import (
    LiteLLMProxy,
    generic_api_env,
    key_hash,
    mocked_model,
    proxy_config,
    running_litellm_proxy,
)
from tests.litellm_standin import MASTER_KEY, SpendLogStandIn, spend_log_row

pytestmark = pytest.mark.e2e

RECEIPT_WAIT_MS = 20_000
KEY_A = f"sk-tenant-a-{secrets.token_hex(8)}"
KEY_B = f"sk-tenant-b-{secrets.token_hex(8)}"
KEY_TEAM_ONLY = f"sk-team-t-{secrets.token_hex(8)}"
KEY_GATEWAY = f"sk-gateway-{secrets.token_hex(8)}"
TEAMS = {KEY_A: "team-a", KEY_B: "team-b", KEY_TEAM_ONLY: "team-t", KEY_GATEWAY: "team-gateway"}


@pytest.fixture
def standin() -> Iterator[SpendLogStandIn]:
    with SpendLogStandIn() as server:
        yield server


@pytest.fixture
def service(transactional_db: None, tmp_path: Path, ingest_token: str, standin: SpendLogStandIn) -> Iterator[Service]:
    """gunicorn on the test database, reading LiteLLM's spend logs from the stand-in."""
    with running_service(
        database=django_database_url(),
        log_dir=tmp_path,
        token=ingest_token,
        LITELLM_BASE_URL=standin.url,
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_RETRIES="0",
    ) as running:
        yield running


@pytest.fixture
def proxy(service: Service, tmp_path: Path) -> Iterator[LiteLLMProxy]:
    config = proxy_config(mocked_model(), generic_api=["success"])
    env = generic_api_env(service.base_url, service.token)
    with running_litellm_proxy(config, workdir=tmp_path / "litellm", env=env, teams=TEAMS) as running:
        yield running


@dataclass
class Call:
    key: str
    call_id: str
    request_id: str
    cost: Decimal
    end_user: str
    started: datetime


def chat(proxy: LiteLLMProxy, key: str, *, headers: dict[str, str] | None = None, **body: Any) -> Call:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], **body}
    started = datetime.now(UTC)
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=60.0,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    cost = Decimal(response.headers["x-litellm-response-cost"])
    assert cost > 0
    end_user = (headers or {}).get("x-litellm-end-user-id") or body.get("user") or ""
    return Call(key, response.headers["x-litellm-call-id"], response.json()["id"], cost, end_user, started)


def bind(client: httpx.Client, **body: Any) -> None:
    response = client.post("/api/internal/billing/payer-bindings", json=body)
    assert response.status_code == 201, response.text


def receipt_of(client: httpx.Client, call: Call) -> dict[str, Any]:
    response = client.get(f"/api/internal/billing/receipts/{call.call_id}", params={"wait_ms": RECEIPT_WAIT_MS})
    assert response.status_code == 200, (call, response.text)
    return json.loads(response.text, parse_float=Decimal)


def test_each_key_pays_for_itself_whatever_end_user_it_names(service: Service, proxy: LiteLLMProxy) -> None:
    tenant_a, tenant_b, team_t = (BillingAccountFactory(name=n) for n in ("Tenant A", "Tenant B", "Team T"))
    with service.client() as api:
        bind(api, kind="key", api_key=KEY_A, account=str(tenant_a.public_id))  # the raw key; only its hash is kept
        bind(api, kind="key", value=key_hash(KEY_B), account=str(tenant_b.public_id))
        bind(api, kind="team", value="team-t", account=str(team_t.public_id))
        bind(api, kind="end_user", value="alias-of-b", account=str(tenant_b.public_id))

        calls = {
            "a": chat(proxy, KEY_A),
            "a-names-b-in-user": chat(proxy, KEY_A, user="alias-of-b"),
            "a-names-b-in-header": chat(proxy, KEY_A, headers={"x-litellm-end-user-id": "alias-of-b"}),
            "b": chat(proxy, KEY_B),
            "team-key-names-b": chat(proxy, KEY_TEAM_ONLY, user="alias-of-b"),
        }
        receipts = {name: receipt_of(api, call) for name, call in calls.items()}

    expected = {
        "a": tenant_a,
        "a-names-b-in-user": tenant_a,
        "a-names-b-in-header": tenant_a,
        "b": tenant_b,
        "team-key-names-b": team_t,
    }
    for name, account in expected.items():
        receipt, call = receipts[name], calls[name]
        assert receipt["account"] == str(account.public_id), name
        assert Decimal(receipt["cost_usd"]) == call.cost
        stored = ChargeReceipt.objects.get(litellm_call_id=call.call_id)
        assert stored.payer_source == (PayerSource.TEAM if name.startswith("team") else PayerSource.KEY), name
        assert stored.api_key_hash == key_hash(call.key)
        assert stored.team_id == TEAMS[call.key]
        assert stored.end_user == call.end_user  # kept for attribution, never for paying
    # Tenant B paid for its own call only.
    tenant_b.refresh_from_db()
    assert tenant_b.balance_credits == -charge_of(calls["b"].cost)
    assert ChargeReceipt.objects.filter(account=tenant_b).count() == 1


def logged_row(call: Call) -> dict[str, Any]:
    """The LiteLLM_SpendLogs row LiteLLM writes for a proxy call (what its spend-log API serves)."""
    return spend_log_row(
        litellm_call_id=call.call_id,
        request_id=call.request_id,
        spend=call.cost,
        end_user=call.end_user,
        start_time=call.started,
        api_key=key_hash(call.key),
        team_id=TEAMS[call.key],
    )


def test_a_run_with_a_dropped_callback_is_backfilled_by_its_reconcile(
    service: Service, proxy: LiteLLMProxy, standin: SpendLogStandIn, settings
) -> None:
    operator, owner, tenant = (BillingAccountFactory(name=n) for n in ("Operator", "Run owner", "Tenant A"))
    with service.client() as api:
        bind(api, kind="key", api_key=KEY_GATEWAY, account=str(operator.public_id), gateway=True)
        bind(api, kind="key", api_key=KEY_A, account=str(tenant.public_id))
        registered = api.post("/api/internal/billing/runs", json={"run_id": "run-42", "account": str(owner.public_id)})
        assert registered.status_code == 201, registered.text

        dropped = chat(proxy, KEY_GATEWAY, user="run-42/0", **{"no-log": True})  # no callback for this one
        delivered = [chat(proxy, KEY_GATEWAY, user="run-42/0") for _ in range(2)]
        foreign = chat(proxy, KEY_A, user="run-42/0")  # a tenant naming the run
        for call in delivered:
            assert receipt_of(api, call)["account"] == str(owner.public_id)
        assert receipt_of(api, foreign)["account"] == str(tenant.public_id)
        # Every delivery LiteLLM made has been handled, and the dropped call is not among them.
        assert IngestBatch.objects.aggregate(n=Sum("record_count"))["n"] == 3
        assert not ChargeReceipt.objects.filter(litellm_call_id=dropped.call_id).exists()

        standin.add(*(logged_row(c) for c in (dropped, *delivered, foreign)))
        response = api.post("/api/internal/billing/runs/run-42/reconcile", json={})
        assert response.status_code == 200, response.text
        body = response.json()

    charged = sum(charge_of(c.cost) for c in (dropped, *delivered))
    assert body["backfilled"] == 1
    assert body["receipts"] == 3
    assert body["charged_credits"] == charged
    assert body["receipts_billed_elsewhere"] == 1
    assert body["discrepancies"] == []
    backfilled = ChargeReceipt.objects.get(litellm_call_id=dropped.call_id)
    assert (backfilled.account_id, backfilled.payer_source) == (owner.pk, PayerSource.RUN)
    assert backfilled.cost_usd == dropped.cost
    assert backfilled.spend_log_request_id == dropped.request_id
    foreign_receipt = ChargeReceipt.objects.get(litellm_call_id=foreign.call_id)
    assert (foreign_receipt.account_id, foreign_receipt.payer_source) == (tenant.pk, PayerSource.KEY)
    for account, expected in ((owner, -charged), (tenant, -charge_of(foreign.cost)), (operator, 0)):
        account.refresh_from_db()
        assert account.balance_credits == expected
        ledger = CreditLedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount_credits"))["s"] or 0
        assert ledger == expected

    # The command agrees (nothing left to backfill), and the books tie.
    settings.LITELLM_BASE_URL = standin.url
    settings.LITELLM_MASTER_KEY = MASTER_KEY
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--run", "run-42", "--json", stdout=out)
    assert exit_info.value.code == 0, out.getvalue()
    assert json.loads(out.getvalue())["backfilled"] == 0
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    until = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--books-only", "--since", since, "--until", until, "--json", stdout=out)
    assert exit_info.value.code == 0, out.getvalue()
    assert ChargeReceipt.objects.count() == 4
    assert BillingAccount.objects.filter(pk=owner.pk, balance_credits=-charged).exists()
    assert uuid.UUID(body["account"]) == owner.public_id
