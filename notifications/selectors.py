"""Reads of notification settings and the delivery log."""

from django.db.models import QuerySet

from accounts.models import BillingAccount
from notifications.models import BalanceAlert, DeliveryStatus, WebhookDelivery, WebhookEndpoint


def endpoints_of(*, account: BillingAccount) -> QuerySet[WebhookEndpoint]:
    """The account's endpoints, not deleted (disabled ones stay listed, with why)."""
    return WebhookEndpoint.objects.filter(account=account, deleted_at=None).order_by("id")


def alerts_of(*, account: BillingAccount) -> QuerySet[BalanceAlert]:
    return BalanceAlert.objects.filter(account=account).order_by("threshold_credits")


def pending_delivery_count() -> int:
    return WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).count()


def failing_delivery_count() -> int:
    """Deliveries given up on, or waiting for a retry after a failed try: what staff should look at."""
    return WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED).count() + (
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, attempts__gt=0).count()
    )
