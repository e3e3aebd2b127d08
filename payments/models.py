"""Purchases of credits: one PaymentAttempt per purchase, every provider delivery kept as a ProviderEvent.

A payment moves credits only through the ledger (accounts.services.grant_credits with a payment reason and an
idempotency key derived from the provider's reference), so one paid session adds credits once, whatever the
deliveries. The attempt's status follows the transitions in ALLOWED_TRANSITIONS, and nothing else.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.models import BillingAccount


class Provider(models.TextChoices):
    STRIPE = "stripe", "Stripe Checkout"
    USDC = "usdc", "USDC on-chain"


class AttemptStatus(models.TextChoices):
    CREATED = "created", "Created"
    PENDING = "pending", "Pending (waiting for the payment)"
    SUCCEEDED = "succeeded", "Paid"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"
    PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
    REFUNDED = "refunded", "Refunded"
    DISPUTED = "disputed", "Disputed"


S = AttemptStatus
# The one definition of how an attempt may move (payments.services.transition enforces it).
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.CREATED: frozenset({S.PENDING, S.FAILED, S.EXPIRED}),
    S.PENDING: frozenset({S.SUCCEEDED, S.FAILED, S.EXPIRED}),
    S.SUCCEEDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED}),
    S.DISPUTED: frozenset({S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}
# Statuses in which the payment's money arrived (credits were added).
PAID_STATUSES = (S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED)


class PaymentAttempt(models.Model):
    class Kind(models.TextChoices):
        CHECKOUT = "checkout", "Checkout (the owner paid)"
        AUTO_RECHARGE = "auto_recharge", "Auto-recharge (saved card, off-session)"
        ONCHAIN = "onchain", "On-chain transfer"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="payment_attempts")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHECKOUT)
    # Checkout only: keep the card for auto-recharge (Stripe's setup_future_usage=off_session).
    save_card = models.BooleanField(default=False)
    # What the customer chose to pay, in USD (at most 2 decimals), and the credits that buys (no markup).
    amount_usd = models.DecimalField(max_digits=12, decimal_places=2)
    credits = models.BigIntegerField()
    credits_per_usd = models.DecimalField(max_digits=30, decimal_places=10)
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=24, choices=AttemptStatus.choices, default=AttemptStatus.CREATED)
    # Stripe: the Checkout Session id, and the PaymentIntent it created (refunds and disputes name that).
    # USDC: the transaction hash (unique: one transaction pays one attempt, ever).
    provider_reference = models.CharField(max_length=255, null=True, blank=True, unique=True)
    payment_intent = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_url = models.URLField(max_length=2000, blank=True, default="")
    # USDC: the wallet it pays from, the chain, what actually arrived, its confirmations, and whether it was
    # more or less than asked (for staff: "underpaid" / "overpaid", until they mark it resolved).
    payer_wallet = models.CharField(max_length=42, blank=True, default="")
    chain_id = models.BigIntegerField(null=True, blank=True)
    received_usd = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    confirmations = models.IntegerField(default=0)
    mismatch = models.CharField(max_length=16, blank=True, default="")
    mismatch_resolved_at = models.DateTimeField(null=True, blank=True)
    mismatch_resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Cumulative amounts taken back (cents, as Stripe counts them).
    refunded_cents = models.BigIntegerField(default=0)
    disputed_cents = models.BigIntegerField(default=0)
    failure_reason = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["account", "created_at"], name="payment_attempt_account_time")]
        constraints = [
            models.CheckConstraint(condition=Q(amount_usd__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(condition=Q(credits__gt=0), name="payment_credits_positive"),
            models.CheckConstraint(condition=Q(status__in=AttemptStatus.values), name="payment_status_known"),
            models.CheckConstraint(condition=Q(provider__in=Provider.values), name="payment_provider_known"),
            models.CheckConstraint(
                condition=Q(refunded_cents__gte=0) & Q(disputed_cents__gte=0), name="payment_taken_back_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(mismatch__in=["", "underpaid", "overpaid"]), name="payment_mismatch_known"
            ),
            # Never two auto-recharges of one account in flight: the database refuses the second.
            models.UniqueConstraint(
                fields=["account"],
                condition=Q(kind="auto_recharge", status__in=["created", "pending"]),
                name="payment_one_auto_recharge_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.amount_usd} USD for {self.account_id} ({self.status})"

    @property
    def amount_cents(self) -> int:
        return int((self.amount_usd * 100).to_integral_value())


class AutoRecharge(models.Model):
    """An owner's standing order: when available credit falls below `below_usd`, buy `amount_usd` with the
    card saved at a Checkout. A failed charge disables it (and the owner is told by e-mail)."""

    account = models.OneToOneField(BillingAccount, on_delete=models.PROTECT, related_name="auto_recharge")
    enabled = models.BooleanField(default=True)
    below_usd = models.DecimalField(max_digits=12, decimal_places=2)
    amount_usd = models.DecimalField(max_digits=12, decimal_places=2)
    # Set from the Checkout that saved the card (its PaymentIntent's customer and payment method).
    stripe_customer = models.CharField(max_length=255, blank=True, default="")
    stripe_payment_method = models.CharField(max_length=255, blank=True, default="")
    disabled_reason = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(below_usd__gte=0) & Q(amount_usd__gt=0), name="recharge_amounts_valid")
        ]

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"auto-recharge {state}: below {self.below_usd} USD buy {self.amount_usd} USD"


class ProviderEvent(models.Model):
    """One webhook delivery as it arrived, stored before it is processed (dj-stripe's way).

    Kept whether its signature verified or not; processing records its time, or the error and traceback, so
    any delivery can be inspected and reprocessed from the admin.
    """

    provider = models.CharField(max_length=16, choices=Provider.choices)
    # The provider's event id and type (blank when the delivery could not be read).
    event_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    event_type = models.CharField(max_length=100, blank=True, default="")
    headers = models.JSONField(default=dict)
    body = models.TextField()
    signature_valid = models.BooleanField()
    signature_error = models.TextField(blank=True, default="")
    attempt = models.ForeignKey(PaymentAttempt, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    # What processing did ("credited 5,000,000 credits", "duplicate", "no attempt of this service", …).
    outcome = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type or '(unreadable)'} {self.event_id}"
