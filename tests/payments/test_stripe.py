"""Customers pay with Stripe Checkout: the real webhook view with payloads signed by the stripe library's own
signing, Checkout Sessions opened against a loopback stand-in of Stripe's API (STRIPE_API_BASE).

Every scenario ends with the books tying: the account's balance is its ledger's sum, and every credit a
payment moved is one ledger entry with a payment reason.
"""

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from accounts.models import BillingAccount, LedgerReason
from accounts.services import grant_credits
from payments.exceptions import InvalidTransition
from payments.models import AttemptStatus, PaymentAttempt, ProviderEvent
from payments.services import transition
from tests.books import ledger_total
from tests.factories import BillingAccountFactory
from tests.stripe_standin import (
    StripeStandIn,
    charge_event,
    dispute_event,
    session_event,
    signed,
)

WEBHOOK = "/api/payments/stripe/webhook"
BUY = "/billing/credits/buy"
PASSWORD = "correct horse battery"


@pytest.fixture
def owner(db: None) -> Any:
    return get_user_model().objects.create_user(username="payer", password=PASSWORD)


@pytest.fixture
def buyer_account(owner: Any) -> BillingAccount:
    return BillingAccountFactory(name="Buyer Ltd", owner=owner)


def _logged_in(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _csrf(client: Client) -> str:
    client.get("/billing/credits/")
    return client.cookies["csrftoken"].value


def _buy(client: Client, account: BillingAccount, amount: str) -> Any:
    return client.post(BUY, {"amount_usd": amount, "account": str(account.public_id)}, HTTP_X_CSRFTOKEN=_csrf(client))


def _deliver(payload: dict[str, Any], **signing: Any) -> Any:
    body, header = signed(payload, **signing)
    return Client().post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def _books_tie(account: BillingAccount) -> None:
    account.refresh_from_db()
    assert account.balance_credits == ledger_total(account=account)


def _purchase(stripe_api: StripeStandIn, owner: Any, account: BillingAccount, amount: str = "25.00") -> dict:
    response = _buy(_logged_in(owner), account, amount)
    assert response.status_code == 303, response.content
    [session] = [s for s in stripe_api.sessions.values() if s["url"] == response["Location"]]
    return session


def test_buy_opens_a_checkout_session_for_the_amount_and_answers_303(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "25.50")
    attempt = PaymentAttempt.objects.get()
    assert attempt.status == AttemptStatus.PENDING and attempt.provider_reference == session["id"]
    assert (attempt.amount_usd, attempt.credits) == (Decimal("25.50"), 25_500_000)
    assert session["mode"] == "payment" and session["amount_total"] == 2550 and session["currency"] == "usd"
    assert session["client_reference_id"] == str(attempt.public_id)
    assert session["metadata"] == {"payment_attempt": str(attempt.public_id)}
    assert session["success_url"].endswith(f"/billing/credits/purchases/{attempt.public_id}/")
    assert buyer_account.ledger_entries.count() == 0  # nothing is credited before Stripe says it is paid


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("4.99", "between"),
        ("10000.01", "between"),
        ("-5", "between"),
        ("abc", "number"),
        ("10.001", "2 decimals"),
        ("NaN", "finite"),
        ("", "number"),
    ],
)
def test_bad_amounts_are_a_400_naming_the_field_and_open_nothing(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount, amount: str, problem: str
) -> None:
    response = _buy(_logged_in(owner), buyer_account, amount)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-field="amount_usd"' in page and problem in page
    assert not PaymentAttempt.objects.exists() and stripe_api.sessions == {}


