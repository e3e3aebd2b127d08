"""Writes of the receipts app, by concern (HackSoft style: a services package re-exporting its modules).

- billing: commit_usage_facts(), the one writer of charge receipts and usage debits;
- deferrals: keeping what cannot be billed now;
- ingest: one LiteLLM delivery, stored first, then billed record by record;
- retry: deferred records retried (cost learnt, payer bound, error gone).
"""

from receipts.services.billing import (
    RECEIPT_CHANNEL,
    CommitOutcome,
    commit_usage_fact,
    commit_usage_facts,
    correct_provisional_charge,
)
from receipts.services.deferrals import defer_usage, next_attempt_delay
from receipts.services.ingest import (
    IngestResult,
    commit_isolated,
    ingest_delivery,
    keep_isolated,
    purge_delivery_bodies,
    reprocess_delivery,
)
from receipts.services.retry import claim_due_deferred_usage, make_payer_deferrals_due, retry_deferred_usage

__all__ = [
    "RECEIPT_CHANNEL",
    "CommitOutcome",
    "IngestResult",
    "claim_due_deferred_usage",
    "commit_isolated",
    "commit_usage_fact",
    "commit_usage_facts",
    "correct_provisional_charge",
    "defer_usage",
    "ingest_delivery",
    "keep_isolated",
    "make_payer_deferrals_due",
    "next_attempt_delay",
    "purge_delivery_bodies",
    "reprocess_delivery",
    "retry_deferred_usage",
]
