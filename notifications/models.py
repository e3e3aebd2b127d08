"""Balance alerts, webhook endpoints, the outbox of billing events and their deliveries."""

import base64
import secrets
import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

WEBHOOK_URL_MAX_LENGTH = 2000


class EventType(models.TextChoices):
    """Every event an endpoint may subscribe to (the Standard Webhooks `type`)."""

    BALANCE_LOW = "balance.low", "Balance fell below a threshold"
    BALANCE_DEPLETED = "balance.depleted", "Balance at or below 0"
    BALANCE_RECOVERED = "balance.recovered", "Balance back above a threshold (or above 0)"
    CREDITS_EXPIRING = "credits.expiring", "Promotional credit expires within 7 days"
    CREDITS_EXPIRED = "credits.expired", "Promotional credit expired"
    PAYMENT_SUCCEEDED = "payment.succeeded", "Payment succeeded"
    PAYMENT_FAILED = "payment.failed", "Payment failed"
    PAYMENT_REFUNDED = "payment.refunded", "Payment refunded"


# The events decided by the ledger trigger (sql/0002_balance_events.sql); the owner is mailed for these too.
BALANCE_EVENTS = frozenset({EventType.BALANCE_LOW, EventType.BALANCE_DEPLETED, EventType.BALANCE_RECOVERED})


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey("accounts.BillingAccount", on_delete=models.PROTECT, related_name="webhook_endpoints")
    # Judged by notifications.services.validate_endpoint_url (http(s), no private addresses).
    url = models.CharField(max_length=WEBHOOK_URL_MAX_LENGTH)
    events = ArrayField(models.CharField(max_length=32, choices=EventType.choices))
    secret = models.CharField(max_length=100, default=new_webhook_secret, editable=False)
    is_active = models.BooleanField(default=True)
    # Set when the receiver answered 410 Gone (or staff disabled it): nothing more is sent to it.
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=255, blank=True, default="")
    # Deleted by its owner: kept for its delivery log, no longer listed.
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(events__len__gt=0), name="webhook_endpoint_has_events"),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({', '.join(self.events)})"


class BalanceAlert(models.Model):
    """A threshold: balance.low when the ledger balance falls below it, balance.recovered when back at it."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey("accounts.BillingAccount", on_delete=models.PROTECT, related_name="balance_alerts")
    threshold_credits = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "threshold_credits"]
        constraints = [
            models.CheckConstraint(condition=Q(threshold_credits__gt=0), name="balance_alert_threshold_positive"),
            models.UniqueConstraint(fields=["account", "threshold_credits"], name="balance_alert_unique_threshold"),
        ]

    def __str__(self) -> str:
        return f"below {self.threshold_credits} credits"


class BillingEvent(models.Model):
    """The outbox: one row per event, written in the transaction that caused it (the ledger entry that
    crossed a threshold, the payment that settled); dispatched to endpoints and mail after commit."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey("accounts.BillingAccount", on_delete=models.PROTECT, related_name="billing_events")
    type = models.CharField(max_length=32, choices=EventType.choices)
    data = models.JSONField()
    ledger_entry = models.ForeignKey(
        "accounts.CreditLedgerEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    # Deliveries made for the subscribed endpoints and the owner mailed (balance events).
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["id"], condition=Q(dispatched_at__isnull=True), name="event_undispatched")]
        constraints = [models.CheckConstraint(condition=Q(type__in=EventType.values), name="event_type_known")]

    def __str__(self) -> str:
        return f"{self.type} {self.webhook_id}"

    @property
    def webhook_id(self) -> str:
        """The Standard Webhooks `webhook-id`: the same on every retry of this event."""
        return f"msg_{self.public_id.hex}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending (first try or a retry due)"
    SUCCEEDED = "succeeded", "Delivered (2xx)"
    FAILED = "failed", "Failed (gave up after the retry window)"
    DISABLED = "disabled", "Not sent: the endpoint is disabled"


class WebhookDelivery(models.Model):
    """One event to one endpoint: its tries, the last answer, the next retry."""

    Status = DeliveryStatus

    event = models.ForeignKey(BillingEvent, on_delete=models.PROTECT, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.PROTECT, related_name="deliveries")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["event", "endpoint"], name="delivery_unique_event_endpoint")]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_due"),
            models.Index(fields=["status", "created_at"], name="delivery_status_time"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint.url} [{self.status}]"
