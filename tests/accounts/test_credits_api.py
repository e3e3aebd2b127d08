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


def test_promotional_grant_through_the_api_shows_on_the_balance(internal_client, account, client) -> None:
    expires = "2099-01-01T00:00:00Z"
    made = grant(internal_client, account, reason="grant", category="promotional", expires_at=expires, priority=5)
    assert made.status_code == 201, made.json()
    assert made.json()["entry"]["promotional_credit"] is not None
    client.force_login(account.owner)
    balance = client.get("/billing/balance").json()
    assert balance["balance_credits"] == 5000 and balance["promotional_credits"] == 5000
    assert balance["promotions"] == [
        {"remaining_credits": 5000, "granted_credits": 5000, "priority": 5, "expires_at": "2099-01-01T00:00:00Z"}
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"category": "promotional", "reason": "grant"}, "expires_at"),
        ({"category": "promotional", "reason": "top_up", "expires_at": "2099-01-01T00:00:00Z"}, "reason"),
        ({"category": "promotional", "reason": "grant", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        (
            {"category": "promotional", "reason": "grant", "expires_at": "2099-01-01T00:00:00Z", "priority": 0},
            "priority",
        ),
        ({"category": "promotional", "reason": "grant", "expires_at": "soon"}, "expires_at"),
        ({"expires_at": "2099-01-01T00:00:00Z"}, "expires_at"),
        ({"category": "bonus"}, "category"),
    ],
)
def test_bad_promotional_grants_name_the_field_and_save_nothing(internal_client, account, changes, field) -> None:
    refused = grant(internal_client, account, **changes)
    assert refused.status_code == 400
    body = refused.json()
    assert body.get("field") == field or set(body.get("fields", {})) == {field}, body
    assert not CreditLedgerEntry.objects.exists()