def test_another_users_account_is_a_404_and_the_form_needs_its_csrf_token(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    stranger = get_user_model().objects.create_user(username="stranger", password=PASSWORD)
    BillingAccountFactory(owner=stranger)
    assert _buy(_logged_in(stranger), buyer_account, "10").status_code == 404
    no_token = _logged_in(owner).post(BUY, {"amount_usd": "10", "account": str(buyer_account.public_id)})
    assert no_token.status_code == 403
    assert Client().post(BUY, {"amount_usd": "10"}).status_code == 302  # to the login page
    assert not PaymentAttempt.objects.exists()


def test_a_paid_session_credits_once_and_the_return_page_says_paid(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "25")
    paid = session_event("checkout.session.completed", session)
    first, again = _deliver(paid), _deliver(paid)
    assert first.status_code == again.status_code == 200
    assert first.json()["outcome"] == "credited 25,000,000 credits" and again.json()["outcome"] == "already credited"
    [entry] = buyer_account.ledger_entries.all()
    assert (entry.reason, entry.amount_credits) == (LedgerReason.PURCHASE, 25_000_000)
    assert entry.idempotency_key == f"stripe:{session['id']}:purchase"
    attempt = PaymentAttempt.objects.get()
    assert attempt.status == AttemptStatus.SUCCEEDED and attempt.payment_intent == session["payment_intent"]
    page = _logged_in(owner).get(f"/billing/credits/purchases/{attempt.public_id}/").content.decode()
    assert 'data-value="succeeded"' in page and "25,000,000" in page
    assert ProviderEvent.objects.filter(signature_valid=True, attempt=attempt).count() == 2
    _books_tie(buyer_account)


@pytest.mark.django_db(transaction=True)
def test_three_concurrent_deliveries_of_one_paid_session_credit_once(stripe_api: StripeStandIn) -> None:
    owner = get_user_model().objects.create_user(username="concurrent", password=PASSWORD)
    account = BillingAccountFactory(owner=owner)
    session = _purchase(stripe_api, owner, account, "12.34")
    body, header = signed(session_event("checkout.session.completed", session))
    barrier, answers = threading.Barrier(3), []

    def deliver() -> None:
        try:
            barrier.wait(timeout=10)
            answers.append(
                Client().post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(a.status_code for a in answers) == [200, 200, 200]
    assert sorted(a.json()["outcome"] for a in answers) == [
        "already credited",
        "already credited",
        "credited 12,340,000 credits",
    ]
    assert account.ledger_entries.filter(reason=LedgerReason.PURCHASE).count() == 1
    _books_tie(account)


@pytest.mark.parametrize(
    "tamper",
    ["unsigned", "wrong secret", "stale", "body changed"],
)
def test_a_delivery_whose_signature_does_not_verify_is_stored_as_invalid_and_credits_nothing(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount, tamper: str
) -> None:
    session = _purchase(stripe_api, owner, buyer_account)
    payload = session_event("checkout.session.completed", session)
    body, header = signed(payload)
    if tamper == "unsigned":
        header = ""
    elif tamper == "wrong secret":
        body, header = signed(payload, secret="whsec_" + "q" * 30)
    elif tamper == "stale":
        body, header = signed(payload, timestamp=int(time.time()) - 301)
    else:
        body = body.replace('"amount_total": 2500', '"amount_total": 999999')
    response = Client().post(WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 400 and response.json()["field"] == "Stripe-Signature"
    stored = ProviderEvent.objects.get()
    assert not stored.signature_valid and stored.signature_error and stored.body == body
    assert stored.processed_at is None
    assert not buyer_account.ledger_entries.exists()


def test_a_rotated_secret_still_verifies(stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount) -> None:
    session = _purchase(stripe_api, owner, buyer_account)
    assert _deliver(session_event("checkout.session.completed", session)).status_code == 200  # second secret
    assert buyer_account.ledger_entries.count() == 1


def test_a_session_this_service_never_created_and_a_wrong_amount_credit_nothing(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "25")
    foreign = {**session, "id": "cs_test_someone_elses", "metadata": {"payment_attempt": "x"}}
    assert _deliver(session_event("checkout.session.completed", foreign)).json()["outcome"].startswith("no attempt")
    # The attempt's id named by a session that is not the attempt's own.
    forged = {**session, "id": "cs_test_forged"}
    assert _deliver(session_event("checkout.session.completed", forged)).json()["outcome"].startswith("no attempt")
    cheaper = _deliver(session_event("checkout.session.completed", session, amount_total=500))
    assert cheaper.json()["outcome"].startswith("amount or currency differs")
    euros = _deliver(session_event("checkout.session.completed", session, currency="eur"))
    assert euros.json()["outcome"].startswith("amount or currency differs")
    assert not buyer_account.ledger_entries.exists()
    assert PaymentAttempt.objects.get().status == AttemptStatus.PENDING


def test_async_payments_expiry_and_failure(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    slow = _purchase(stripe_api, owner, buyer_account, "10")
    waiting = _deliver(session_event("checkout.session.completed", slow, payment_status="unpaid"))
    assert "waiting" in waiting.json()["outcome"] and not buyer_account.ledger_entries.exists()
    assert (
        _deliver(session_event("checkout.session.async_payment_succeeded", slow))
        .json()["outcome"]
        .startswith("credited")
    )
    failing = _purchase(stripe_api, owner, buyer_account, "11")
    _deliver(session_event("checkout.session.async_payment_failed", failing, payment_status="unpaid"))
    abandoned = _purchase(stripe_api, owner, buyer_account, "12")
    _deliver(session_event("checkout.session.expired", abandoned, payment_status="unpaid", status="expired"))
    statuses = {a.amount_usd: a.status for a in PaymentAttempt.objects.all()}
    assert statuses == {Decimal("10"): "succeeded", Decimal("11"): "failed", Decimal("12"): "expired"}
    # An expired session's late "paid" (Stripe never sends one) changes nothing.
    assert "already expired" in _deliver(session_event("checkout.session.completed", abandoned)).json()["outcome"]
    assert buyer_account.ledger_entries.count() == 1
    _books_tie(buyer_account)


def test_a_refund_after_spending_takes_the_balance_negative_by_the_refund(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "20")
    _deliver(session_event("checkout.session.completed", session))
    # Spend it all: 20 USD of credits used (an adjustment stands in for the usage the one writer would debit).
    _spend(buyer_account, -20_000_000)
    partial = _deliver(charge_event(session, amount_refunded=500))  # 5 USD back to the card
    assert partial.json()["outcome"] == "took back 5,000,000 credits (500 cents refunded)"
    assert _deliver(charge_event(session, amount_refunded=500)).json()["outcome"].startswith("already taken back")
    assert PaymentAttempt.objects.get().status == AttemptStatus.PARTIALLY_REFUNDED
    rest = _deliver(charge_event(session, amount_refunded=2000))  # cumulative: the other 15 USD
    assert rest.json()["outcome"] == "took back 15,000,000 credits (1500 cents refunded)"
    buyer_account.refresh_from_db()
    assert buyer_account.balance_credits == -20_000_000  # negative by exactly the refund
    assert PaymentAttempt.objects.get().status == AttemptStatus.REFUNDED
    refunds = buyer_account.ledger_entries.filter(reason=LedgerReason.PURCHASE_REFUND)
    assert sorted(e.amount_credits for e in refunds) == [-15_000_000, -5_000_000]
    _books_tie(buyer_account)


def test_a_refund_arriving_before_the_payment_is_matched_through_stripe_and_counted_once(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "10")
    PaymentAttempt.objects.update(payment_intent=None)  # as if the session never told us its intent
    early = _deliver(charge_event(session, amount_refunded=1000))
    assert early.json()["outcome"] == "took back 10,000,000 credits (1000 cents refunded)"
    assert any(path == "/v1/checkout/sessions" and method == "GET" for method, path, _ in stripe_api.requests)
    _deliver(session_event("checkout.session.completed", session))
    buyer_account.refresh_from_db()
    assert buyer_account.balance_credits == 0
    assert PaymentAttempt.objects.get().status == AttemptStatus.REFUNDED
    _books_tie(buyer_account)


def test_a_dispute_takes_the_amount_and_a_won_dispute_gives_it_back_once(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "30")
    _deliver(session_event("checkout.session.completed", session))
    opened = dispute_event("charge.dispute.created", session, dispute_id="dp_1", amount=3000, status="needs_response")
    assert _deliver(opened).json()["outcome"] == "took back 30,000,000 credits while disputed"
    assert _deliver(opened).json()["outcome"] == "already taken"
    assert PaymentAttempt.objects.get().status == AttemptStatus.DISPUTED
    buyer_account.refresh_from_db()
    assert buyer_account.balance_credits == 0
    won = dispute_event("charge.dispute.closed", session, dispute_id="dp_1", amount=3000, status="won")
    assert _deliver(won).json()["outcome"] == "gave back 30,000,000 credits (dispute won)"
    assert _deliver(won).json()["outcome"] == "already given back"
    buyer_account.refresh_from_db()
    assert buyer_account.balance_credits == 30_000_000
    assert PaymentAttempt.objects.get().status == AttemptStatus.SUCCEEDED
    lost = dispute_event("charge.dispute.created", session, dispute_id="dp_2", amount=1000, status="needs_response")
    _deliver(lost)
    closed = dispute_event("charge.dispute.closed", session, dispute_id="dp_2", amount=1000, status="lost")
    assert "stay taken back" in _deliver(closed).json()["outcome"]
    buyer_account.refresh_from_db()
    assert buyer_account.balance_credits == 20_000_000
    _books_tie(buyer_account)


def test_a_processing_failure_keeps_its_traceback_and_can_be_reprocessed_from_the_admin(
    stripe_api: StripeStandIn, owner: Any, buyer_account: BillingAccount
) -> None:
    session = _purchase(stripe_api, owner, buyer_account, "10")
    PaymentAttempt.objects.update(payment_intent=None)
    stripe_api.fail_next = 10  # the session lookup of an early refund cannot reach Stripe
    with pytest.raises(Exception, match="Stripe did not answer"):
        Client(raise_request_exception=True).post(
            WEBHOOK,
            data=(signed_pair := signed(charge_event(session, amount_refunded=1000)))[0],
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=signed_pair[1],
        )
    failed = ProviderEvent.objects.get()
    assert failed.processed_at is None and "StripeUnavailable" in failed.error and "Traceback" in failed.traceback
    assert not buyer_account.ledger_entries.exists()
    stripe_api.fail_next = 0
    staff = get_user_model().objects.create_superuser(username="staff", password=PASSWORD)
    admin = Client()
    admin.force_login(staff)
    response = admin.post(
        "/admin/payments/providerevent/", {"action": "reprocess", "_selected_action": [failed.pk]}, follow=True
    )
    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]] == ["reprocessed 1 events, 0 failed"]
    failed.refresh_from_db()
    assert failed.processed_at is not None and failed.error == "" and failed.outcome.startswith("took back")
    attempt_page = admin.get(f"/admin/payments/paymentattempt/{PaymentAttempt.objects.get().pk}/change/")
    assert f"stripe:{session['id']}:refund:1000" in attempt_page.content.decode()


def test_only_the_allowed_transitions_happen(buyer_account: BillingAccount) -> None:
    attempt = PaymentAttempt.objects.create(
        account=buyer_account, provider="stripe", amount_usd=Decimal("5"), credits=5_000_000, credits_per_usd=1
    )
    for wrong in (AttemptStatus.SUCCEEDED, AttemptStatus.REFUNDED, AttemptStatus.DISPUTED):
        with pytest.raises(InvalidTransition):
            transition(attempt, wrong)
    assert transition(attempt, AttemptStatus.PENDING) and not transition(attempt, AttemptStatus.PENDING)
    assert transition(attempt, AttemptStatus.EXPIRED)
    with pytest.raises(InvalidTransition):
        transition(attempt, AttemptStatus.PENDING)


def test_the_buy_form_says_when_stripe_is_not_configured(settings: Any, owner: Any, buyer_account: Any) -> None:
    settings.STRIPE_SECRET_KEY = ""
    page = _logged_in(owner).get("/billing/credits/").content.decode()
    assert 'data-field="stripe-not-configured"' in page
    refused = _buy(_logged_in(owner), buyer_account, "10")
    assert refused.status_code == 503 and "not available" in refused.content.decode()
    assert PaymentAttempt.objects.get().status == AttemptStatus.FAILED


def _spend(account: BillingAccount, credits: int) -> None:
    grant_credits(account=account, amount_credits=credits, reason="adjustment", idempotency_key="spent-it")
