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
    # Moved only by the ledger trigger (migration 0002) in the same statement
    # that appends a CreditLedgerEntry; the database refuses any other change.
    balance_credits = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class EndUserAlias(models.Model):
    """A LiteLLM `end_user` value that bills to an account (owned by the service, never the client)."""

    end_user = models.CharField(max_length=255, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="aliases")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "end user aliases"

    def __str__(self) -> str:
        return self.end_user


LEDGER_REASONS = ["usage", "top_up", "grant", "refund", "adjustment"]


class ReturningBigIntegerField(models.BigIntegerField):
    """Read back after INSERT: the database trigger computes the value."""

    db_returning = True


class CreditLedgerEntry(models.Model):
    class Reason(models.TextChoices):
        USAGE = "usage", "Usage"
        TOP_UP = "top_up", "Top-up"
        GRANT = "grant", "Grant"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="ledger_entries")
    amount_credits = models.BigIntegerField()
    reason = models.CharField(max_length=16, choices=Reason.choices)
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
            models.CheckConstraint(condition=Q(reason__in=LEDGER_REASONS), name="ledger_reason_known"),
            # Every usage entry has its receipt, and only usage entries have one.
            models.CheckConstraint(
                condition=(Q(reason="usage") & Q(receipt__isnull=False))
                | (~Q(reason="usage") & Q(receipt__isnull=True)),
                name="ledger_usage_iff_receipt",
            ),
            models.CheckConstraint(
                condition=~Q(reason="usage") | Q(amount_credits__lte=0),
                name="ledger_usage_is_debit",
            ),
            models.CheckConstraint(
                condition=~Q(reason__in=["top_up", "grant", "refund"]) | Q(amount_credits__gt=0),
                name="ledger_credit_is_positive",
            ),
            models.CheckConstraint(
                condition=~Q(reason="adjustment") | ~Q(amount_credits=0),
                name="ledger_adjustment_nonzero",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.amount_credits:+d} → {self.balance_after}"
