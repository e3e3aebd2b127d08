"""Keeping what cannot be billed now: one DeferredUsage row per record, in a form that always stores."""

import random
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from billing_project.db import INSERT_CHUNK_ROWS
from payers.selectors import PayerDecision, PayerQuery, resolve_payers, run_id_from_end_user
from receipts.facts import SOURCE_SYSTEM, NotBillable, UsageFact, fact_from_json, fact_to_json, is_fact_json
from receipts.models import DeferredUsage


def next_attempt_delay(attempts: int) -> timedelta:
    """Exponential backoff with full jitter, capped (BILLING_DEFERRED_* settings)."""
    base = settings.BILLING_DEFERRED_BASE_DELAY_SECONDS
    cap = settings.BILLING_DEFERRED_MAX_DELAY_SECONDS
    ceiling = min(cap, base * (2 ** max(0, attempts)))
    return timedelta(seconds=base / 2 + random.uniform(0, ceiling))


def _open_deferred_calls(references: list[str]) -> dict[str, UsageFact | None]:
    """The open deferrals at these references: {reference: its judged fact (None for older rows)}."""
    if not references:
        return {}
    rows = DeferredUsage.objects.open().filter(source_system=SOURCE_SYSTEM, source_reference__in=references)
    return {
        ref: fact_from_json(fact) if is_fact_json(fact) else None
        for ref, fact in rows.values_list("source_reference", "fact")
    }


def _reference(fact: UsageFact, waiting: dict[str, UsageFact | None]) -> str:
    """The reference a deferral of `fact` waits under: its own, unless another call (one that reused its call
    id) already waits there; then its reuse reference, so neither record is lost."""
    ref = fact.source_reference
    if ref in waiting:
        other = waiting[ref]
        if other is not None and not fact.is_same_call(
            request_id=other.request_id,
            api_key_hash=other.api_key_hash,
            prompt_tokens=other.prompt_tokens,
            completion_tokens=other.completion_tokens,
        ):
            return fact.reused_call_reference
    waiting.setdefault(ref, fact)
    return ref


def payers_of(facts: Sequence[UsageFact]) -> list[PayerDecision | None]:
    """Who pays for each fact, derived from what LiteLLM logged (SERVER_DERIVES_IDENTITY); None: unknown."""
    if not facts:
        return []
    return resolve_payers(
        queries=[
            PayerQuery(key_hash=f.api_key_hash, team_id=f.team_id, end_user=f.end_user, run_id=f.explicit_run_id)
            for f in facts
        ]
    )


def defer_usage(*, items: Sequence[NotBillable]) -> None:
    """Keep records that cannot be billed now. One open row per source reference.

    Only judged values are stored (the fact, a safe call id, our own detail
    text) plus the link to the delivery and position where the exact bytes
    are, so keeping a record can never fail on the record's own bad value.
    Rows are inserted in reference order, so overlapping concurrent deliveries
    lock the same keys in the same order and never deadlock.
    """
    now = timezone.now()
    readable = [item.fact for item in items if item.fact is not None]
    # Who would pay, when a binding says so already (the activity page shows the call as waiting).
    payers = {id(f): d.account_id if d else None for f, d in zip(readable, payers_of(readable), strict=True)}
    waiting = _open_deferred_calls(sorted({item.fact.source_reference for item in items if item.fact is not None}))
    rows = []
    for item in items:
        waits = item.kind == "deferred"
        fact = item.fact
        rows.append(
            DeferredUsage(
                source_system=SOURCE_SYSTEM,
                source_reference=_reference(fact, waiting) if fact else None,
                litellm_call_id=item.litellm_call_id,
                request_id=fact.request_id if fact else "",
                end_user=fact.end_user if fact else "",
                api_key_hash=fact.api_key_hash if fact else "",
                team_id=fact.team_id if fact else "",
                run_id=(fact.explicit_run_id or run_id_from_end_user(fact.end_user)) if fact else "",
                account_id=payers[id(fact)] if fact else None,
                called_at=(fact.started_at or now) if fact else now,
                reason=item.reason if waits else DeferredUsage.Reason.INVALID,
                detail=item.detail if waits else f"{item.reason}: {item.detail}",
                status=DeferredUsage.Status.PENDING if waits else DeferredUsage.Status.FAILED,
                next_attempt_at=now + next_attempt_delay(0) if waits else None,
                fact=fact_to_json(fact) if fact else None,
                ingest_batch_id=item.ingest_batch_id,
                batch_position=item.batch_position,
            )
        )
    # ON CONFLICT DO NOTHING: a record already waiting keeps its row and schedule.
    rows.sort(key=lambda row: (row.source_reference is None, row.source_reference or ""))
    DeferredUsage.objects.bulk_create(rows, ignore_conflicts=True, batch_size=INSERT_CHUNK_ROWS)
