"""Credit holds (HOLDS_NEVER_OVERSPEND). The table keeps its first name (`accounts_credithold`, db_table)."""

import uuid
from datetime import datetime

from django.db import models
from django.db.models import Q

from accounts.models import BillingAccount
from billing_project.text_rules import CALL_ID_MAX_LENGTH
from payers.models import PayerSource


class HoldStatus(models.TextChoices):
    HELD = "held", "Held"
    SETTLED = "settled", "Settled"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


# A hold that no longer reserves credits, with the time it stopped (CHECK credithold_closed_has_time).
CLOSED_HOLD_STATUSES = (HoldStatus.RELEASED, HoldStatus.EXPIRED)


class CreditHoldQuerySet(models.QuerySet):
    def reserving(self, *, now: datetime) -> "CreditHoldQuerySet":
        """Holds that still reserve credits: status held and not past their expiry (the sweep may lag)."""
        return self.filter(status=HoldStatus.HELD, expires_at__gt=now)

    def overdue(self, *, now: datetime) -> "CreditHoldQuerySet":
        """Holds still marked held although their expiry has passed: the sweep marks them expired."""
        return self.filter(status=HoldStatus.HELD, expires_at__lte=now)


class CreditHold(models.Model):
    """A soft reservation of credits for one proxied call, taken before the call (README, "Can they pay").

    Not ledger money: a hold never moves the balance. available = balance − open holds (status held,
    not past expires_at), decided under the account's row lock. The call's receipt settles it in the
    same transaction (receipts.services.billing.commit_usage_facts); without one it expires.
    """

    Status = HoldStatus

    hold_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="credit_holds")
    litellm_call_id = models.CharField(max_length=CALL_ID_MAX_LENGTH, unique=True)
    model = models.CharField(max_length=255, blank=True, default="")
    payer_source = models.CharField(max_length=16, choices=PayerSource.choices)
    # Kept as sent (Decimal from the JSON text) so a replay is compared with the estimate, not its rounding.
    estimated_cost_usd = models.DecimalField(max_digits=48, decimal_places=30)
    held_credits = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.HELD)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)
    # When it was released or expired.
    closed_at = models.DateTimeField(null=True, blank=True)
    # The call's receipt: set when it settles the hold, or when it lands after the hold was released or expired.
    receipt = models.OneToOneField(
        "receipts.ChargeReceipt",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="credit_hold",
    )

    objects = CreditHoldQuerySet.as_manager()

    class Meta:
        db_table = "accounts_credithold"
        ordering = ["-id"]
        indexes = [
            # available_credits(): the open holds of one account.
            models.Index(
                fields=["account", "expires_at"], condition=Q(status=HoldStatus.HELD), name="credithold_open_by_account"
            ),
            # expire_holds(): the open holds past their expiry.
            models.Index(fields=["expires_at"], condition=Q(status=HoldStatus.HELD), name="credithold_open_by_expiry"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(held_credits__gte=0), name="credithold_held_not_negative"),
            models.CheckConstraint(condition=Q(estimated_cost_usd__gte=0), name="credithold_estimate_not_negative"),
            models.CheckConstraint(condition=Q(status__in=HoldStatus.values), name="credithold_status_known"),
            models.CheckConstraint(
                condition=~Q(status=HoldStatus.SETTLED) | (Q(receipt__isnull=False) & Q(settled_at__isnull=False)),
                name="credithold_settled_has_receipt",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=CLOSED_HOLD_STATUSES) | Q(closed_at__isnull=False),
                name="credithold_closed_has_time",
            ),
            models.CheckConstraint(condition=~Q(litellm_call_id=""), name="credithold_call_id_not_empty"),
        ]

    def __str__(self) -> str:
        return f"hold {self.held_credits} for {self.litellm_call_id} ({self.status})"
