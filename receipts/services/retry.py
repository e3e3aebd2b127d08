"""Deferred records, retried: a cost learnt from LiteLLM, a payer bound since, a transient error gone.

Every failed attempt of any kind counts (attempts, backoff) and a record that
keeps failing expires into `failed` for staff, counted in
billing_invariant_violation_total{reason="deferred_expired"}.
"""

import dataclasses
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.litellm.client import LiteLLMClient, LiteLLMError
from integrations.litellm.records import parse_usage_record
from payers.models import PayerSource
from receipts import metrics
from receipts.facts import NotBillable, UsageFact, fact_from_json, is_fact_json
from receipts.models import DeferredUsage
from receipts.selectors import deferred_due
from receipts.services.billing import (
    CommitOutcome,
    commit_usage_fact,
    correct_provisional_charge,
    unknown_payer_detail,
)
from receipts.services.deferrals import next_attempt_delay
from receipts.services.ingest import UNAVAILABLE

logger = logging.getLogger(__name__)


def _fact_of(row: DeferredUsage) -> UsageFact | NotBillable:
    """The fact a deferral waits with (and any cost learnt since), or why there is none."""
    if is_fact_json(row.fact):
        fact = fact_from_json(row.fact)
    elif row.fact is not None:
        # A row kept before facts were stored: the stripped LiteLLM record, judged again.
        judged = parse_usage_record(row.fact)
        if isinstance(judged, NotBillable) and judged.fact is None:
            return judged
        fact = judged if isinstance(judged, UsageFact) else judged.fact  # type: ignore[assignment]
    else:
        return NotBillable(kind="invalid", reason=row.reason, detail="the record could not be read when it arrived")
    if row.learnt_cost_usd is not None:
        fact = dataclasses.replace(fact, cost_usd=row.learnt_cost_usd)
    return fact


def retry_deferred_usage(*, deferred: DeferredUsage) -> CommitOutcome | None:
    """Bill a deferred record through commit_usage_fact() if it can be billed now.

    When its cost is still unknown, LiteLLM's spend logs are asked first
    (outside any transaction). Returns the commit outcome ("processed" or
    "duplicate"), or None when it still cannot be billed: then the row is
    rescheduled with backoff, or marked failed after
    BILLING_DEFERRED_MAX_ATTEMPTS. A row already billed or discarded, or being
    retried by another worker right now (SKIP LOCKED), is left alone (None).
    Two retries of one record never bill it twice: the receipt's
    UNIQUE(source_system, source_reference) makes the second a duplicate.
    """
    current = DeferredUsage.objects.open().filter(pk=deferred.pk).first()
    if current is None:
        metrics.deferred_retries_total.labels(result="skipped").inc()
        return None
    judged = _fact_of(current)
    lookup_error = ""
    if isinstance(judged, UsageFact) and judged.cost_usd is None:
        judged, lookup_error = _with_litellm_cost(judged)
    try:
        outcome, result = _settle_deferred(deferred_id=current.pk, judged=judged, lookup_error=lookup_error)
    except UNAVAILABLE:
        raise
    except Exception as exc:
        logger.exception("retry of deferred usage %s failed", current.pk)
        result = _count_failed_attempt(deferred_id=current.pk, error=f"error: {type(exc).__name__}: {exc}")
        outcome = None
    metrics.deferred_retries_total.labels(result=result).inc()
    return outcome


def _with_litellm_cost(fact: UsageFact) -> tuple[UsageFact, str]:
    """The fact with the cost LiteLLM's spend logs know for it, or the fact and why not."""
    if not settings.LITELLM_MASTER_KEY:
        return fact, "litellm_error: LITELLM_MASTER_KEY is not set, so LiteLLM's spend logs cannot be asked"
    try:
        # No quick retries here: a failed lookup is an attempt, retried later with backoff.
        with LiteLLMClient(retries=0) as client:
            cost = client.cost_of_call(request_id=fact.request_id, litellm_call_id=fact.litellm_call_id)
    except LiteLLMError as exc:
        logger.warning("cost lookup for litellm_call_id=%s failed: %s", fact.litellm_call_id, exc)
        return fact, f"litellm_error: {exc}"
    if cost is None:
        return fact, "LiteLLM's spend logs have no row for this call yet"
    if cost.spend is None or cost.spend <= 0:
        # LiteLLM logs 0 when it could not price a call: that is no cost (never charge an unknown as 0).
        return fact, f"LiteLLM's spend log {cost.request_id!r} has no cost for it either (spend={cost.spend})"
    return dataclasses.replace(fact, cost_usd=cost.spend, spend_log_request_id=cost.request_id or ""), ""


