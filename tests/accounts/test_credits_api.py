import uuid

import pytest

from accounts.models import CreditLedgerEntry

CREDITS = "/api/internal/billing/credits"
pytestmark = pytest.mark.django_db


def grant(client, target, **overrides):
    body = {
        "account": str(target.public_id),
        "amount_credits": 5000,
        "reason": "top_up",
        "idempotency_key": "stripe-pi-1",
        "memo": "card payment",
    } | overrides
    return client.post(CREDITS, body, format="json")


def test_top_up_then_replay_then_conflict(internal_client, account) -> None:
    created = grant(internal_client, account)
    assert created.status_code == 201
    body = created.json()
    assert body["created"] is True and body["balance_credits"] == 5000
    assert body["entry"]["amount_credits"] == 5000 and body["entry"]["balance_after"] == 5000
    assert body["entry"]["account"] == str(account.public_id)

    replay = grant(internal_client, account)
    assert replay.status_code == 200
    assert replay.json()["entry"]["id"] == body["entry"]["id"] and replay.json()["created"] is False

    conflict = grant(internal_client, account, amount_credits=6000)
    assert conflict.status_code == 409
    assert conflict.json()["field"] == "idempotency_key"
    account.refresh_from_db()
    assert account.balance_credits == 5000
    assert CreditLedgerEntry.objects.count() == 1


def test_negative_adjustment_allowed(internal_client, account) -> None:
    response = grant(internal_client, account, amount_credits=-300, reason="adjustment", idempotency_key="adj-1")
    assert response.status_code == 201
    assert response.json()["balance_credits"] == -300


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount_credits": -5}, "amount_credits"),
        ({"amount_credits": "lots"}, "amount_credits"),
        ({"reason": "usage"}, "reason"),
        ({"account": "not-a-uuid"}, "account"),
    ],
)
def test_bad_input_names_the_field(internal_client, account, overrides: dict, field: str) -> None:
    response = grant(internal_client, account, **overrides)
    assert response.status_code == 400
    body = response.json()
    assert field in body.get("fields", {}) or body.get("field") == field
    assert not CreditLedgerEntry.objects.exists()


def test_unknown_account(internal_client, account) -> None:
    response = grant(internal_client, account, account=str(uuid.uuid4()))
    assert response.status_code == 400
    assert response.json()["fields"]["account"] == ["no billing account has this id"]


def test_requires_the_internal_token(client, account) -> None:
    response = client.post(CREDITS, {"account": str(account.public_id)}, content_type="application/json")
    assert response.status_code == 401
    assert not CreditLedgerEntry.objects.exists()
