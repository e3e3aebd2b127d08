from django.db import models

from accounts.money import COST_DECIMAL_PLACES, COST_MAX_DIGITS
from payers.models import shortened_key_hash


class LedgerSums(models.Model):
    """The sums a summary row keeps of the ledger entries in its bucket (one definition for both summaries)."""

    entries = models.BigIntegerField(default=0)
    amount_credits = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=COST_MAX_DIGITS + 6, decimal_places=COST_DECIMAL_PLACES, default=0)

    class Meta:
        abstract = True


class LedgerDailySummary(LedgerSums):
    """Per account, UTC day, reason and model group: the sums of the ledger.

    Written only by the ledger's statement trigger `ledger_summarise_statement`
    (invoices/migrations/sql/0003_payer_summary_statement_trigger.sql, body in 0004), in the same
    transaction as the entry it summarises, so it cannot drift; `manage.py reconcile` still checks it
    against the ledger.
    Invoices read it to stay fast on accounts with millions of entries.
    """

    account = models.ForeignKey("accounts.BillingAccount", on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    reason = models.CharField(max_length=16)
    # The receipt's model group for usage entries, "" for everything else.
    model_group = models.CharField(max_length=255, blank=True, default="")

    class Meta(LedgerSums.Meta):
        verbose_name_plural = "ledger daily summaries"
        constraints = [
            models.UniqueConstraint(
                fields=["account", "day", "reason", "model_group"], name="ledger_summary_unique_bucket"
            )
        ]
        indexes = [models.Index(fields=["account", "day"], name="ledger_summary_account_day")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.day} {self.reason} {self.model_group}: {self.amount_credits}"


class LedgerPayerSummary(LedgerSums):
    """Per account, UTC day, API key and end user: the sums of the usage debits.

    Who inside an account spent the credits (the invoice's breakdown by API key
    and by end user). Written, like LedgerDailySummary, only by the ledger's
    statement-level trigger (migration 0003), from each usage entry's receipt;
    `manage.py reconcile` (summary_drift) checks it against the ledger.
    """

    account = models.ForeignKey("accounts.BillingAccount", on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    # The receipt's key hash ("" when LiteLLM logged none).
    api_key_hash = models.CharField(max_length=255, blank=True, default="")
    end_user = models.CharField(max_length=255, blank=True, default="")
    # The greatest key alias seen for the bucket (a label, not part of the key: one hash, one line).
    api_key_alias = models.CharField(max_length=255, blank=True, default="")

    class Meta(LedgerSums.Meta):
        verbose_name_plural = "ledger payer summaries"
        constraints = [
            models.UniqueConstraint(
                fields=["account", "day", "api_key_hash", "end_user"], name="payer_summary_unique_bucket"
            )
        ]
        # The unique index leads with (account, day): it serves the invoice's range scan too.

    def __str__(self) -> str:
        key = shortened_key_hash(self.api_key_hash)
        return f"{self.account_id} {self.day} {key} {self.end_user}: {self.amount_credits}"