@transaction.atomic
def _settle_deferred(
    *, deferred_id: int, judged: UsageFact | NotBillable, lookup_error: str
) -> tuple[CommitOutcome | None, str]:
    row = DeferredUsage.objects.open().select_for_update(skip_locked=True).filter(pk=deferred_id).first()
    if row is None:
        return None, "skipped"
    if isinstance(judged, UsageFact) and judged.cost_usd is not None:
        if judged.cost_usd != row.learnt_cost_usd and row.learnt_cost_usd is None:
            # Keep what was learnt (the cost from LiteLLM) with the row: billed, or waiting for a payer.
            DeferredUsage.objects.filter(pk=row.pk).update(learnt_cost_usd=judged.cost_usd)
        outcome = commit_usage_fact(fact=judged)
        if outcome.outcome == "duplicate" and outcome.receipt_id is not None:
            # Charged its hold before the cost was known (BILLING_UNPRICED_CALLS=charge_hold): correct it.
            correct_provisional_charge(receipt_id=outcome.receipt_id, cost_usd=judged.cost_usd)
        if outcome.outcome != "deferred":
            DeferredUsage.objects.filter(pk=row.pk).update(
                status=DeferredUsage.Status.BILLED,
                receipt_id=outcome.receipt_id,
                attempts=row.attempts + 1,
                next_attempt_at=None,
                last_error="",
                updated_at=timezone.now(),
            )
            return outcome, "billed" if outcome.outcome == "processed" else "duplicate"
        reason, detail = DeferredUsage.Reason.UNKNOWN_PAYER, unknown_payer_detail(judged)
    elif isinstance(judged, UsageFact):
        reason, detail = DeferredUsage.Reason.UNKNOWN_COST, lookup_error or "LiteLLM did not know the cost"
    else:
        # Invalid, or nothing to bill: retrying cannot help; staff decide.
        _mark_deferred(row, reason=row.reason, error=f"{judged.reason}: {judged.detail}", give_up=True)
        return None, "expired"
    expired = _mark_deferred(row, reason=reason, error=f"{reason}: {detail}", give_up=False)
    if expired:
        return None, "expired"
    return None, "litellm_error" if lookup_error.startswith("litellm_error") else "waiting"


@transaction.atomic
def _count_failed_attempt(*, deferred_id: int, error: str) -> str:
    row = DeferredUsage.objects.open().select_for_update(skip_locked=True).filter(pk=deferred_id).first()
    if row is None:
        return "skipped"
    return "expired" if _mark_deferred(row, reason=row.reason, error=error, give_up=False) else "error"


def _mark_deferred(row: DeferredUsage, *, reason: str, error: str, give_up: bool) -> bool:
    """Count a failed attempt: reschedule with backoff, or mark failed. True when it just expired."""
    attempts = row.attempts + 1
    expired = give_up or attempts >= settings.BILLING_DEFERRED_MAX_ATTEMPTS
    now = timezone.now()
    DeferredUsage.objects.filter(pk=row.pk).update(
        attempts=attempts,
        reason=reason if reason in DeferredUsage.WAITING_REASONS else row.reason,
        last_error=error[:2000],
        status=DeferredUsage.Status.FAILED if expired else DeferredUsage.Status.PENDING,
        next_attempt_at=None if expired else now + next_attempt_delay(attempts),
        updated_at=now,
    )
    newly_expired = expired and row.status == DeferredUsage.Status.PENDING
    if newly_expired:
        logger.error(
            "deferred usage %s (litellm_call_id=%s) failed after %d attempts: %s",
            row.pk,
            row.litellm_call_id,
            attempts,
            error,
        )
        transaction.on_commit(lambda: metrics.invariant_violation_total.labels(reason="deferred_expired").inc())
    return newly_expired


@transaction.atomic
def claim_due_deferred_usage(*, limit: int, now: datetime | None = None) -> list[int]:
    """Claim up to `limit` pending records that are due, for one retry each.

    A claimed record's next attempt moves BILLING_DEFERRED_CLAIM_SECONDS ahead
    so the next sweep does not hand it out again while its retry runs; the
    retry then sets the real schedule (or bills it). Concurrent sweeps skip
    each other's rows (FOR UPDATE SKIP LOCKED).
    """
    now = now or timezone.now()
    ids = list(deferred_due(now=now).select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
    if ids:
        DeferredUsage.objects.filter(pk__in=ids).update(
            next_attempt_at=now + timedelta(seconds=settings.BILLING_DEFERRED_CLAIM_SECONDS), updated_at=now
        )
    return ids


@transaction.atomic
def make_payer_deferrals_due(*, kind: str, value: str) -> list[int]:
    """A payer was bound (kind: key, team, run or end_user): the records waiting for it are due now."""
    waiting = DeferredUsage.objects.open().filter(reason__in=DeferredUsage.PAYER_REASONS)
    by_kind = {
        PayerSource.KEY: Q(api_key_hash=value),
        PayerSource.TEAM: Q(team_id=value),
        PayerSource.RUN: Q(run_id=value),
        PayerSource.END_USER: Q(end_user=value),
    }
    ids = list(waiting.filter(by_kind[PayerSource(kind)]).values_list("id", flat=True))
    DeferredUsage.objects.filter(pk__in=ids).update(status=DeferredUsage.Status.PENDING, next_attempt_at=timezone.now())
    return ids
