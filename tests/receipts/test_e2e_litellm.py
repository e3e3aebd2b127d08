"""End to end with the real LiteLLM proxy (litellm[proxy]==1.108.7, from bin/bootstrap-litellm).

The service runs the production way (gunicorn, gthread workers) on the
pytest-django test database; the proxy runs with `mock_response` models and its
`generic_api` callback pointed at our ingest endpoint. Calls are made through
the proxy and the test checks, from LiteLLM's own answers (the
`x-litellm-call-id` and `x-litellm-response-cost` headers, or the final usage
chunk of a stream), that each successful call was billed exactly once at
exactly LiteLLM's cost, and that the failed call was not billed.

No network: loopback only, LITELLM_LOCAL_MODEL_COST_MAP=True, and the failing
model points at a port that is bound but never listens (connection refused).
"""

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db.models import Sum

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.selectors import delivered_record
from tests.books import charge_of
from tests.factories import BillingAccountFactory, EndUserAliasFactory
from tests.gunicorn_server import Service
from tests.litellm_proxy import (
    LiteLLMProxy,
    generic_api_env,
    mocked_model,
    provider_model,
    proxy_config,
    running_litellm_proxy,
)
from tests.processes import wait_until
from tests.tokens import auth_header

pytestmark = pytest.mark.e2e

RECEIPT_WAIT_MS = 20_000
DELIVERY_DEADLINE_S = 30.0


@pytest.fixture
def litellm_proxy(live_service: Service, tmp_path: Path) -> Iterator[LiteLLMProxy]:
    """The real LiteLLM proxy with generic_api success and failure callbacks pointed at the service."""
    # Bound but never listening: connecting to it is refused at once, and no one else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refused:
        refused.bind(("127.0.0.1", 0))
        refused_port = refused.getsockname()[1]
        config = proxy_config(
            mocked_model("gpt-4o-mini"),
            provider_model("broken", f"http://127.0.0.1:{refused_port}/v1"),
            generic_api=["success", "failure"],
        )
        env = generic_api_env(live_service.base_url, live_service.token)
        with running_litellm_proxy(config, workdir=tmp_path / "litellm", env=env) as proxy:
            yield proxy


@dataclass
class Call:
    call_id: str
    cost: Decimal  # LiteLLM's, from its response
    end_user: str
    account: BillingAccount
    stream: bool = False


def _header_cost(response: httpx.Response) -> Decimal | None:
    text = response.headers.get("x-litellm-response-cost")
    return Decimal(text) if text not in (None, "", "None") else None


def _chat(
    client: httpx.Client, *, model: str = "gpt-4o-mini", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Say hello."}], **body},
        headers=headers or {},
    )


def _streamed_chat(client: httpx.Client, **body: Any) -> tuple[str, Decimal | None, Decimal | None]:
    """A streaming call: (call id, header cost, cost from the final usage chunk).

    The headers of a stream go out before LiteLLM knows the cost, so LiteLLM
    reports it in the last chunk's `usage.cost` (with stream_options.include_usage).
    """
    payload = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **body,
    }
    usage_cost: Decimal | None = None
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data:") :], parse_float=Decimal)
            usage = chunk.get("usage") or {}
            if usage.get("cost") is not None:
                usage_cost = Decimal(usage["cost"])
        return response.headers["x-litellm-call-id"], _header_cost(response), usage_cost


def _wait_for_delivery(*, records: int, skipped: int) -> None:
    """Wait (bounded) until the service has handled at least `records` records, `skipped` of them skipped."""

    def delivered() -> bool:
        totals = IngestBatch.objects.filter(error="").aggregate(records=Sum("record_count"), skipped=Sum("skipped"))
        return (totals["records"] or 0) >= records and (totals["skipped"] or 0) >= skipped

    wait_until(
        delivered,
        f"LiteLLM to deliver {records} records ({skipped} skipped)",
        deadline_s=DELIVERY_DEADLINE_S,
        detail=lambda: str(list(IngestBatch.objects.values())),
    )


