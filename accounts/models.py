import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class BillingAccount(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="billing_accounts",
    )
    # Moved only by the ledger trigger ledger_apply (migrations/sql/0003_ledger_rules.sql) in the same statement
    # that appends a CreditLedgerEntry; the database refuses any other change.
    balance_credits = models.BigIntegerField(default=0, editable=False)
    # The credits of its open holds (status held), moved only by the holds' trigger credithold_held_total
    # (migrations/sql/0006_held_total.sql) in the statement that changes a hold: authorize reads it under
    # the row lock, O(1) in the calls in flight.
    held_credits = models.BigIntegerField(default=0, editable=False)
    # The unused credit of its promotional grants (Σ PromotionalCredit.remaining_credits), moved only by the
    # ledger trigger with the lots (migrations/sql/0010_promotional_credits.sql); part of balance_credits, not
    # beside it. A usage debit looks at the lots only when this is above 0, so accounts without promotions
    # pay nothing on the hot path.
    promotional_credits = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(held_credits__gte=0), name="account_held_not_negative"),
            models.CheckConstraint(condition=Q(promotional_credits__gte=0), name="account_promotional_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class LedgerReason(models.TextChoices):
    """Why credits moved: the one list (the CHECK ledger_reason_known is built from its values)."""

    USAGE = "usage", "Usage"
    TOP_UP = "top_up", "Top-up"
    GRANT = "grant", "Grant"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"
    # Payments (payments/): what a customer bought, and what the provider took back.
    PURCHASE = "purchase", "Purchase (card)"
    ONCHAIN_DEPOSIT = "onchain_deposit", "Purchase (USDC on-chain)"
    PURCHASE_REFUND = "purchase_refund", "Purchase refunded to the card"
    DISPUTE = "dispute", "Payment disputed"
    DISPUTE_REVERSAL = "dispute_reversal", "Dispute won"
    # The unused remainder of a promotional grant leaving at its expiry (accounts.services.promotions).
    EXPIRY = "expiry", "Promotional credit expired"


# Reasons that only ever add credits (CHECK ledger_credit_is_positive) and that only take them (CHECK
# ledger_debit_is_negative; usage has its own rule, a zero-cost call debits 0).
CREDIT_ONLY_REASONS = (
    LedgerReason.TOP_UP,
    LedgerReason.GRANT,
    LedgerReason.REFUND,
    LedgerReason.PURCHASE,
    LedgerReason.ONCHAIN_DEPOSIT,
    LedgerReason.DISPUTE_REVERSAL,
)
DEBIT_ONLY_REASONS = (LedgerReason.PURCHASE_REFUND, LedgerReason.DISPUTE, LedgerReason.EXPIRY)


class CreditCategory(models.TextChoices):
    """Paid credit (top-ups, purchases) never expires; promotional credit expires and is used first."""

    PAID = "paid", "Paid"
    PROMOTIONAL = "promotional", "Promotional"


# Burn-down order of promotional grants: the lowest priority number first, then the soonest expiry.
PROMOTION_PRIORITY_MIN = 1
PROMOTION_PRIORITY_MAX = 100
PROMOTION_PRIORITY_DEFAULT = 50


class PromotionalCredit(models.Model):
    """One promotional grant (a lot): funded by its `grant` ledger entry, burnt by usage before paid credit,
    and its unused remainder taken by one `expiry` entry at expires_at.

    remaining_credits is derived state like the balance: only the ledger trigger moves it (funding, burning,
    expiry, all under the account's row lock); the database refuses any other change (promotional_guard).
    """

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="promotional_grants")
    granted_credits = models.BigIntegerField()
    remaining_credits = models.BigIntegerField(default=0, editable=False)
    priority = models.SmallIntegerField(default=PROMOTION_PRIORITY_DEFAULT)
    expires_at = models.DateTimeField()
    # Set by the trigger with the expiry entry; the 7-day warning (credits.expiring) is sent once.
    expired_at = models.DateTimeField(null=True, blank=True, editable=False)
    expiring_notice_at = models.DateTimeField(null=True, blank=True, editable=False)
    memo = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["priority", "expires_at", "id"]
        # The burn order of an account's lots, and the expiry sweep's due lots. Neither names remaining_credits,
        # so burning a lot (an UPDATE of that column per usage debit) stays a HOT update: no index churn.
        indexes = [
            models.Index(
                fields=["account", "priority", "expires_at", "id"],
                condition=Q(expired_at__isnull=True),
                name="promotion_burn_order",
            ),
            models.Index(fields=["expires_at"], condition=Q(expired_at__isnull=True), name="promotion_due"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(granted_credits__gt=0), name="promotion_granted_positive"),
            models.CheckConstraint(
                condition=Q(remaining_credits__gte=0) & Q(remaining_credits__lte=models.F("granted_credits")),
                name="promotion_remaining_within_grant",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=PROMOTION_PRIORITY_MIN) & Q(priority__lte=PROMOTION_PRIORITY_MAX),
                name="promotion_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return f"promotional {self.remaining_credits}/{self.granted_credits} until {self.expires_at:%Y-%m-%d}"


class ReturningBigIntegerField(models.BigIntegerField):
    """Read back after INSERT: the database trigger computes the value."""

    db_returning = True


class CreditLedgerEntry(models.Model):
    Reason = LedgerReason

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="ledger_entries")
    amount_credits = models.BigIntegerField()
    reason = models.CharField(max_length=16, choices=LedgerReason.choices)
    # Set by the BEFORE INSERT trigger to the account's balance after this entry.
    balance_after = ReturningBigIntegerField(default=0, editable=False)
    receipt = models.OneToOneField(
        "receipts.ChargeReceipt",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_entry",
    )
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # The promotional grant this entry funds (reason grant) or expires (reason expiry); null otherwise.
    promotional_credit = models.ForeignKey(
        PromotionalCredit, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    memo = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name_plural = "credit ledger entries"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["account", "created_at"], name="ledger_account_time"),
            models.Index(fields=["account", "reason", "created_at"], name="ledger_account_reason_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(reason__in=LedgerReason.values), name="ledger_reason_known"),
            # Every usage entry has its receipt, and only usage entries have one.
            models.CheckConstraint(
                condition=(Q(reason=LedgerReason.USAGE) & Q(receipt__isnull=False))
                | (~Q(reason=LedgerReason.USAGE) & Q(receipt__isnull=True)),
                name="ledger_usage_iff_receipt",
            ),
            models.CheckConstraint(
                condition=~Q(reason=LedgerReason.USAGE) | Q(amount_credits__lte=0),
                name="ledger_usage_is_debit",
            ),
            models.CheckConstraint(
                condition=~Q(reason__in=CREDIT_ONLY_REASONS) | Q(amount_credits__gt=0),
                name="ledger_credit_is_positive",
            ),
            models.CheckConstraint(
                condition=~Q(reason__in=DEBIT_ONLY_REASONS) | Q(amount_credits__lt=0),
                name="ledger_debit_is_negative",
            ),
            models.CheckConstraint(
                condition=~Q(reason=LedgerReason.ADJUSTMENT) | ~Q(amount_credits=0),
                name="ledger_adjustment_nonzero",
            ),
            # An expiry names its grant; only grants and expiries name one.
            models.CheckConstraint(
                condition=(Q(reason=LedgerReason.EXPIRY) & Q(promotional_credit__isnull=False))
                | (
                    ~Q(reason=LedgerReason.EXPIRY) & (Q(promotional_credit__isnull=True) | Q(reason=LedgerReason.GRANT))
                ),
                name="ledger_expiry_iff_promotion",
            ),
            # A promotional grant is funded once and expires once.
            models.UniqueConstraint(
                fields=["promotional_credit", "reason"],
                condition=Q(promotional_credit__isnull=False),
                name="ledger_promotion_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.amount_credits:+d} → {self.balance_after}"
