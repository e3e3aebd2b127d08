"""Can they pay: the authorize contract, idempotency, release, settlement with the receipt, expiry (issue 11).

Real PostgreSQL through pytest-django; the API through the internal token like the LiteLLM plugin.
"""

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from holds.models import CreditHold
from holds.selectors import held_credits, open_holds
from holds.services import authorize_call, expire_holds
from payers.models import ApiKeyBinding
from receipts.models import ChargeReceipt, DeferredUsage
from tests.books import available_credits, charge_of
from tests.factories import ApiKeyBindingFactory, BillingAccountFactory, UserFactory, litellm_record, to_body

AUTHORIZE = "/api/internal/billing/authorize"
INGEST = "/api/internal/billing/ingest"
Status = CreditHold.Status


def fund(account: BillingAccount, credits: int) -> None:
    grant_credits(account=account, amount_credits=credits, reason="grant", idempotency_key=f"fund-{uuid.uuid4()}")
    account.refresh_from_db()


@pytest.fixture
def key(db: None) -> ApiKeyBinding:
    """A funded account paying by its API key (10,000 credits)."""
    binding = ApiKeyBindingFactory(account=BillingAccountFactory(name="Holder Inc."))
    fund(binding.account, 10_000)
    return binding


def body(key: ApiKeyBinding | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "litellm_call_id": str(uuid.uuid4()),
        "key_hash": key.key_hash if key else "unbound-key",
        "team_id": None,
        "end_user": None,
        "run_id": None,
        "model": "gpt-4o-mini",
        "estimated_cost_usd": "0.001",
        **fields,
    }


def authorize(client: APIClient, payload: dict[str, Any] | str) -> Any:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post(AUTHORIZE, text, content_type="application/json")


def ingest(client: APIClient, records: list[dict[str, Any]]) -> None:
    response = client.post(INGEST, to_body(records), content_type="application/json")
    assert response.status_code == 200, response.content


def record_for(key: ApiKeyBinding, call_id: str, cost: Decimal) -> dict[str, Any]:
    record = litellm_record(call_id=call_id, cost=cost, end_user="")
    record["metadata"]["user_api_key_hash"] = key.key_hash
    return record


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the contract -----------------------------------------------------------------------------------


def test_allowed_call_holds_its_estimate_rounded_up(internal_client: APIClient, key: ApiKeyBinding) -> None:
    before = metric("billing_authorize_decisions_total", result="allowed")
    payload = body(key, estimated_cost_usd="0.0012345")
    response = authorize(internal_client, payload)

    assert response.status_code == 200, response.content
    answer = response.json()
    held = charge_of(Decimal("0.0012345"))
    assert held == 1235  # 1234.5 credits, rounded up by the one rounding function
    hold = CreditHold.objects.get()
    assert answer == {
        "allowed": True,
        "hold_id": str(hold.hold_id),
        "held_credits": held,
        "available_credits": 10_000 - held,
        "expires_at": answer["expires_at"],
    }
    assert hold.account == key.account and hold.status == Status.HELD and hold.payer_source == "key"
    assert hold.litellm_call_id == payload["litellm_call_id"]
    assert hold.estimated_cost_usd == Decimal("0.0012345")
    ttl = (hold.expires_at - hold.created_at).total_seconds()
    assert ttl == 600
    key.account.refresh_from_db()
    assert key.account.balance_credits == 10_000  # a hold never moves the balance
    assert not CreditLedgerEntry.objects.exclude(reason="grant").exists()  # nor appears as ledger money
    assert available_credits(account=key.account) == 10_000 - held
    assert metric("billing_authorize_decisions_total", result="allowed") == before + 1


def test_a_json_number_estimate_is_read_exactly(internal_client: APIClient, key: ApiKeyBinding) -> None:
    # As a float 0.0012345 * 1e6 is 1234.4999999999998; read as Decimal it is 1234.5 → 1235.
    response = authorize(internal_client, json.dumps(body(key)).replace('"0.001"', "0.0012345"))

    assert response.status_code == 200, response.content
    assert response.json()["held_credits"] == 1235
    assert CreditHold.objects.get().estimated_cost_usd == Decimal("0.0012345")


def test_holds_add_up_and_the_one_that_does_not_fit_is_402(internal_client: APIClient, key: ApiKeyBinding) -> None:
    assert authorize(internal_client, body(key, estimated_cost_usd="0.006")).status_code == 200
    response = authorize(internal_client, body(key, estimated_cost_usd="0.0045"))

    assert response.status_code == 402, response.content
    assert response.json() == {
        "allowed": False,
        "reason": "insufficient_credits",
        "message": "This account's prepaid credit is too low for this call: $0.004 available, "
        "this call needs up to $0.0045.",
        "available_credits": 4_000,
        "required_credits": 4_500,
    }
    assert CreditHold.objects.count() == 1  # a refusal writes nothing
    assert authorize(internal_client, body(key, estimated_cost_usd="0.004")).status_code == 200  # exactly fits
    assert available_credits(account=key.account) == 0


