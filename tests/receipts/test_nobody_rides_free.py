"""Nobody rides free (issue 15): a client-chosen call id, an unpriced model or a long call never makes a
served call free. Real PostgreSQL; the internal API with each caller's own token (tests/tokens.py).
"""

import json
import threading
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import zstandard
from django.db import connection, connections
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from billing_project.text_rules import call_id_problem
from holds.models import CreditHold
from holds.services import authorize_call
from payers.models import ApiKeyBinding
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.services import purge_delivery_bodies, reprocess_delivery, retry_deferred_usage
from tests.books import ledger_total
from tests.factories import ApiKeyBindingFactory, BillingAccountFactory, litellm_record, to_body
from tests.tokens import auth_header

AUTHORIZE = "/api/internal/billing/authorize"
INGEST = "/api/internal/billing/ingest"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fund(account: BillingAccount, credits: int) -> None:
    grant_credits(account=account, amount_credits=credits, reason="grant", idempotency_key=f"fund-{uuid.uuid4()}")


@pytest.fixture
def key(db: None) -> ApiKeyBinding:
    binding = ApiKeyBindingFactory(account=BillingAccountFactory(name="Tenant A"))
    fund(binding.account, 10_000)
    return binding


def keyed_record(key: ApiKeyBinding, *, call_id: str, cost: str, **overrides: Any) -> dict[str, Any]:
    record = litellm_record(call_id=call_id, cost=Decimal(cost), end_user="", **overrides)
    record["metadata"]["user_api_key_hash"] = key.key_hash
    return record