def test_calls_through_the_real_proxy_are_billed_exactly_once(
    live_service: Service, litellm_proxy: LiteLLMProxy
) -> None:
    alice = BillingAccountFactory(name="Alice e2e")
    bob = BillingAccountFactory(name="Bob e2e")
    EndUserAliasFactory(account=alice, end_user="e2e-alice")
    EndUserAliasFactory(account=alice, end_user="e2e-alice-stream")
    EndUserAliasFactory(account=bob, end_user="e2e-bob")
    grant_credits(account=alice, amount_credits=1_000_000, reason="grant", idempotency_key="e2e-alice-start")
    starting = {alice.pk: 1_000_000, bob.pk: 0}

    calls: list[Call] = []
    master = litellm_proxy.auth_headers
    with httpx.Client(base_url=litellm_proxy.base_url, headers=master, timeout=60.0, trust_env=False) as client:
        # 1. Non-streaming, end user from the request's `user`.
        response = _chat(client, user="e2e-alice")
        assert response.status_code == 200, response.text
        cost = _header_cost(response)
        assert cost is not None and cost > 0, response.headers
        calls.append(Call(response.headers["x-litellm-call-id"], cost, "e2e-alice", alice))

        # 2. Streaming.
        call_id, header_cost, usage_cost = _streamed_chat(client, user="e2e-alice-stream")
        if header_cost is not None and usage_cost is not None:
            assert header_cost == usage_cost
        cost = header_cost if header_cost is not None else usage_cost
        assert cost is not None, "LiteLLM reported no cost for the stream (header or final usage chunk)"
        calls.append(Call(call_id, cost, "e2e-alice-stream", alice, stream=True))

        # 3. End user from the x-litellm-end-user-id header only.
        response = _chat(client, headers={"x-litellm-end-user-id": "e2e-bob"})
        assert response.status_code == 200, response.text
        cost = _header_cost(response)
        assert cost is not None, response.headers
        calls.append(Call(response.headers["x-litellm-call-id"], cost, "e2e-bob", bob))

        # 4. A call that fails (connection refused): LiteLLM sends a failure record with cost 0.
        failed = _chat(client, model="broken", user="e2e-alice")
        assert failed.status_code >= 500, failed.text
        failed_call_id = failed.headers["x-litellm-call-id"]
        assert _header_cost(failed) in (None, Decimal(0))

    assert len({c.call_id for c in calls} | {failed_call_id}) == 4

    internal = auth_header("/api/internal/billing/receipts/")
    with httpx.Client(base_url=live_service.base_url, headers=internal, timeout=60.0, trust_env=False) as service:
        for call in calls:
            response = service.get(
                f"/api/internal/billing/receipts/{call.call_id}", params={"wait_ms": RECEIPT_WAIT_MS}
            )
            assert response.status_code == 200, (call, response.text)
            body = json.loads(response.text, parse_float=Decimal)
            assert Decimal(body["cost_usd"]) == call.cost
            assert body["charged_credits"] == charge_of(call.cost)
            assert body["end_user"] == call.end_user
            assert body["account"] == str(call.account.public_id)

        # The failure record is delivered too (it is counted as skipped); then it must have no receipt.
        _wait_for_delivery(records=4, skipped=1)
        response = service.get(f"/api/internal/billing/receipts/{failed_call_id}", params={"wait_ms": 0})
        assert response.status_code == 404, response.text
        assert response.json()["status"] == "unknown"

    assert not ChargeReceipt.objects.filter(litellm_call_id=failed_call_id).exists()
    assert not DeferredUsage.objects.exists(), list(DeferredUsage.objects.values("litellm_call_id", "reason"))
    assert not IngestBatch.objects.exclude(error="").exists()

    # Exactly one receipt (and one usage debit) per successful call, at exactly LiteLLM's cost.
    assert ChargeReceipt.objects.count() == len(calls)
    for call in calls:
        (receipt,) = ChargeReceipt.objects.filter(litellm_call_id=call.call_id)
        assert receipt.cost_usd == call.cost
        assert receipt.charged_credits == charge_of(call.cost)
        assert receipt.account_id == call.account.pk
        assert receipt.end_user == call.end_user
        assert receipt.stream is call.stream
        assert receipt.status == ChargeReceipt.Status.SUCCESS
        assert receipt.source_reference == f"{call.call_id}/0/{call.call_id}"
        assert receipt.ledger_entry.amount_credits == -receipt.charged_credits
        assert receipt.ledger_entry.reason == CreditLedgerEntry.Reason.USAGE
        assert receipt.payer_source == "end_user"  # the proxy's master key is bound as a trusted gateway
        delivered = delivered_record(ingest_batch_id=receipt.ingest_batch_id, position=receipt.batch_position)
        assert json.loads(delivered)["litellm_call_id"] == call.call_id  # the exact record, kept with its delivery

    # Each balance moved by exactly the credits charged to it, and equals its ledger.
    for account in (alice, bob):
        account.refresh_from_db()
        charged = sum(charge_of(c.cost) for c in calls if c.account.pk == account.pk)
        assert charged > 0
        assert account.balance_credits == starting[account.pk] - charged
        ledger = CreditLedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount_credits"))["total"]
        assert account.balance_credits == ledger
