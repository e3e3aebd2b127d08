"""Balance alerts and outbound webhooks: decided by the ledger once per crossing, signed per Standard Webhooks,
retried, disabled by 410; received by a real HTTP server on loopback and verified with `standardwebhooks`."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from accounts.models import BillingAccount
from accounts.services import (
    expire_promotional_credits,
    grant_credits,
    grant_promotional_credits,
    notify_expiring_promotions,
)
from integrations.litellm.records import parse_usage_record
from notifications.models import BillingEvent, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from notifications.services import (
    balance_alert_create,
    deliver_due_webhooks,
    dispatch_billing_events,
    retry_delay,
    webhook_endpoint_create,
    webhook_endpoint_delete,
)
from payments.models import AttemptStatus, PaymentAttempt
from payments.services.attempts import transition
from receipts.services import commit_usage_facts
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record
from tests.notifications.receiver import webhook_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def payer(db) -> BillingAccount:
    account = BillingAccountFactory(owner__email="owner@example.com")
    EndUserAliasFactory(account=account, end_user="hook-user")
    grant_credits(account=account, amount_credits=1000, reason="top_up")
    return account


def _bill(*credits: int) -> None:
    facts = [parse_usage_record(litellm_record(end_user="hook-user", cost=Decimal(c) / 1_000_000)) for c in credits]
    commit_usage_facts(facts=facts)


def _events(account: BillingAccount) -> list[tuple[str, int]]:
    return [(e.type, e.data["threshold_credits"]) for e in BillingEvent.objects.filter(account=account).order_by("id")]


def test_crossing_a_threshold_sends_exactly_one_signed_balance_low(payer: BillingAccount) -> None:
    balance_alert_create(account=payer, threshold_credits=500)
    with webhook_receiver() as receiver:
        endpoint = webhook_endpoint_create(account=payer, url=receiver.url, events=["balance.low"])
        _bill(300)  # 700: above the threshold
        _bill(250)  # 450: crossed
        _bill(100)  # 350: still below
        _bill(50)  # 300: still below, no repeat
        assert _events(payer) == [("balance.low", 500)]
        assert dispatch_billing_events() == 1
        assert deliver_due_webhooks() == 1
        assert dispatch_billing_events() == 0 and deliver_due_webhooks() == 0

    [got] = receiver.received
    payload = Webhook(endpoint.secret).verify(got.body, got.headers)  # raises unless the signature verifies
    assert payload["type"] == "balance.low"
    assert payload["data"]["threshold_credits"] == 500 and payload["data"]["balance_credits"] == 450
    assert payload["data"]["account"] == str(payer.public_id)
    assert got.headers["webhook-id"] == BillingEvent.objects.get().webhook_id
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(endpoint.secret).verify(got.body.replace(b"450", b"451"), got.headers)
    assert WebhookDelivery.objects.get().status == DeliveryStatus.SUCCEEDED
    # The owner is mailed the balance event too.
    assert [m.to for m in mail.outbox] == [["owner@example.com"]] and "below 500" in mail.outbox[0].subject


def test_recovery_rearms_and_depletion_is_its_own_event(payer: BillingAccount) -> None:
    balance_alert_create(account=payer, threshold_credits=500)
    _bill(600)  # 400: low
    grant_credits(account=payer, amount_credits=200, reason="top_up")  # 600: recovered
    _bill(150)  # 450: low again, after recovering
    _bill(500)  # -50: depleted (already below 500)
    grant_credits(account=payer, amount_credits=100, reason="top_up")  # 50: recovered from depleted only
    assert _events(payer) == [
        ("balance.low", 500),
        ("balance.recovered", 500),
        ("balance.low", 500),
        ("balance.depleted", 0),
        ("balance.recovered", 0),
    ]


def test_a_receiver_answering_500_gets_the_event_on_a_retry(payer: BillingAccount) -> None:
    balance_alert_create(account=payer, threshold_credits=900)
    with webhook_receiver(500) as receiver:
        webhook_endpoint_create(account=payer, url=receiver.url, events=["balance.low", "balance.depleted"])
        _bill(200)
        dispatch_billing_events()
        now = timezone.now()
        assert deliver_due_webhooks(now=now) == 1
        delivery = WebhookDelivery.objects.get()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
        assert deliver_due_webhooks(now=now) == 0  # not due yet: backoff
        assert deliver_due_webhooks(now=delivery.next_attempt_at) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 2, 200)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same message, retried
    assert first.body == second.body


def test_a_receiver_answering_410_is_disabled(payer: BillingAccount) -> None:
    balance_alert_create(account=payer, threshold_credits=900)
    balance_alert_create(account=payer, threshold_credits=800)
    with webhook_receiver(410) as receiver:
        endpoint = webhook_endpoint_create(account=payer, url=receiver.url, events=["balance.low"])
        _bill(300)  # crosses 900 and 800: two events
        dispatch_billing_events()
        assert deliver_due_webhooks(limit=1) == 1
        assert deliver_due_webhooks() == 0  # the other delivery is not sent to a disabled endpoint
        _bill(600)
        dispatch_billing_events()
        assert deliver_due_webhooks() == 0
    endpoint.refresh_from_db()
    assert not endpoint.is_active and "410" in endpoint.disabled_reason
    assert len(receiver.received) == 1
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.DISABLED}


def test_retries_back_off_exponentially_with_jitter_for_about_three_days(payer: BillingAccount) -> None:
    delays = [retry_delay(n) for n in range(1, 20)]
    assert timedelta(seconds=22) <= delays[0] <= timedelta(seconds=38)
    assert all(d <= timedelta(hours=7, minutes=30) for d in delays)
    assert delays[8] > delays[2] * 16 * 0.5
    balance_alert_create(account=payer, threshold_credits=900)
    with webhook_receiver(then=503) as receiver:
        webhook_endpoint_create(account=payer, url=receiver.url, events=["balance.low"])
        _bill(200)
        dispatch_billing_events()
        event = BillingEvent.objects.get()
        now = timezone.now()
        while (delivery := WebhookDelivery.objects.get()).status == DeliveryStatus.PENDING:
            now = max(now, delivery.next_attempt_at)
            assert deliver_due_webhooks(now=now) == 1
    assert delivery.status == DeliveryStatus.FAILED
    assert timedelta(hours=60) < now - event.created_at <= timedelta(hours=72)
    assert 10 <= delivery.attempts == len(receiver.received) <= 30


def test_the_ledger_trigger_writes_the_event_with_the_entry(payer: BillingAccount) -> None:
    """A raw ledger insert (no Python path involved) still records the crossing: the database decides."""
    balance_alert_create(account=payer, threshold_credits=990)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo,"
            " created_at) VALUES (%s, -20, 'adjustment', 0, 'raw', now()) RETURNING id",
            [payer.pk],
        )
        entry_id = cursor.fetchone()[0]
    event = BillingEvent.objects.get()
    assert (event.type, event.ledger_entry_id, event.data["balance_credits"]) == ("balance.low", entry_id, 980)
    assert json.loads(json.dumps(event.data))["reason"] == "adjustment"


def test_deleted_endpoints_get_nothing(payer: BillingAccount) -> None:
    balance_alert_create(account=payer, threshold_credits=900)
    with webhook_receiver() as receiver:
        endpoint = webhook_endpoint_create(account=payer, url=receiver.url, events=["balance.low"])
        webhook_endpoint_delete(endpoint=endpoint)
        _bill(200)
        dispatch_billing_events()
        assert deliver_due_webhooks() == 0
    assert receiver.received == []
    assert WebhookEndpoint.objects.get().deleted_at is not None


def test_promotions_and_payments_write_their_events_in_their_own_transaction(payer: BillingAccount) -> None:
    now = timezone.now()
    grant_promotional_credits(account=payer, amount_credits=50, expires_at=now + timedelta(days=3), now=now)
    notify_expiring_promotions(now=now)
    expire_promotional_credits(now=now + timedelta(days=3, seconds=1))
    attempt = PaymentAttempt.objects.create(
        account=payer, provider="stripe", amount_usd=Decimal("20.00"), credits=20_000_000, credits_per_usd=1_000_000
    )
    with transaction.atomic():
        locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
        transition(locked, AttemptStatus.PENDING)
        transition(locked, AttemptStatus.FAILED)
    types = list(BillingEvent.objects.filter(account=payer).order_by("id").values_list("type", flat=True))
    assert types == ["credits.expiring", "credits.expired", "payment.failed"]
    expired = BillingEvent.objects.get(type="credits.expired")
    assert expired.data["expired_credits"] == 50 and expired.ledger_entry.reason == "expiry"