def ingest(client: Client, records: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post(INGEST, to_body(records), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def authorize(client: Client, key: ApiKeyBinding | None, **fields: Any) -> Any:
    payload = {
        "litellm_call_id": str(uuid.uuid4()),
        "key_hash": key.key_hash if key else "unbound",
        "model": "gpt-4o-mini",
        "estimated_cost_usd": "0.001",
        **fields,
    }
    return client.post(AUTHORIZE, json.dumps(payload), content_type="application/json")


# --- 1. a served call is billed however its id was chosen ---------------------------------------------


@pytest.mark.django_db
def test_two_calls_with_one_call_id_are_both_billed(
    internal_client: Client, key: ApiKeyBinding, django_capture_on_commit_callbacks: Any
) -> None:
    """The measured hole: 0.002 + 0.003 USD under one x-litellm-call-id charged 2,000 of 5,000 credits."""
    reused = "my-own-call-id"
    first = keyed_record(key, call_id=reused, cost="0.002", completion_tokens=10)
    second = keyed_record(key, call_id=reused, cost="0.003", completion_tokens=20)
    before = metric("billing_call_id_reused_total")
    with django_capture_on_commit_callbacks(execute=True):
        assert ingest(internal_client, [first])["processed"] == 1
        assert ingest(internal_client, [second])["processed"] == 1
    assert metric("billing_call_id_reused_total") == before + 1
    receipts = ChargeReceipt.objects.filter(litellm_call_id=reused).order_by("id")
    assert [r.charged_credits for r in receipts] == [2000, 3000]
    assert receipts[0].source_reference == f"{reused}/0/{reused}"
    assert receipts[1].source_reference.startswith(f"{reused}/0/{reused}~")
    key.account.refresh_from_db()
    assert key.account.balance_credits == 10_000 - 5_000 == ledger_total(account=key.account)

    # Identical re-deliveries of either call (one batch, several, any order) stay duplicates.
    again = ingest(internal_client, [second, first, second])
    assert again == {**again, "processed": 0, "duplicates": 3}
    assert ChargeReceipt.objects.filter(litellm_call_id=reused).count() == 2


@pytest.mark.django_db
def test_two_calls_with_one_call_id_in_one_batch(internal_client: Client, key: ApiKeyBinding) -> None:
    records = [
        keyed_record(key, call_id="dup", cost="0.001", completion_tokens=5),
        keyed_record(key, call_id="dup", cost="0.004", completion_tokens=9),
    ]
    assert ingest(internal_client, [records[0], records[1], records[0]]) == {
        "processed": 2,
        "duplicates": 1,
        "deferred": 0,
        "skipped": 0,
        "skipped_records": [],
        "deferred_records": [],
    }
    assert sorted(ChargeReceipt.objects.filter(litellm_call_id="dup").values_list("charged_credits", flat=True)) == [
        1000,
        4000,
    ]
    # The second call arriving first elsewhere changes nothing: each is billed once.
    assert ingest(internal_client, [records[1], records[0]])["duplicates"] == 2


@pytest.mark.django_db
def test_a_backfilled_receipt_and_its_late_callback_are_one_call(internal_client: Client, key: ApiKeyBinding) -> None:
    """Same response id, key and tokens: the same call, even when one side lost its start time precision."""
    record = keyed_record(key, call_id="late-one", cost="0.002")
    ingest(internal_client, [record])
    late = {**record, "startTime": record["startTime"] + Decimal("0.0004")}
    assert ingest(internal_client, [late])["duplicates"] == 1
    assert ChargeReceipt.objects.filter(litellm_call_id="late-one").count() == 1


@pytest.mark.django_db
def test_a_reused_call_id_waiting_for_its_payer_is_not_swallowed(internal_client: Client, key: ApiKeyBinding) -> None:
    """Two unbound calls under one call id wait as two deferrals, and billing one never closes the other."""
    unbound = [litellm_record(call_id="wait", cost=Decimal("0.001"), end_user="", completion_tokens=n) for n in (3, 4)]
    for record in unbound:
        record["metadata"]["user_api_key_hash"] = "not-bound-yet"
    assert ingest(internal_client, unbound)["deferred"] == 2
    assert DeferredUsage.objects.open().filter(litellm_call_id="wait").count() == 2
    binding = ApiKeyBinding.objects.create(key_hash="not-bound-yet", account=key.account)
    assert binding.pk
    for deferral in DeferredUsage.objects.open().filter(litellm_call_id="wait"):
        retry_deferred_usage(deferred=deferral)
    assert ChargeReceipt.objects.filter(litellm_call_id="wait").count() == 2
    assert not DeferredUsage.objects.open().filter(litellm_call_id="wait").exists()


# --- 2. authorize replays only what is still open and the same payer's --------------------------------


@pytest.mark.django_db
def test_authorize_refuses_a_call_id_already_used(internal_client: Client, key: ApiKeyBinding) -> None:
    call_id = str(uuid.uuid4())
    assert authorize(internal_client, key, litellm_call_id=call_id).status_code == 200
    assert authorize(internal_client, key, litellm_call_id=call_id).status_code == 200  # a retry: same hold
    ingest(internal_client, [keyed_record(key, call_id=call_id, cost="0.0005")])
    assert CreditHold.objects.get(litellm_call_id=call_id).status == CreditHold.Status.SETTLED
    replay = authorize(internal_client, key, litellm_call_id=call_id)
    assert replay.status_code == 409
    assert replay.json()["field"] == "litellm_call_id" and "settled" in replay.json()["error"]

    released = str(uuid.uuid4())
    assert authorize(internal_client, key, litellm_call_id=released).status_code == 200
    assert internal_client.delete(f"{AUTHORIZE}/{released}").status_code == 200
    assert authorize(internal_client, key, litellm_call_id=released).status_code == 409


@pytest.mark.django_db
def test_another_payers_open_call_id_is_refused_and_never_settled(internal_client: Client, key: ApiKeyBinding) -> None:
    other = ApiKeyBindingFactory(account=BillingAccountFactory(name="Tenant B"))
    fund(other.account, 10_000)
    call_id = str(uuid.uuid4())
    assert authorize(internal_client, other, litellm_call_id=call_id).status_code == 200
    stolen = authorize(internal_client, key, litellm_call_id=call_id)
    assert stolen.status_code == 409 and stolen.json()["field"] == "litellm_call_id"
    # A's record under B's call id bills A and leaves B's hold open for B's own record.
    ingest(internal_client, [keyed_record(key, call_id=call_id, cost="0.001")])
    hold = CreditHold.objects.get(litellm_call_id=call_id)
    assert hold.status == CreditHold.Status.HELD and hold.receipt_id is None
    ingest(internal_client, [keyed_record(other, call_id=call_id, cost="0.002", completion_tokens=77)])
    hold.refresh_from_db()
    assert hold.status == CreditHold.Status.SETTLED and hold.receipt.account_id == other.account_id
    key.account.refresh_from_db()
    other.account.refresh_from_db()
    assert (key.account.balance_credits, other.account.balance_credits) == (9_000, 8_000)


# --- 3. one call-id rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("call_id", ["a/b", "", "x" * 256, "tab\there", "nel\x85here"])
def test_the_call_id_rule_refuses(call_id: str) -> None:
    assert call_id_problem(call_id) is not None


@pytest.mark.django_db
def test_authorize_and_ingest_refuse_the_same_call_ids(internal_client: Client, key: ApiKeyBinding) -> None:
    refused = authorize(internal_client, key, litellm_call_id="tenant/chosen")
    assert refused.status_code == 400 and refused.json()["field"] == "litellm_call_id"
    assert not CreditHold.objects.exists()
    result = ingest(internal_client, [keyed_record(key, call_id="tenant/chosen", cost="0.001")])
    assert result["skipped_records"][0]["field"] == "litellm_call_id"
    # Kept with the call id the caller sent, so staff can find it.
    assert DeferredUsage.objects.get(reason=DeferredUsage.Reason.INVALID).litellm_call_id == "tenant/chosen"


# --- 4. unpriced calls are never free -----------------------------------------------------------------


@pytest.mark.django_db
def test_an_unpriced_model_is_refused_before_the_call_by_default(internal_client: Client, key: ApiKeyBinding) -> None:
    refused = authorize(internal_client, key, model="my-finetune", priced=False, estimated_cost_usd="1.00")
    assert refused.status_code == 402
    body = refused.json()
    assert body["reason"] == "unpriced_model" and "'my-finetune' has no known price" in body["message"]
    assert not CreditHold.objects.exists()


@pytest.mark.django_db
@override_settings(BILLING_UNPRICED_CALLS="charge_hold", LITELLM_MASTER_KEY="")
def test_charge_hold_charges_the_hold_then_corrects_it(
    internal_client: Client, key: ApiKeyBinding, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = str(uuid.uuid4())
    allowed = authorize(internal_client, key, litellm_call_id=call_id, priced=False, estimated_cost_usd="0.005")
    assert allowed.status_code == 200 and allowed.json()["held_credits"] == 5000
    result = ingest(internal_client, [keyed_record(key, call_id=call_id, cost="0", response_cost=None)])
    assert result["processed"] == 1
    receipt = ChargeReceipt.objects.get(litellm_call_id=call_id)
    assert receipt.provisional_cost and receipt.charged_credits == 5000 and receipt.cost_usd == Decimal("0.005")
    assert CreditHold.objects.get(litellm_call_id=call_id).status == CreditHold.Status.SETTLED
    deferral = DeferredUsage.objects.open().get(litellm_call_id=call_id)
    assert deferral.reason == DeferredUsage.Reason.UNKNOWN_COST

    # LiteLLM's spend logs learn the real cost (0.0012 USD): the over-charge comes back once.
    monkeypatch.setattr(
        "receipts.services.retry._with_litellm_cost",
        lambda fact: (fact.__class__(**{**fact.__dict__, "cost_usd": Decimal("0.0012")}), ""),
    )
    assert retry_deferred_usage(deferred=deferral).outcome == "duplicate"
    correction = CreditLedgerEntry.objects.get(idempotency_key=f"provisional-cost:{receipt.pk}")
    assert correction.reason == "adjustment" and correction.amount_credits == 5000 - 1200
    key.account.refresh_from_db()
    assert key.account.balance_credits == 10_000 - 1200 == ledger_total(account=key.account)
    deferral.refresh_from_db()
    assert deferral.status == DeferredUsage.Status.BILLED


@pytest.mark.django_db
@override_settings(BILLING_UNPRICED_CALLS="charge_hold")
def test_charge_hold_without_a_hold_defers_as_before(internal_client: Client, key: ApiKeyBinding) -> None:
    result = ingest(internal_client, [keyed_record(key, call_id="no-hold", cost="0", response_cost=None)])
    assert result["deferred"] == 1 and not ChargeReceipt.objects.exists()


# --- 5. holds outlive their calls; an answer nobody heard holds nothing -------------------------------


@pytest.mark.django_db
@override_settings(BILLING_HOLD_TTL_SECONDS=600)
def test_a_running_call_renews_its_hold(internal_client: Client, key: ApiKeyBinding) -> None:
    call_id = str(uuid.uuid4())
    assert authorize(internal_client, key, litellm_call_id=call_id).status_code == 200
    hold = CreditHold.objects.get(litellm_call_id=call_id)
    CreditHold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() + timedelta(seconds=5))
    renewed = internal_client.post(f"{AUTHORIZE}/{call_id}/renew")
    assert renewed.status_code == 200
    hold.refresh_from_db()
    assert hold.expires_at > timezone.now() + timedelta(seconds=590)
    # A hold already past its expiry stopped counting: renewing it could overspend, so it is refused.
    CreditHold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert internal_client.post(f"{AUTHORIZE}/{call_id}/renew").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_an_authorize_past_its_deadline_holds_nothing(key: ApiKeyBinding) -> None:
    """The account row busy on another connection longer than the plugin waits: 503, and no hold appears."""
    locked = threading.Event()
    release = threading.Event()

    def hold_the_account_row() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute("SELECT 1 FROM accounts_billingaccount WHERE id = %s FOR UPDATE", [key.account_id])
                locked.set()
                release.wait(timeout=30)
                cursor.execute("ROLLBACK")
        finally:
            connections.close_all()

    blocker = threading.Thread(target=hold_the_account_row)
    blocker.start()
    assert locked.wait(timeout=10)
    try:
        client = Client(headers=auth_header(AUTHORIZE))
        call_id = str(uuid.uuid4())
        answer = authorize(client, key, litellm_call_id=call_id, deadline_ms=300)
        assert answer.status_code == 503 and answer.json()["reason"] == "too_late"
    finally:
        release.set()
        blocker.join(timeout=30)
    assert not CreditHold.objects.filter(litellm_call_id=call_id).exists()


def test_scheduled_reconcile_backfills_by_default() -> None:
    from django.conf import settings

    assert settings.BILLING_RECONCILE_APPLY is True


# --- 6. scoped tokens ----------------------------------------------------------------------------------

ENDPOINTS = [
    ("post", INGEST, "BILLING_INGEST_TOKEN"),
    ("post", AUTHORIZE, "BILLING_AUTHORIZE_TOKEN"),
    ("delete", f"{AUTHORIZE}/some-call", "BILLING_AUTHORIZE_TOKEN"),
    ("post", f"{AUTHORIZE}/some-call/renew", "BILLING_AUTHORIZE_TOKEN"),
    ("get", "/api/internal/billing/receipts/some-call", "BILLING_AUTHORIZE_TOKEN"),
    ("post", "/api/internal/billing/credits", "BILLING_ADMIN_API_TOKEN"),
    ("post", "/api/internal/billing/payer-bindings", "BILLING_ADMIN_API_TOKEN"),
    ("post", "/api/internal/billing/runs", "BILLING_ADMIN_API_TOKEN"),
    ("post", "/api/internal/billing/runs/r-1/reconcile", "BILLING_ADMIN_API_TOKEN"),
    ("get", "/metrics", "BILLING_METRICS_TOKEN"),
    ("get", "/api/schema/", "BILLING_METRICS_TOKEN"),
]
SETTINGS = ("BILLING_INGEST_TOKEN", "BILLING_AUTHORIZE_TOKEN", "BILLING_ADMIN_API_TOKEN", "BILLING_METRICS_TOKEN")


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "own"), ENDPOINTS)
def test_each_endpoint_takes_only_its_own_token(client: Client, method: str, path: str, own: str) -> None:
    from django.conf import settings

    for setting in SETTINGS:
        response = getattr(client, method)(path, headers={"Authorization": f"Bearer {getattr(settings, setting)}"})
        if setting == own:
            assert response.status_code != 401, (setting, response.content)
        else:
            assert response.status_code == 401, (setting, response.content)
            assert own in response.json()["error"]


