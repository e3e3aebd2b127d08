from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from accounts.money import COST_DECIMAL_PLACES, COST_MAX_DIGITS
from receipts.exactjson import ExactJSONDecoder, ExactJSONEncoder


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
    source_reference = models.CharField(max_length=512)
    litellm_call_id = models.CharField(max_length=255)
    request_id = models.CharField(max_length=255, blank=True, default="")
    run_id = models.CharField(max_length=255)
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
    zero_cost_suspect = models.BooleanField(default=False)
    end_user = models.CharField(max_length=255)
    api_key_hash = models.CharField(max_length=255, blank=True, default="")
    api_key_alias = models.CharField(max_length=255, blank=True, default="")
    team_id = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    # The record as received, without `messages`/`response` (privacy, size).
    raw_record = models.JSONField(encoder=ExactJSONEncoder, decoder=ExactJSONDecoder)

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
            # The call's time: reconcile selects a window's receipts by it (receipts/reconcile.py).
            models.Index(Coalesce("started_at", "created_at"), name="receipt_call_time"),
        ]

    def __str__(self) -> str:
        return f"{self.litellm_call_id} {self.charged_credits} credits"


class DeferredUsage(models.Model):
    """A usage record that could not be billed yet. Kept until billed, resolved or given up."""

    class Reason(models.TextChoices):
        UNKNOWN_COST = "unknown_cost", "Unknown cost"
        UNKNOWN_END_USER = "unknown_end_user", "Unknown end user"
        INVALID = "invalid", "Invalid record"
        ERROR = "error", "Error while billing"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        BILLED = "billed", "Billed"
        FAILED = "failed", "Failed (needs staff)"
        DISCARDED = "discarded", "Discarded by staff"

    source_system = models.CharField(max_length=32, default="litellm")
    # Null when the record was too broken to name (no call id).
    source_reference = models.CharField(max_length=512, null=True, blank=True)
    litellm_call_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    request_id = models.CharField(max_length=255, blank=True, default="")
    end_user = models.CharField(max_length=255, blank=True, default="", db_index=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    detail = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    receipt = models.OneToOneField(
        ChargeReceipt, null=True, blank=True, on_delete=models.PROTECT, related_name="deferred_from"
    )
    # The record as received, without `messages`/`response`; JSON numbers stay exact.
    record = models.JSONField(encoder=ExactJSONEncoder, decoder=ExactJSONDecoder)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deferred usage"
        ordering = ["-id"]
        constraints = [
            # One open deferral per call: a record delivered twice while it waits stays one row.
            models.UniqueConstraint(
                fields=["source_system", "source_reference"],
                condition=Q(status="pending") | Q(status="failed"),
                name="deferred_unique_open_source",
            ),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="deferred_attempts_nonnegative"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="deferred_due"),
            models.Index(fields=["reason", "status"], name="deferred_reason_status"),
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.litellm_call_id or '(no call id)'} [{self.status}]"


class IngestBatch(models.Model):
    """Every ingest POST, stored before it is processed, so any delivery can be inspected."""

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
