"""After commit: events become deliveries (and mail for balance events); deliveries are sent, signed per the
Standard Webhooks spec, and retried with exponential backoff and jitter for BILLING_WEBHOOK_RETRY_HOURS."""

import json
import logging
import random
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from notifications import metrics
from notifications.models import BALANCE_EVENTS, BillingEvent, DeliveryStatus, EventType, WebhookDelivery
from notifications.services.settings import endpoint_address_problem

logger = logging.getLogger(__name__)

FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=6)
# A claimed delivery is someone's for this long (a worker that died mid-send gives it back).
CLAIM = timedelta(minutes=2)
RESPONSE_KEPT_CHARS = 500


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter: 30 s, 1 min, 2 min, … capped at 6 h, each ±25 %."""
    base = min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_RETRY)
    return base * random.uniform(0.75, 1.25)


def webhook_body(event: BillingEvent) -> str:
    """The JSON body of every delivery of `event`: {"type", "timestamp", "data"}."""
    return json.dumps(
        {"type": event.type, "timestamp": event.created_at.isoformat().replace("+00:00", "Z"), "data": event.data},
        separators=(",", ":"),
        sort_keys=True,
    )


def _balance_mail(event: BillingEvent) -> tuple[str, str]:
    data = event.data
    name = event.account.name
    if event.type == EventType.BALANCE_DEPLETED:
        subject = f"{name}: credit balance used up"
    elif event.type == EventType.BALANCE_LOW:
        subject = f"{name}: credit balance below {data['threshold_credits']:,} credits"
    else:
        subject = f"{name}: credit balance recovered"
    body = (
        f"The credit balance of {name} moved from {data['previous_balance_credits']:,} to "
        f"{data['balance_credits']:,} credits ({EventType(event.type).label}).\n"
    )
    return subject, body


def dispatch_billing_events(*, now: datetime | None = None, limit: int = 500) -> int:
    """Turn new outbox events into deliveries for each active endpoint subscribed to them; mail the owner of
    the balance events. Once per event (its row is locked, then marked dispatched in the same transaction)."""
    now = now or timezone.now()
    with transaction.atomic():
        events = list(
            BillingEvent.objects.filter(dispatched_at=None)
            .select_related("account__owner")
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("id")[:limit]
        )
        if not events:
            return 0
        deliveries = []
        for event in events:
            for endpoint in event.account.webhook_endpoints.filter(is_active=True, events__contains=[event.type]):
                deliveries.append(WebhookDelivery(event=event, endpoint=endpoint, next_attempt_at=now, created_at=now))
            owner = event.account.owner
            if event.type in BALANCE_EVENTS and owner is not None and owner.email:
                subject, body = _balance_mail(event)
                # Inside the transaction: a mail server that refuses leaves the event for the next round.
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [owner.email])
        WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
        BillingEvent.objects.filter(pk__in=[e.pk for e in events]).update(dispatched_at=now)
    return len(events)


def _claim_due(*, now: datetime, limit: int) -> list[int]:
    with transaction.atomic():
        ids = list(
            WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .select_for_update(skip_locked=True)
            .order_by("next_attempt_at", "id")
            .values_list("id", flat=True)[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=ids).update(next_attempt_at=now + CLAIM)
    return ids


def deliver_due_webhooks(*, now: datetime | None = None, limit: int = 100) -> int:
    """Send every delivery due; returns how many were tried."""
    now = now or timezone.now()
    ids = _claim_due(now=now, limit=limit)
    for pk in ids:
        send_delivery(delivery=WebhookDelivery.objects.select_related("event", "endpoint").get(pk=pk), now=now)
    return len(ids)


def send_delivery(*, delivery: WebhookDelivery, now: datetime) -> None:
    """One try: POST the signed body; record the answer; 2xx done, 410 disables the endpoint, else retry."""
    event, endpoint = delivery.event, delivery.endpoint
    if not endpoint.is_active:
        _finish(delivery, status=DeliveryStatus.DISABLED, now=now, error="the endpoint is disabled")
        return
    body = webhook_body(event)
    problem = endpoint_address_problem(endpoint.url)
    code: int | None = None
    error = ""
    if problem:
        error = f"not sent: {problem}"
    else:
        signed_at = timezone.now()
        headers = {
            "content-type": "application/json",
            "webhook-id": event.webhook_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": Webhook(endpoint.secret).sign(event.webhook_id, signed_at, body),
            "user-agent": "llm-billing-webhooks/1",
        }
        try:
            response = httpx.post(
                endpoint.url,
                content=body.encode(),
                headers=headers,
                timeout=settings.BILLING_WEBHOOK_TIMEOUT_SECONDS,
                follow_redirects=False,
            )
            code = response.status_code
            error = "" if 200 <= code < 300 else f"HTTP {code}: {response.text[:RESPONSE_KEPT_CHARS]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT_CHARS]
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status_code = code
    if code is not None and 200 <= code < 300:
        _finish(delivery, status=DeliveryStatus.SUCCEEDED, now=now)
    elif code == 410:
        with transaction.atomic():
            type(endpoint).objects.filter(pk=endpoint.pk).update(
                is_active=False, disabled_at=now, disabled_reason="the receiver answered 410 Gone"
            )
            endpoint.deliveries.filter(status=DeliveryStatus.PENDING).exclude(pk=delivery.pk).update(
                status=DeliveryStatus.DISABLED, next_attempt_at=None
            )
            _finish(delivery, status=DeliveryStatus.DISABLED, now=now, error=error)
        metrics.webhook_endpoints_disabled_total.inc()
    else:
        retry_at = now + retry_delay(delivery.attempts)
        if retry_at > event.created_at + timedelta(hours=settings.BILLING_WEBHOOK_RETRY_HOURS):
            _finish(delivery, status=DeliveryStatus.FAILED, now=now, error=error)
        else:
            delivery.next_attempt_at = retry_at
            delivery.last_error = error
            delivery.save(
                update_fields=["attempts", "last_attempt_at", "last_status_code", "last_error", "next_attempt_at"]
            )
    metrics.webhook_deliveries_total.labels(outcome=delivery.status if delivery.status != "pending" else "retry").inc()


def _finish(delivery: WebhookDelivery, *, status: str, now: datetime, error: str = "") -> None:
    delivery.status = status
    delivery.next_attempt_at = None
    delivery.last_error = error
    if status == DeliveryStatus.SUCCEEDED:
        delivery.delivered_at = now
    delivery.save(
        update_fields=[
            "status",
            "attempts",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "next_attempt_at",
            "delivered_at",
        ]
    )


@transaction.atomic
def replay_delivery(*, delivery: WebhookDelivery, now: datetime | None = None) -> None:
    """Send it again (staff, from the admin): due now, same event and webhook-id; refused to a disabled endpoint."""
    if not delivery.endpoint.is_active:
        raise ValueError(f"endpoint {delivery.endpoint.url} is disabled ({delivery.endpoint.disabled_reason})")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, next_attempt_at=now or timezone.now()
    )
