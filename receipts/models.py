import operator
from functools import reduce

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Coalesce

from accounts.money import COST_DECIMAL_PLACES, COST_MAX_DIGITS
from billing_project.text_rules import CALL_ID_MAX_LENGTH
from payers.models import PayerSource

RUN_ID_MAX_LENGTH = 255
# "{run_id}/{attempt}/{litellm_call_id}" with an attempt of at most 10 digits, plus "~" and a 16-digit
# fingerprint for a call that reused another's call id (receipts.facts.UsageFact.reused_call_reference):
# always fits, never cut.
SOURCE_REFERENCE_MAX_LENGTH = RUN_ID_MAX_LENGTH + 1 + 10 + 1 + CALL_ID_MAX_LENGTH + 1 + 16


class ChargeReceipt(models.Model):
    """One billed LiteLLM call. Written only by receipts.services.commit_usage_fact()."""

    class Status(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure (billed: provider charged a partial call)"

    # Indexed by receipt_account_time (its leading column).
    account = models.ForeignKey(
        "accounts.BillingAccount", on_delete=models.PROTECT, related_name="receipts", db_index=False
    )
    source_system = models.CharField(max_length=32, default="litellm")
    # "{run_id}/{attempt}/{litellm_call_id}": the idempotency key of a charge.
    source_reference = models.CharField(max_length=SOURCE_REFERENCE_MAX_LENGTH)
    litellm_call_id = models.CharField(max_length=CALL_ID_MAX_LENGTH)
    request_id = models.CharField(max_length=255, blank=True, default="")
    run_id = models.CharField(max_length=RUN_ID_MAX_LENGTH)
    attempt = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUCCESS)
    model_group = models.CharField(max_length=255, blank=True, default="")
    model = models.CharField(max_length=255, blank=True, default="")
    provider = models.CharField(max_length=100, blank=True, default="")
    call_type = models.CharField(max_length=64, blank=True, default="")
    stream = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    # USD exactly as LiteLLM sent it (parsed from the JSON text, never a float).
    cost_usd = models.DecimalField(max_digits=COST_MAX_DIGITS, decimal_places=COST_DECIMAL_PLACES)
    charged_credits = models.BigIntegerField()
    # The rate this charge was made at: charged_credits = ceil(cost_usd × credits_per_usd × markup) (a CHECK).
    credits_per_usd = models.DecimalField(max_digits=30, decimal_places=10)
    markup = models.DecimalField(max_digits=20, decimal_places=10)
    zero_cost_suspect = models.BooleanField(default=False)
    # BILLING_UNPRICED_CALLS=charge_hold: LiteLLM sent no cost, so the call was charged its hold's estimate
    # (cost_usd); a cost learnt later is corrected by an `adjustment` entry (receipts.services.billing).
    provisional_cost = models.BooleanField(default=False)
    end_user = models.CharField(max_length=255)
    api_key_hash = models.CharField(max_length=255, blank=True, default="")
    api_key_alias = models.CharField(max_length=255, blank=True, default="")
    team_id = models.CharField(max_length=255, blank=True, default="")
    # Which binding decided the payer (payers.selectors.resolve_payers); end_user stays for attribution.
    payer_source = models.CharField(max_length=16, choices=PayerSource.choices)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    # LiteLLM's cost_breakdown for audit (bounded numbers as exact strings); the rest of the record stays in
    # its delivery: a receipt links to the delivery and position it came from, or to the spend-log row.
    cost_breakdown = models.JSONField(null=True, blank=True)
    ingest_batch = models.ForeignKey(
        "receipts.IngestBatch", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    batch_position = models.IntegerField(null=True, blank=True)
    spend_log_request_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["source_system", "source_reference"], name="receipt_unique_source"),
            models.CheckConstraint(condition=Q(cost_usd__gte=0), name="receipt_cost_nonnegative"),
            models.CheckConstraint(condition=Q(charged_credits__gte=0), name="receipt_credits_nonnegative"),
            models.CheckConstraint(
                condition=Q(prompt_tokens__gte=0) & Q(completion_tokens__gte=0) & Q(total_tokens__gte=0),
                name="receipt_tokens_nonnegative",
            ),
        ]
        indexes = [
            # Plain btrees for exact lookups (db_index on a CharField would add a second,
            # LIKE-only index to every write on the ingest path).
            models.Index(fields=["litellm_call_id"], name="receipt_call_id"),
            models.Index(fields=["request_id"], name="receipt_request_id"),
            models.Index(fields=["run_id"], name="receipt_run_id"),
            models.Index(fields=["end_user"], name="receipt_end_user"),
            models.Index(fields=["created_at"], name="receipt_created_at"),
            models.Index(fields=["account", "created_at"], name="receipt_account_time"),
            models.Index(fields=["model_group", "created_at"], name="receipt_model_time"),
            models.Index(fields=["provider"], name="receipt_provider"),
            # The call's time: reconcile selects a window's receipts by it (reconciliation/checks.py).
            models.Index(Coalesce("started_at", "created_at"), name="receipt_call_time"),
            # An account's calls newest first by call time: the activity page's keyset (activity.selectors).
            models.Index(
                F("account"), Coalesce("started_at", "created_at").desc(), F("id").desc(), name="receipt_account_call"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.litellm_call_id} {self.charged_credits} credits"


class DeferredStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    BILLED = "billed", "Billed"
    FAILED = "failed", "Failed (needs staff)"
    DISCARDED = "discarded", "Discarded by staff"


# Waiting for a retry (pending) or for staff (failed): not billed, not discarded. At most one per call.
OPEN_DEFERRED_STATUSES = (DeferredStatus.PENDING, DeferredStatus.FAILED)


class DeferredUsageQuerySet(models.QuerySet):
    def open(self) -> "DeferredUsageQuerySet":
        """Waiting for a retry (pending) or for staff (failed): not billed, not discarded."""
        return self.filter(status__in=DeferredUsage.OPEN_STATUSES)


class DeferredUsage(models.Model):
    """A usage record that could not be billed yet. Kept until billed, resolved or given up."""

    class Reason(models.TextChoices):
        UNKNOWN_COST = "unknown_cost", "Unknown cost"
        UNKNOWN_PAYER = "unknown_payer", "Unknown payer"
        INVALID = "invalid", "Invalid record"
        ERROR = "error", "Error while billing"

    Status = DeferredStatus
    OPEN_STATUSES = OPEN_DEFERRED_STATUSES
    # Waiting for a payer binding.
    PAYER_REASONS = (Reason.UNKNOWN_PAYER,)
    # Reasons a retry can cure by itself (a cost learnt, a payer bound); the others need staff.
    WAITING_REASONS = frozenset({Reason.UNKNOWN_COST, Reason.UNKNOWN_PAYER, Reason.ERROR})

    source_system = models.CharField(max_length=32, default="litellm")
    # Null when the record was too broken to name (no call id).
    source_reference = models.CharField(max_length=SOURCE_REFERENCE_MAX_LENGTH, null=True, blank=True)
    litellm_call_id = models.CharField(max_length=CALL_ID_MAX_LENGTH, blank=True, default="", db_index=True)
    request_id = models.CharField(max_length=255, blank=True, default="")
    end_user = models.CharField(max_length=255, blank=True, default="", db_index=True)
    # What LiteLLM logged about the caller: shown to staff, and what a new payer binding replays by.
    api_key_hash = models.CharField(max_length=255, blank=True, default="", db_index=True)
    team_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    run_id = models.CharField(max_length=RUN_ID_MAX_LENGTH, blank=True, default="", db_index=True)
    # Who would pay, when a binding decides it already (an unknown cost): the activity page shows the call
    # to that account as waiting. Null for an unknown payer or an unreadable record.
    account = models.ForeignKey(
        "accounts.BillingAccount", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # LiteLLM's start time of the call (else when it was deferred).
    called_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    detail = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    receipt = models.OneToOneField(
        ChargeReceipt, null=True, blank=True, on_delete=models.PROTECT, related_name="deferred_from"
    )
    # The judged fact (receipts.facts.fact_to_json) when the record could be read: every value already
    # checked, so it always stores. Null for an invalid record, whose exact bytes stay in its delivery.
    fact = models.JSONField(null=True, blank=True)
    # A cost learnt later (LiteLLM's spend logs) for an unknown_cost record.
    learnt_cost_usd = models.DecimalField(
        max_digits=COST_MAX_DIGITS, decimal_places=COST_DECIMAL_PLACES, null=True, blank=True
    )
    ingest_batch = models.ForeignKey(
        "receipts.IngestBatch", null=True, blank=True, on_delete=models.PROTECT, related_name="deferrals"
    )
    batch_position = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeferredUsageQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "deferred usage"
        ordering = ["-id"]
        constraints = [
            # One open deferral per call: a record delivered twice while it waits stays one row.
            models.UniqueConstraint(
                fields=["source_system", "source_reference"],
                condition=reduce(operator.or_, (Q(status=status) for status in OPEN_DEFERRED_STATUSES)),
                name="deferred_unique_open_source",
            ),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="deferred_attempts_nonnegative"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="deferred_due"),
            models.Index(fields=["reason", "status"], name="deferred_reason_status"),
            models.Index(
                F("account"),
                F("called_at").desc(),
                F("id").desc(),
                condition=Q(status__in=OPEN_DEFERRED_STATUSES),
                name="deferred_open_account_call",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.litellm_call_id or '(no call id)'} [{self.status}]"


class IngestBatch(models.Model):
    """Every ingest POST, stored with its body before it is processed, so any delivery can be inspected
    and any record re-read exactly as it arrived (dj-stripe style)."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received (not processed yet, or processing failed hard)"
        PROCESSED = "processed", "Processed"
        REJECTED = "rejected", "Rejected (body unusable)"
        FAILED = "failed", "Failed (see error and traceback)"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    # Each record's billing fields as a JSON array, zstd-compressed (integrations.litellm.redaction: never prompts,
    # completions, e-mail or IP); null when the body was unusable, or purged after
    # BILLING_DELIVERY_RETENTION_DAYS (receipts and deferrals keep everything they need to explain themselves).
    body = models.BinaryField(null=True, blank=True, editable=False)
    body_purged_at = models.DateTimeField(null=True, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    traceback = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    remote_addr = models.CharField(max_length=64, blank=True, default="")
    content_type = models.CharField(max_length=255, blank=True, default="")
    body_bytes = models.BigIntegerField(default=0)
    record_count = models.IntegerField(default=0)
    processed = models.IntegerField(default=0)
    duplicates = models.IntegerField(default=0)
    deferred = models.IntegerField(default=0)
    skipped = models.IntegerField(default=0)
    # Set when the body could not be parsed at all (then the head of it is kept in `error`).
    error = models.TextField(blank=True, default="")
    duration_ms = models.FloatField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "ingest batches"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"batch {self.pk} ({self.record_count} records)"
