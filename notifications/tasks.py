"""Celery tasks of notifications: thin, they call services."""

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from billing_project.celery import DB_RETRY_COUNTDOWN_SECONDS
from notifications import metrics
from notifications.selectors import pending_delivery_count
from notifications.services import deliver_due_webhooks, dispatch_billing_events


@shared_task(bind=True, max_retries=3)
def deliver_billing_events(self: Any) -> dict[str, int]:
    """Dispatch new outbox events (deliveries, owner mail), then send every webhook delivery due."""
    try:
        dispatched = dispatch_billing_events()
        sent = deliver_due_webhooks()
        metrics.webhook_deliveries_pending.set(pending_delivery_count())
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    return {"dispatched": dispatched, "sent": sent}
