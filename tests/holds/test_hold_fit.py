"""A hold that fits the call (issue 20): without max_tokens, the hold is sized by what the key has used."""

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings

from accounts.services import grant_credits
from holds import services as hold_services
from holds.models import CreditHold
from payers.models import ApiKeyBinding
from tests.factories import ApiKeyBindingFactory, BillingAccountFactory, litellm_record, to_body

AUTHORIZE = "/api/internal/billing/authorize"
INGEST = "/api/internal/billing/ingest"
PRICE = Decimal("0.0000006")  # gpt-4o-mini's output price
LIMIT = 16_384
# A prompt of 100 tokens at 0.00000015 plus the model's whole output limit: the worst case.
WORST = Decimal("0.000015") + LIMIT * PRICE


@pytest.fixture(autouse=True)
def _fresh_history() -> None:
    hold_services._history.clear()


@pytest.fixture
def key(db: None) -> ApiKeyBinding:
    binding = ApiKeyBindingFactory(account=BillingAccountFactory(name="Fit Inc."))
    grant_credits(account=binding.account, amount_credits=1_000, reason="grant", idempotency_key=str(uuid.uuid4()))
    return binding


def authorize(client: Client, key: ApiKeyBinding, **fields: Any) -> Any:
    payload = {
        "litellm_call_id": str(uuid.uuid4()),
        "key_hash": key.key_hash,
        "model": "gpt-4o-mini",
        "estimated_cost_usd": str(WORST),
        "max_output_tokens": LIMIT,
        "output_cost_per_token_usd": str(PRICE),
        **fields,
    }
    return client.post(AUTHORIZE, json.dumps(payload), content_type="application/json")


def history(client: Client, key: ApiKeyBinding, completions: list[int]) -> None:
    records = []
    for tokens in completions:
        record = litellm_record(
            end_user="", cost=Decimal("0.000001"), completion_tokens=tokens, model_group="gpt-4o-mini"
        )
        record["metadata"]["user_api_key_hash"] = key.key_hash
        records.append(record)
    assert client.post(INGEST, to_body(records), content_type="application/json").status_code == 200


@pytest.mark.django_db
def test_without_history_the_default_output_is_held_not_the_models_limit(internal_client: Client, key) -> None:
    answer = authorize(internal_client, key)
    assert answer.status_code == 200, answer.content  # the worst case (9,846 credits) would not fit in 1,000
    expected = Decimal("0.000015") + 1024 * PRICE
    assert answer.json()["held_credits"] == int((expected * 1_000_000).to_integral_value(rounding="ROUND_CEILING"))
    # The estimate the caller sent is kept (a retry is compared with it), the hold is the sized one.
    hold = CreditHold.objects.get()
    assert hold.estimated_cost_usd == WORST and hold.held_credits == 630


@pytest.mark.django_db
def test_with_history_the_p99_of_the_keys_output_is_held(internal_client: Client, key) -> None:
    history(internal_client, key, [10] * 90 + [40] * 9 + [400])  # p99 of 100 calls: 40
    answer = authorize(internal_client, key)
    assert answer.json()["held_credits"] == 15 + 24  # 15 prompt credits + 40 tokens × 0.6 credits
    # Another key, or another model group, has its own history.
    other = ApiKeyBindingFactory(account=key.account)
    assert authorize(internal_client, other).json()["held_credits"] == 630


@pytest.mark.django_db
@override_settings(BILLING_HOLD_DEFAULT_OUTPUT_TOKENS=100_000)
def test_the_hold_is_never_above_the_worst_case(internal_client: Client, key) -> None:
    grant_credits(account=key.account, amount_credits=20_000, reason="grant", idempotency_key="more")
    assert authorize(internal_client, key).json()["held_credits"] == 9_846


@pytest.mark.django_db
def test_an_output_part_above_the_estimate_is_refused(internal_client: Client, key) -> None:
    answer = authorize(internal_client, key, estimated_cost_usd="0.0001")
    assert answer.status_code == 400 and answer.json()["field"] == "output_cost_per_token_usd"