@pytest.mark.django_db
def test_an_unset_scoped_token_falls_back_to_the_ingest_token_with_a_warning(client: Client) -> None:
    from django.conf import settings
    from django.core.checks import run_checks

    with override_settings(BILLING_ADMIN_API_TOKEN="", DEBUG=False):
        headers = {"Authorization": f"Bearer {settings.BILLING_INGEST_TOKEN}"}
        assert client.post("/api/internal/billing/credits", {}, headers=headers).status_code == 400
        warnings = [m for m in run_checks() if m.id == "billing.W001"]
        assert len(warnings) == 1 and "BILLING_ADMIN_API_TOKEN" in warnings[0].msg
    assert not [m for m in run_checks() if m.id == "billing.W001"]


# --- 7. no deadlocks -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_of_waiting_records_from_concurrent_senders(db: None) -> None:
    """The measured deadlock: unbound records re-sent by 8 senders in overlapping batches → all 200."""
    records = [litellm_record(end_user="") for _ in range(300)]
    for record in records:
        record["metadata"]["user_api_key_hash"] = "unbound-tenant"
    batches = [records[start : start + 120] for start in range(0, 300, 60)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def send(sender: int) -> None:
        try:
            client = Client(headers=auth_header(INGEST))
            barrier.wait(timeout=30)
            for turn in range(3):
                for batch in batches[sender % 2 :: 2] if turn % 2 else list(reversed(batches)):
                    ordered = batch if (sender + turn) % 2 else list(reversed(batch))
                    statuses.append(client.post(INGEST, to_body(ordered), content_type="application/json").status_code)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert set(statuses) == {200}, sorted(set(statuses))
    assert DeferredUsage.objects.open().filter(reason=DeferredUsage.Reason.UNKNOWN_PAYER).count() == 300


# --- 8. bad bodies -------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [b"NaN", b'"\\ud800"', b"Infinity", b"-", b"[NaN", b"\xff\xfe", b'{"a":', b"[1,]", b"nul", b"[]", b"  "],
)
def test_every_body_that_is_not_json_answers_400(internal_client: Client, body: bytes) -> None:
    response = internal_client.post(INGEST, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "body" and response.json()["error"]


# --- 9. privacy ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_stored_delivery_keeps_no_prompt_email_or_ip(internal_client: Client, account: BillingAccount) -> None:
    record = litellm_record()
    record["messages"] = [{"role": "user", "content": "my secret prompt"}]
    record["response"] = {"choices": [{"message": {"content": "the secret answer"}}]}
    record["metadata"].update(
        user_api_key_user_email="someone@example.com",
        requester_ip_address="203.0.113.9",
        requester_custom_headers={"x-litellm-end-user-id": "acct-alice", "cookie": "session=abc"},
    )
    record["model_parameters"] = {"user": "someone@example.com"}
    assert ingest(internal_client, [record])["processed"] == 1
    batch = IngestBatch.objects.get()
    stored = zstandard.ZstdDecompressor().decompress(bytes(batch.body))
    for secret in (b"secret prompt", b"secret answer", b"someone@example.com", b"203.0.113.9", b"session=abc"):
        assert secret not in stored
    kept = json.loads(stored)[0]
    assert kept["litellm_call_id"] == record["litellm_call_id"] and kept["metadata"]["requester_custom_headers"] == {
        "x-litellm-end-user-id": "acct-alice"
    }
    # Replay reads the stored fields exactly as ingest did: the same receipt, a duplicate.
    assert reprocess_delivery(batch=batch).duplicates == 1


@pytest.mark.django_db
@override_settings(BILLING_DELIVERY_RETENTION_DAYS=30)
def test_delivery_bodies_are_purged_after_retention(internal_client: Client, account: BillingAccount) -> None:
    ingest(internal_client, [litellm_record(), litellm_record(cost="missing")])
    old = IngestBatch.objects.get()
    IngestBatch.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(days=31))
    ingest(internal_client, [litellm_record()])
    assert purge_delivery_bodies(now=timezone.now()) == 1
    assert purge_delivery_bodies(now=timezone.now()) == 0
    old.refresh_from_db()
    assert old.body is None and old.body_purged_at is not None
    assert IngestBatch.objects.filter(body__isnull=False).count() == 1
    # What is billed and what waits still explain themselves.
    receipt = ChargeReceipt.objects.filter(ingest_batch=old).get()
    assert receipt.model_group and receipt.cost_usd is not None
    deferral = DeferredUsage.objects.get(ingest_batch=old)
    assert deferral.fact["litellm_call_id"] == deferral.litellm_call_id


