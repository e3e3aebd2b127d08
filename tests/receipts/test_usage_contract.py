"""Contract tests on the real LiteLLM 1.108 callback bodies in tests/fixtures (copied from shared/samples)."""

import copy
import json
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from integrations.litellm.records import parse_usage_record
from receipts.facts import NotBillable, UsageFact
from receipts.models import ChargeReceipt, DeferredUsage
from receipts.selectors import delivered_record
from tests.factories import SAMPLE_BATCH, SAMPLE_FAILURE_EMBEDDING_STREAM, litellm_record, load_sample, to_body

INGEST = "/api/internal/billing/ingest"
pytestmark = pytest.mark.django_db


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post(client, records) -> dict:
    response = client.post(INGEST, to_body(records), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def receipt(call_id_prefix: str) -> ChargeReceipt:
    return ChargeReceipt.objects.get(litellm_call_id__startswith=call_id_prefix)


def test_json_array_batch_sample(internal_client, account: BillingAccount) -> None:
    body = SAMPLE_BATCH.read_bytes()
    response = internal_client.post(INGEST, body, content_type="application/json")
    assert response.status_code == 200
    assert response.json() | {"skipped_records": [], "deferred_records": []} == {
        "processed": 5,
        "duplicates": 0,
        "deferred": 0,
        "skipped": 0,
        "skipped_records": [],
        "deferred_records": [],
    }
    priced = receipt("f08a6819")
    assert priced.cost_usd == Decimal("0.0000135")
    assert priced.charged_credits == 14
    assert priced.request_id == "chatcmpl-509b919b-2320-4d16-88db-55a9a1194781"
    assert (priced.run_id, priced.attempt) == (priced.litellm_call_id, 0)
    assert priced.source_reference == f"{priced.litellm_call_id}/0/{priced.litellm_call_id}"
    assert (priced.model_group, priced.model, priced.provider) == ("gpt-4o-mini", "openai/gpt-4o-mini", "openai")
    assert (priced.prompt_tokens, priced.completion_tokens, priced.total_tokens) == (10, 20, 30)
    assert priced.stream is False and priced.status == "success" and not priced.zero_cost_suspect

    streamed = receipt("92cf47c0")
    assert streamed.stream is True
    assert (streamed.cost_usd, streamed.charged_credits) == (Decimal("0.0000048"), 5)

    header_user = receipt("f51bf314")  # end user from the x-litellm-end-user-id header
    assert header_user.end_user == "acct-bob"
    assert (header_user.cost_usd, header_user.charged_credits) == (Decimal(0), 0)

    run = receipt("6882d3ac")  # spend_logs_metadata from the executor
    assert (run.run_id, run.attempt) == ("run-42", 1)
    assert run.source_reference == f"run-42/1/{run.litellm_call_id}"

    unpriced = receipt("4acd130c")  # 0.0 is a valid cost: a receipt with 0 credits
    assert (unpriced.model_group, unpriced.cost_usd, unpriced.charged_credits) == ("free-model", Decimal(0), 0)
    assert not unpriced.zero_cost_suspect  # its model map lists no prices

    for r in ChargeReceipt.objects.all():
        # No per-receipt copy of the record: it links to the exact bytes in its stored delivery.
        delivered = delivered_record(ingest_batch_id=r.ingest_batch_id, position=r.batch_position)
        assert json.loads(delivered)["litellm_call_id"] == r.litellm_call_id
        assert (r.credits_per_usd, r.markup) == (Decimal(1_000_000), Decimal(1))
        assert r.ledger_entry.amount_credits == -r.charged_credits
    account.refresh_from_db()
    assert account.balance_credits == -(14 + 5 + 0 + 14 + 0)


def test_failure_embedding_and_stream_sample(internal_client, account: BillingAccount) -> None:
    failed_before = metric("billing_failed_call_without_cost_total")
    result = post(internal_client, load_sample(SAMPLE_FAILURE_EMBEDDING_STREAM))
    assert (result["processed"], result["skipped"], result["deferred"]) == (2, 1, 0)
    assert result["skipped_records"][0]["litellm_call_id"].startswith("c891505d")
    assert result["skipped_records"][0]["reason"] == "failure_without_cost"
    assert not ChargeReceipt.objects.filter(litellm_call_id__startswith="c891505d").exists()
    assert metric("billing_failed_call_without_cost_total") == failed_before + 1
    embedding = receipt("8362e2a7")
    assert embedding.call_type == "aembedding"
    assert embedding.request_id == embedding.litellm_call_id  # embeddings: id equals the call id
    assert (embedding.cost_usd, embedding.charged_credits) == (Decimal("2e-07"), 1)
    assert receipt("b3292af2").stream is True


def test_failure_with_a_cost_is_charged_and_marked_failure(internal_client, account: BillingAccount) -> None:
    failure = copy.deepcopy(load_sample(SAMPLE_FAILURE_EMBEDDING_STREAM)[0])
    failure["response_cost"] = Decimal("0.0000201")  # a stream cut off midway that the provider billed
    result = post(internal_client, [failure])
    assert result["processed"] == 1
    charged = ChargeReceipt.objects.get(litellm_call_id=failure["litellm_call_id"])
    assert (charged.status, charged.charged_credits) == ("failure", 21)


@pytest.mark.parametrize(
    "change",
    [
        {"response_cost": None},
        {"response_cost": "missing"},
        {"response_cost_failure_debug_info": {"error": "model not mapped"}},
    ],
    ids=["null-cost", "missing-cost", "cost-failure-debug-info"],
)
def test_unknown_cost_is_deferred_never_charged_as_zero(internal_client, account, change: dict) -> None:
    before = metric("billing_missing_cost_deferred_total")
    record = litellm_record(cost=change.pop("response_cost", Decimal("0.0000135")), **change)
    result = post(internal_client, [record])
    assert (result["processed"], result["deferred"]) == (0, 1)
    assert result["deferred_records"][0]["reason"] == "unknown_cost"
    deferred = DeferredUsage.objects.get(litellm_call_id=record["litellm_call_id"])
    assert (deferred.reason, deferred.status) == ("unknown_cost", "pending")
    assert deferred.next_attempt_at is not None
    assert deferred.fact["litellm_call_id"] == record["litellm_call_id"] and "messages" not in deferred.fact
    assert deferred.fact["cost_usd"] is None and deferred.batch_position == 0
    assert not ChargeReceipt.objects.exists() and not CreditLedgerEntry.objects.exists()
    assert metric("billing_missing_cost_deferred_total") == before + 1


def test_zero_cost_suspect_is_billed_at_zero_and_flagged(
    internal_client, account, django_capture_on_commit_callbacks
) -> None:
    before = metric("billing_zero_cost_suspect_total")
    record = litellm_record(cost=Decimal("0.0"))  # gpt-4o-mini: its model map lists non-zero prices
    with django_capture_on_commit_callbacks(execute=True):  # metrics count committed receipts only
        post(internal_client, [record])
    flagged = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
    assert flagged.zero_cost_suspect and flagged.charged_credits == 0
    assert metric("billing_zero_cost_suspect_total") == before + 1


def test_end_user_fallbacks_for_older_litellm() -> None:
    record = litellm_record(end_user="")
    record["metadata"]["user_api_key_end_user_id"] = None
    record["metadata"]["requester_custom_headers"] = {"x-litellm-end-user-id": "from-header"}
    fact = parse_usage_record(record)
    assert isinstance(fact, UsageFact) and fact.end_user == "from-header"
    record["metadata"]["requester_custom_headers"] = {}
    record["metadata"]["user_api_key_end_user_id"] = "from-key"
    fact = parse_usage_record(record)
    assert isinstance(fact, UsageFact) and fact.end_user == "from-key"


def test_cost_is_exact_to_the_last_digit_of_the_json_text(internal_client, account) -> None:
    # 22 significant digits: a binary float would keep 17. Stored and charged from the text.
    record = litellm_record()
    body = to_body([record]).replace(b'"response_cost": 0.0000135', b'"response_cost": 0.0000135000000000000000001')
    assert internal_client.post(INGEST, body, content_type="application/json").status_code == 200
    stored = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
    assert stored.cost_usd == Decimal("0.0000135000000000000000001")
    assert stored.charged_credits == 14  # 13.5000…0001 rounds up once
    assert b"0.0000135000000000000000001" in delivered_record(
        ingest_batch_id=stored.ingest_batch_id, position=stored.batch_position
    )


def test_unknown_fields_are_ignored() -> None:
    parsed = parse_usage_record(litellm_record(brand_new_field={"x": 1}, another=[1, 2]))
    assert isinstance(parsed, UsageFact)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"response_cost": Decimal("-0.01")}, "invalid_response_cost"),
        ({"response_cost": Decimal("NaN")}, "invalid_response_cost"),
        ({"response_cost": "0.01"}, "invalid_response_cost"),
        ({"response_cost": True}, "invalid_response_cost"),
        ({"response_cost": Decimal("1.5e-31")}, "invalid_response_cost"),
        ({"litellm_call_id": None}, "missing_litellm_call_id"),
        ({"litellm_call_id": 42}, "invalid_litellm_call_id"),
        ({"prompt_tokens": "ten"}, "invalid_prompt_tokens"),
        ({"total_tokens": -1}, "invalid_total_tokens"),
        ({"status": "maybe"}, "invalid_status"),
        ({"model_group": "gpt\x00"}, "invalid_model_group"),
        ({"metadata": "nope"}, "invalid_metadata"),
        ({"stream": "yes"}, "invalid_stream"),
    ],
)
def test_invalid_records_say_why(change: dict, reason: str) -> None:
    parsed = parse_usage_record(litellm_record(**change))
    assert isinstance(parsed, NotBillable)
    assert (parsed.kind, parsed.reason) == ("invalid", reason)


def test_a_receipt_keeps_the_non_zero_amounts_of_litellms_cost_breakdown() -> None:
    """The audit copy of cost_breakdown: exact amounts, without the dozen zeros and nulls LiteLLM adds."""
    fact = parse_usage_record(load_sample(SAMPLE_BATCH)[0])
    assert isinstance(fact, UsageFact)
    assert fact.cost_breakdown == {
        "input_cost": "0.0000015",
        "output_cost": "0.000012",
        "total_cost": "0.0000135",
        "original_cost": "0.0000135",
    }
    unpriced = parse_usage_record(load_sample(SAMPLE_BATCH)[4])
    assert isinstance(unpriced, UsageFact) and unpriced.cost_breakdown is None  # every amount is 0
