"""Auto-recharge: a card saved at a Checkout is charged off-session when available credit falls below the
owner's mark, never twice at once; a declined card turns the order off and the owner gets an e-mail."""

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.test import Client

from accounts.models import BillingAccount, LedgerReason
from accounts.services import grant_credits
from payments.models import AttemptStatus, AutoRecharge, PaymentAttempt
from payments.services import auto_recharge_set, run_auto_recharges
from tests.books import ledger_total
from tests.factories import BillingAccountFactory
from tests.payments.test_stripe import _deliver, _logged_in
from tests.stripe_standin import StripeStandIn, event, session_event

PASSWORD = "correct horse battery"


def _owner_and_account(name: str) -> tuple[Any, BillingAccount]:
    owner = get_user_model().objects.create_user(username=name, password=PASSWORD, email=f"{name}@example.com")
    return owner, BillingAccountFactory(owner=owner, name=f"{name} Ltd")


def _save_a_card(stripe_api: StripeStandIn, owner: Any, account: BillingAccount) -> None:
    client = _logged_in(owner)
    response = client.post(
        "/billing/credits/buy",
        {"amount_usd": "10", "account": str(account.public_id), "save_card": "on"},
        HTTP_X_CSRFTOKEN=_csrf_of(client),
    )
    assert response.status_code == 303
    [session] = [s for s in stripe_api.sessions.values() if s["url"] == response["Location"]]
    assert session["customer"] and stripe_api.intents[session["payment_intent"]]["setup_future_usage"] == "off_session"
    _deliver(session_event("checkout.session.completed", session))


def _csrf_of(client: Client) -> str:
    client.get("/billing/credits/")
    return client.cookies["csrftoken"].value


def _spend(account: BillingAccount, credits: int, key: str) -> None:
    grant_credits(account=account, amount_credits=-credits, reason="adjustment", idempotency_key=key)


def test_below_the_mark_the_saved_card_is_charged_once_and_credits_land(stripe_api: StripeStandIn, db: None) -> None:
    owner, account = _owner_and_account("recharger")
    client = _logged_in(owner)
    answer = client.post(
        "/billing/credits/auto-recharge",
        {"account": str(account.public_id), "below_usd": "5", "amount_usd": "20"},
        HTTP_X_CSRFTOKEN=_csrf_of(client),
    )
    assert answer.status_code == 303
    assert "waiting for a card" in client.get("/billing/credits/").content.decode()
    _save_a_card(stripe_api, owner, account)
    order = AutoRecharge.objects.get(account=account)
    assert (order.stripe_customer.startswith("cus_"), order.stripe_payment_method) == (True, "pm_card_visa")

    assert run_auto_recharges() == {"charged": 0, "declined": 0, "failed": 0}  # 10 USD of credit: above 5
    _spend(account, 6_000_000, "spent-6")  # 4 USD left: below the mark
    assert run_auto_recharges() == {"charged": 1, "declined": 0, "failed": 0}
    assert run_auto_recharges()["charged"] == 0  # 24 USD now: above the mark again
    recharge = PaymentAttempt.objects.get(kind=PaymentAttempt.Kind.AUTO_RECHARGE)
    assert recharge.status == AttemptStatus.SUCCEEDED and recharge.provider_reference.startswith("pi_")
    assert account.ledger_entries.filter(reason=LedgerReason.PURCHASE).count() == 2
    # Stripe's own confirmation of the off-session intent changes nothing more.
    intent = stripe_api.intents[recharge.provider_reference]
    assert _deliver(event("payment_intent.succeeded", intent)).json()["outcome"] == "already credited"
    account.refresh_from_db()
    assert account.balance_credits == 24_000_000 == ledger_total(account=account)


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_start_one_recharge(stripe_api: StripeStandIn) -> None:
    owner, account = _owner_and_account("racer")
    _save_a_card(stripe_api, owner, account)
    auto_recharge_set(account=account, below_usd="50", amount_usd="20")
    barrier, results = threading.Barrier(2), []

    def sweep() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(run_auto_recharges())
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Below 50 USD after the first recharge too (30 USD): each sweep may charge, but never two in flight;
    # every started recharge is one attempt, one charge at Stripe and one purchase entry.
    attempts = PaymentAttempt.objects.filter(kind=PaymentAttempt.Kind.AUTO_RECHARGE)
    charged = sum(r["charged"] for r in results)
    assert attempts.count() == charged >= 1
    assert len([i for i in stripe_api.intents.values() if i["status"] == "succeeded"]) == charged
    assert not attempts.filter(status__in=["created", "pending"]).exists()
    account.refresh_from_db()
    assert account.balance_credits == (10 + 20 * charged) * 1_000_000 == ledger_total(account=account)


def test_a_declined_card_turns_the_order_off_and_tells_the_owner(stripe_api: StripeStandIn, db: None) -> None:
    owner, account = _owner_and_account("declined")
    stripe_api.saved_card = "pm_card_chargeDeclined"
    auto_recharge_set(account=account, below_usd="100", amount_usd="20")
    _save_a_card(stripe_api, owner, account)
    results = run_auto_recharges()
    assert results == {"charged": 0, "declined": 1, "failed": 0}
    order = AutoRecharge.objects.get(account=account)
    assert not order.enabled and "declined" in order.disabled_reason
    assert PaymentAttempt.objects.get(kind=PaymentAttempt.Kind.AUTO_RECHARGE).status == AttemptStatus.FAILED
    assert run_auto_recharges() == {"charged": 0, "declined": 0, "failed": 0}  # off: nothing more is tried
    page = _logged_in(owner).get("/billing/credits/").content.decode()
    assert "Off: the saved card was declined" in page
    account.refresh_from_db()
    assert account.balance_credits == 10_000_000 == ledger_total(account=account)


def test_the_owner_is_emailed_after_the_decline_commits(
    stripe_api: StripeStandIn, db: None, django_capture_on_commit_callbacks: Any
) -> None:
    owner, account = _owner_and_account("mailed")
    stripe_api.saved_card = "pm_card_chargeDeclined"
    auto_recharge_set(account=account, below_usd="100", amount_usd="20")
    _save_a_card(stripe_api, owner, account)
    with django_capture_on_commit_callbacks(execute=True):
        run_auto_recharges()
    [message] = mail.outbox
    assert message.to == ["mailed@example.com"] and "declined" in message.subject


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"below_usd": "-1", "amount_usd": "20"}, "below_usd"),
        ({"below_usd": "5", "amount_usd": "2"}, "amount_usd"),
        ({"below_usd": "x", "amount_usd": "20"}, "below_usd"),
    ],
)
def test_bad_orders_are_a_400_naming_the_field(stripe_api: StripeStandIn, db: None, data: dict, field: str) -> None:
    owner, account = _owner_and_account("typo")
    client = _logged_in(owner)
    answer = client.post(
        "/billing/credits/auto-recharge", {**data, "account": str(account.public_id)}, HTTP_X_CSRFTOKEN=_csrf_of(client)
    )
    assert answer.status_code == 400 and f'data-field="{field}"' in answer.content.decode()
    assert not AutoRecharge.objects.exists()