# --- 10. what a refused caller reads -------------------------------------------------------------------


@pytest.mark.django_db
def test_the_402_says_what_is_wrong_in_usd(internal_client: Client) -> None:
    poor = ApiKeyBindingFactory(account=BillingAccountFactory(name="Poor Inc."))
    refused = authorize(internal_client, poor, estimated_cost_usd="0.0123")
    assert refused.status_code == 402
    assert refused.json()["message"] == (
        "This account's prepaid credit is used up: $0.00 available, this call needs up to $0.0123."
    )
    assert refused.json()["available_credits"] == 0
    with override_settings(BILLING_402_SHOWS_BALANCE=False, BILLING_TOPUP_URL="https://billing.example.com/buy"):
        hidden = authorize(internal_client, poor, estimated_cost_usd="0.0123").json()
    assert "available_credits" not in hidden and "$0.00" not in hidden["message"]
    assert hidden["topup_url"] == "https://billing.example.com/buy"
    assert hidden["message"].endswith("Top up at https://billing.example.com/buy")


@pytest.mark.django_db
def test_authorize_call_service_refuses_reuse_directly(key: ApiKeyBinding) -> None:
    decision = authorize_call(litellm_call_id="svc-1", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash)
    assert decision.allowed
    CreditHold.objects.filter(litellm_call_id="svc-1").update(status="expired", closed_at=timezone.now())
    with pytest.raises(Exception, match="was already used"):
        authorize_call(litellm_call_id="svc-1", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash)