def test_zero_credits_is_refused(internal_client: APIClient, db: None) -> None:
    broke = ApiKeyBindingFactory()
    response = authorize(internal_client, body(broke, estimated_cost_usd="0.000001"))

    assert response.status_code == 402
    assert response.json()["available_credits"] == 0 and response.json()["required_credits"] == 1
    assert not CreditHold.objects.exists()


def test_payer_comes_from_the_one_resolver(internal_client: APIClient, account: BillingAccount) -> None:
    """The `account` fixture: acct-alice is an alias of a gateway key (the master key), so it decides the payer."""
    fund(account, 5_000)
    response = authorize(internal_client, body(None, key_hash="litellm_proxy_master_key", end_user="acct-alice"))
    assert response.status_code == 200, response.content
    hold = CreditHold.objects.get()
    assert hold.account == account and hold.payer_source == "end_user"

    # An ordinary key naming the same end user pays itself (SERVER_DERIVES_IDENTITY): unknown here.
    response = authorize(internal_client, body(None, key_hash="some-other-key", end_user="acct-alice"))
    assert response.status_code == 402
    assert response.json()["reason"] == "unknown_payer"


def test_unknown_payer_is_refused_by_default(internal_client: APIClient, db: None) -> None:
    response = authorize(internal_client, body(None, estimated_cost_usd="0.002"))

    assert response.status_code == 402
    assert response.json() == {
        "allowed": False,
        "reason": "unknown_payer",
        "message": "No billing account pays for this API key yet: the operator must bind it to an account.",
        "required_credits": 2_000,
    }
    assert not CreditHold.objects.exists()


def test_unknown_payer_may_be_let_through_without_a_hold(internal_client: APIClient, db: None, settings: Any) -> None:
    settings.BILLING_AUTHORIZE_UNKNOWN_PAYER = "allow"
    response = authorize(internal_client, body(None))

    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "hold_id": "",
        "held_credits": 0,
        "available_credits": None,
        "expires_at": None,
    }
    assert not CreditHold.objects.exists()


def test_same_call_same_estimate_is_the_same_answer(internal_client: APIClient, key: ApiKeyBinding) -> None:
    payload = body(key, estimated_cost_usd="0.0020")
    first = authorize(internal_client, payload)
    # The same amount written another way (a JSON number), sent again.
    again = authorize(internal_client, json.dumps(payload).replace('"0.0020"', "0.002"))

    assert first.status_code == again.status_code == 200
    assert again.json()["hold_id"] == first.json()["hold_id"]
    assert again.json()["held_credits"] == first.json()["held_credits"] == 2_000
    assert again.json()["available_credits"] == 8_000  # not held twice
    assert CreditHold.objects.count() == 1


