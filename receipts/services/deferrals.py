"""Keeping what cannot be billed now: one DeferredUsage row per record, in a form that always stores."""

import random
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from accounts.selectors import run_id_from_end_user
from receipts.models import DeferredUsage
from receipts.usage import SOURCE_SYSTEM, NotBillable, fact_to_json

_CHUNK = 1000


def next_attempt_delay(attempts: int) -> timedelta:
    """Exponential backoff with full jitter, capped (BILLING_DEFERRED_* settings)."""
    base = settings.BILLING_DEFERRED_BASE_DELAY_SECONDS
    cap = settings.BILLING_DEFERRED_MAX_DELAY_SECONDS
    ceiling = min(cap, base * (2 ** max(0, attempts)))
    return timedelta(seconds=base / 2 + random.uniform(0, ceiling))


def defer_usage(*, items: Sequence[NotBillable]) -> None:
    """Keep records that cannot be billed now. One open row per source reference.

    Only judged values are stored (the fact, a safe call id, our own detail
    text) plus the link to the delivery and position where the exact bytes
    are, so keeping a record can never fail on the record's own bad value.
    """
    now = timezone.now()
    rows = []
    for item in items:
        waiting = item.kind == "deferred"
        fact = item.fact
        rows.append(
            DeferredUsage(
                source_system=SOURCE_SYSTEM,
                source_reference=fact.source_reference if fact else None,
                litellm_call_id=item.litellm_call_id,
                request_id=fact.request_id if fact else "",
                end_user=fact.end_user if fact else "",
                api_key_hash=fact.api_key_hash if fact else "",
                team_id=fact.team_id if fact else "",
                run_id=(fact.explicit_run_id or run_id_from_end_user(fact.end_user)) if fact else "",
                reason=item.reason if waiting else DeferredUsage.Reason.INVALID,
                detail=item.detail if waiting else f"{item.reason}: {item.detail}",
                status=DeferredUsage.Status.PENDING if waiting else DeferredUsage.Status.FAILED,
                next_attempt_at=now + next_attempt_delay(0) if waiting else None,
                fact=fact_to_json(fact) if fact else None,
                ingest_batch_id=item.ingest_batch_id,
                batch_position=item.batch_position,
            )
        )
    # ON CONFLICT DO NOTHING: a record already waiting keeps its row and schedule.
    DeferredUsage.objects.bulk_create(rows, ignore_conflicts=True, batch_size=_CHUNK)
