import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from billing_project.text_rules import CALL_ID_MAX_LENGTH


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
    # Moved only by the ledger trigger (migration 0003) in the same statement
    # that appends a CreditLedgerEntry; the database refuses any other change.
    balance_credits = models.BigIntegerField(default=0, editable=False)
    # The credits of its open holds (status held), moved only by the holds' trigger (migration 0006) in the
    # statement that changes a hold: authorize reads it under the row lock, O(1) in the calls in flight.
    held_credits = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.CheckConstraint(condition=Q(held_credits__gte=0), name="account_held_not_negative")]

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


# --- Who pays: payer bindings (SERVER_DERIVES_IDENTITY) -------------------------------
# One binding per value (unique), never empty. Values are matched exactly as LiteLLM logs them.
BINDING_VALUE_MAX_LENGTH = 255


class PayerSource(models.TextChoices):
    """Which binding decided the payer of a record (stored on receipts as `payer_source`)."""

    KEY = "key", "API key"
    TEAM = "team", "Team"
    RUN = "run", "Registered run"
    END_USER = "end_user", "End-user alias"


class ApiKeyBinding(models.Model):
    """A LiteLLM API key, by the hash LiteLLM logs in `metadata.user_api_key_hash`, bills to an account.

    A gateway key is held by a trusted server that names its own users: its
    records are billed by their registered run or end-user alias instead.
    """

    # sha256 hex (64) for sk- keys, but LiteLLM also logs literals such as
    # `litellm_proxy_master_key` and `hashed-jwt-<sha256>`.
    key_hash = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="key_bindings")
    is_gateway = models.BooleanField(
        default=False,
        help_text="A trusted server's key: its records bill the registered run or end-user alias they name.",
    )
    label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "API key binding"
        constraints = [models.CheckConstraint(condition=~Q(key_hash=""), name="apikeybinding_key_hash_not_empty")]

    def __str__(self) -> str:
        kind = "gateway key" if self.is_gateway else "key"
        return f"{kind} {self.key_hash[:12]}…" if len(self.key_hash) > 16 else f"{kind} {self.key_hash}"


class TeamBinding(models.Model):
    """A LiteLLM team (`metadata.user_api_key_team_id`) bills to an account."""

    team_id = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="team_bindings")
    label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "team binding"
        constraints = [models.CheckConstraint(condition=~Q(team_id=""), name="teambinding_team_id_not_empty")]

    def __str__(self) -> str:
        return f"team {self.team_id}"


class RunBinding(models.Model):
    """A registered external-executor run: every attempt of it bills to the account.

    Run ids are any printable text up to 255 characters and may contain "/":
    `end_user = "{run_id}/{attempt}"` is split at its last "/".
    """

    run_id = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="run_bindings")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "run binding"
        constraints = [
            models.CheckConstraint(condition=~Q(run_id=""), name="runbinding_run_id_not_empty"),
            models.CheckConstraint(condition=~Q(run_id__regex=r"[[:cntrl:]]"), name="runbinding_run_id_printable"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id}"


# --- Can they pay: credit holds (HOLDS_NEVER_OVERSPEND) ---------------------------------
class CreditHold(models.Model):
    """A soft reservation of credits for one proxied call, taken before the call (README, "Can they pay").

    Not ledger money: a hold never moves the balance. available = balance − open holds (status held,
    not past expires_at), decided under the account's row lock. The call's receipt settles it in the
    same transaction (receipts.services.billing.commit_usage_facts); without one it expires.
    """

    class Status(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    hold_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="credit_holds")
    litellm_call_id = models.CharField(max_length=CALL_ID_MAX_LENGTH, unique=True)
    model = models.CharField(max_length=255, blank=True, default="")
    payer_source = models.CharField(max_length=16, choices=PayerSource.choices)
    # Kept as sent (Decimal from the JSON text) so a replay is compared with the estimate, not its rounding.
    estimated_cost_usd = models.DecimalField(max_digits=48, decimal_places=30)
    held_credits = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HELD)
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

    class Meta:
        ordering = ["-id"]
        indexes = [
            # available_credits(): the open holds of one account.
            models.Index(
                fields=["account", "expires_at"], condition=Q(status="held"), name="credithold_open_by_account"
            ),
            # expire_holds(): the open holds past their expiry.
            models.Index(fields=["expires_at"], condition=Q(status="held"), name="credithold_open_by_expiry"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(held_credits__gte=0), name="credithold_held_not_negative"),
            models.CheckConstraint(condition=Q(estimated_cost_usd__gte=0), name="credithold_estimate_not_negative"),
            models.CheckConstraint(
                condition=Q(status__in=["held", "settled", "released", "expired"]), name="credithold_status_known"
            ),
            models.CheckConstraint(
                condition=~Q(status="settled") | (Q(receipt__isnull=False) & Q(settled_at__isnull=False)),
                name="credithold_settled_has_receipt",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=["released", "expired"]) | Q(closed_at__isnull=False),
                name="credithold_closed_has_time",
            ),
            models.CheckConstraint(condition=~Q(litellm_call_id=""), name="credithold_call_id_not_empty"),
        ]

    def __str__(self) -> str:
        return f"hold {self.held_credits} for {self.litellm_call_id} ({self.status})"