def test_same_call_another_estimate_is_409(internal_client: APIClient, key: ApiKeyBinding) -> None:
    payload = body(key, estimated_cost_usd="0.002")
    assert authorize(internal_client, payload).status_code == 200
    response = authorize(internal_client, {**payload, "estimated_cost_usd": "0.003"})

    assert response.status_code == 409
    assert response.json()["field"] == "estimated_cost_usd"
    hold = CreditHold.objects.get()
    assert hold.held_credits == 2_000 and hold.estimated_cost_usd == Decimal("0.002")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"estimated_cost_usd": "-0.01"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": -1}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "abc"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "NaN"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "Infinity"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": True}, "estimated_cost_usd"),
        ({"estimated_cost_usd": None}, "estimated_cost_usd"),
        ({"estimated_cost_usd": ["0.1"]}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "1e400"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "0.0000000000000000000000000000001"}, "estimated_cost_usd"),
        ({"litellm_call_id": ""}, "litellm_call_id"),
        ({"litellm_call_id": None}, "litellm_call_id"),
        ({"litellm_call_id": 42}, "litellm_call_id"),
        ({"litellm_call_id": "x" * 256}, "litellm_call_id"),
        ({"litellm_call_id": "bad\x00id"}, "litellm_call_id"),
        ({"key_hash": {"a": 1}}, "key_hash"),
        ({"end_user": "x" * 5000}, "end_user"),
        # Longer than the hold keeps (255): a 400 naming it, not a database error.
        ({"model": "m" * 256}, "model"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(
    internal_client: APIClient, key: ApiKeyBinding, change: dict[str, Any], field: str
) -> None:
    response = authorize(internal_client, body(key, **change))

    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not CreditHold.objects.exists()


def test_missing_fields_and_non_objects_are_400(internal_client: APIClient, key: ApiKeyBinding) -> None:
    payload = body(key)
    del payload["estimated_cost_usd"]
    response = authorize(internal_client, payload)
    assert response.status_code == 400 and response.json()["field"] == "estimated_cost_usd"
    for text in ("[1, 2]", '"text"', "{not json", '{"estimated_cost_usd": NaN}'):
        response = authorize(internal_client, text)
        assert response.status_code == 400, (text, response.content)
        assert "error" in response.json()
    assert not CreditHold.objects.exists()


def test_the_internal_token_is_required(key: ApiKeyBinding) -> None:
    client = APIClient()
    assert authorize(client, body(key)).status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Bearer wrong")
    assert authorize(client, body(key)).status_code == 401
    assert client.delete(f"{AUTHORIZE}/some-call").status_code == 401
    assert not CreditHold.objects.exists()


# --- release -----------------------------------------------------------------------------------------


def test_release_frees_the_hold_once(internal_client: APIClient, key: ApiKeyBinding) -> None:
    payload = body(key, estimated_cost_usd="0.009")
    assert authorize(internal_client, payload).status_code == 200
    assert available_credits(account=key.account) == 1_000

    response = internal_client.delete(f"{AUTHORIZE}/{payload['litellm_call_id']}")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "released" and response.json()["released_credits"] == 9_000
    hold = CreditHold.objects.get()
    assert hold.status == Status.RELEASED and hold.closed_at is not None
    assert available_credits(account=key.account) == 10_000

    again = internal_client.delete(f"{AUTHORIZE}/{payload['litellm_call_id']}")
    assert again.status_code == 404 and again.json()["field"] == "litellm_call_id"
    assert internal_client.delete(f"{AUTHORIZE}/never-held").status_code == 404
    # A released call id is spent: an authorize that repeats it is another call (409), and holds nothing.
    replay = authorize(internal_client, payload)
    assert replay.status_code == 409 and replay.json()["field"] == "litellm_call_id"
    assert available_credits(account=key.account) == 10_000


# --- settlement in the one writer -----------------------------------------------------------------


def test_receipt_settles_the_hold_and_lands_in_full_above_it(internal_client: APIClient, key: ApiKeyBinding) -> None:
    payload = body(key, estimated_cost_usd="0.001")
    assert authorize(internal_client, payload).status_code == 200
    # The call cost 15x its estimate and more than the whole balance: the charge still lands in full.
    ingest(internal_client, [record_for(key, payload["litellm_call_id"], Decimal("0.015"))])

    receipt = ChargeReceipt.objects.get(litellm_call_id=payload["litellm_call_id"])
    assert receipt.charged_credits == 15_000
    hold = CreditHold.objects.get()
    assert hold.status == Status.SETTLED and hold.receipt == receipt and hold.settled_at is not None
    key.account.refresh_from_db()
    assert key.account.balance_credits == 10_000 - 15_000  # POST_CALL_NEVER_BLOCKS
    assert held_credits(account=key.account) == 0
    assert available_credits(account=key.account) == -5_000
    # Nothing is left to spend: the next call is refused before it happens.
    assert authorize(internal_client, body(key, estimated_cost_usd="0")).status_code == 402


def test_settlement_shares_the_receipts_transaction(
    internal_client: APIClient, key: ApiKeyBinding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If settling fails, the receipt and its debit are not written either (and the record waits for replay)."""
    payload = body(key)
    assert authorize(internal_client, payload).status_code == 200

    def broken(**kwargs: Any) -> int:
        raise RuntimeError("settlement failed")

    monkeypatch.setattr("receipts.services.billing.settle_holds", broken)
    ingest(internal_client, [record_for(key, payload["litellm_call_id"], Decimal("0.0005"))])

    assert not ChargeReceipt.objects.exists()
    assert not CreditLedgerEntry.objects.filter(reason="usage").exists()
    assert CreditHold.objects.get().status == Status.HELD
    assert DeferredUsage.objects.filter(litellm_call_id=payload["litellm_call_id"]).exists()


def test_a_call_without_a_hold_bills_as_before(internal_client: APIClient, key: ApiKeyBinding) -> None:
    ingest(internal_client, [record_for(key, str(uuid.uuid4()), Decimal("0.0005"))])
    assert ChargeReceipt.objects.get().charged_credits == 500
    assert not CreditHold.objects.exists()


# --- expiry and late callbacks ------------------------------------------------------------------------


def test_the_sweep_expires_holds_past_their_ttl(
    key: ApiKeyBinding, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    now = timezone.now()
    ttl = timedelta(seconds=settings.BILLING_HOLD_TTL_SECONDS)
    other = ApiKeyBindingFactory(account=BillingAccountFactory(name="Other holder"))
    fund(other.account, 10_000)
    before = metric("billing_holds_expired_total")
    with django_capture_on_commit_callbacks(execute=True):
        stale = authorize_call(
            litellm_call_id="stale",
            estimated_cost_usd=Decimal("0.003"),
            key_hash=key.key_hash,
            now=now - ttl - timedelta(seconds=1),
        )
        # Another account's stale hold: nothing of this account touches it, only the sweep.
        idle = authorize_call(
            litellm_call_id="idle",
            estimated_cost_usd=Decimal("0.001"),
            key_hash=other.key_hash,
            now=now - ttl - timedelta(seconds=1),
        )
        fresh = authorize_call(litellm_call_id="fresh", estimated_cost_usd=Decimal("0.002"), key_hash=key.key_hash)
    assert stale.allowed and idle.allowed and fresh.allowed
    # Past its expiry a hold stops counting at once, before any sweep: the account's next authorize takes it off.
    assert fresh.available_credits == 10_000 - 2_000
    assert held_credits(account=key.account) == 2_000
    assert list(open_holds(account=key.account).values_list("litellm_call_id", flat=True)) == ["fresh"]
    assert CreditHold.objects.get(litellm_call_id="stale").status == Status.EXPIRED
    assert metric("billing_holds_expired_total") == before + 1

    with django_capture_on_commit_callbacks(execute=True):
        call_command("billing_worker", "--once", "--no-reconcile")

    assert dict(CreditHold.objects.values_list("litellm_call_id", "status")) == {
        "stale": Status.EXPIRED,
        "idle": Status.EXPIRED,
        "fresh": Status.HELD,
    }
    assert CreditHold.objects.get(litellm_call_id="idle").closed_at is not None
    assert metric("billing_holds_expired_total") == before + 2
    assert expire_holds(now=timezone.now()) == 0  # nothing more to expire


@pytest.mark.parametrize("ended", ["expired", "released"])
def test_a_late_callback_still_bills_normally(
    internal_client: APIClient, key: ApiKeyBinding, settings: Any, ended: str
) -> None:
    payload = body(key, estimated_cost_usd="0.002")
    assert authorize(internal_client, payload).status_code == 200
    if ended == "expired":
        expire_holds(now=timezone.now() + timedelta(seconds=settings.BILLING_HOLD_TTL_SECONDS + 1))
    else:
        assert internal_client.delete(f"{AUTHORIZE}/{payload['litellm_call_id']}").status_code == 200

    ingest(internal_client, [record_for(key, payload["litellm_call_id"], Decimal("0.0025"))])

    receipt = ChargeReceipt.objects.get(litellm_call_id=payload["litellm_call_id"])
    assert receipt.charged_credits == 2_500
    hold = CreditHold.objects.get()
    assert hold.status == ended and hold.receipt == receipt and hold.settled_at is None
    key.account.refresh_from_db()
    assert key.account.balance_credits == 7_500
    assert not DeferredUsage.objects.exists()


# --- what users and staff see -----------------------------------------------------------------------


def test_balance_and_invoice_show_available(key: ApiKeyBinding) -> None:
    authorize_call(litellm_call_id="in-flight", estimated_cost_usd=Decimal("0.0031"), key_hash=key.key_hash)
    client = Client()
    client.force_login(key.account.owner)

    balance = client.get("/billing/balance").json()
    assert balance["balance_credits"] == 10_000
    assert balance["held_credits"] == 3_100
    assert balance["available_credits"] == 6_900

    page = client.get("/billing/invoice/").content.decode()
    assert 'data-field="available_credits" data-value="6900"' in page
    assert 'data-field="held_credits" data-value="3100"' in page


def test_admin_lists_open_holds_and_releases_one(key: ApiKeyBinding) -> None:
    authorize_call(litellm_call_id="call-a", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash)
    authorize_call(litellm_call_id="call-b", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash)
    staff = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)

    listing = client.get(f"/admin/holds/credithold/?account__id__exact={key.account.pk}&status__exact=held")
    assert listing.status_code == 200
    assert b"call-a" in listing.content and b"call-b" in listing.content
    account_page = client.get(f"/admin/accounts/billingaccount/{key.account.pk}/change/")
    assert account_page.status_code == 200
    assert b"8000 available" in account_page.content and b"call-a" in account_page.content

    hold = CreditHold.objects.get(litellm_call_id="call-a")
    response = client.post(
        "/admin/holds/credithold/", {"action": "release", "_selected_action": [hold.pk]}, follow=True
    )
    assert response.status_code == 200
    assert b"1 hold(s) released" in response.content
    assert dict(CreditHold.objects.values_list("litellm_call_id", "status")) == {
        "call-a": Status.RELEASED,
        "call-b": Status.HELD,
    }
