"""Celery tasks: thin, they take ids and call services.

With a broker (CELERY_BROKER_URL) Celery beat runs `sweep_deferred_usage` (and
reconciliation.tasks.reconcile_books) on the schedule in settings.CELERY_BEAT_SCHEDULE
and the sweep hands each due record to `retry_deferred` on the workers. Without one,
`manage.py billing_worker` runs the same two functions on the same schedule
and the sweep retries each record in-process.

The retry schedule of a deferred record lives in its row (attempts,
next_attempt_at, exponential backoff with jitter), not in the broker, so it
survives a lost broker and staff see it; `self.retry` covers a task whose
database briefly went away.
"""

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing_project.celery import DB_RETRY_COUNTDOWN_SECONDS
from receipts import metrics
from receipts.models import DeferredUsage
from receipts.selectors import deferred_open_counts
from receipts.services import (
    claim_due_deferred_usage,
    make_payer_deferrals_due,
    retry_deferred_usage,
)
from receipts.services import (
    purge_delivery_bodies as purge_bodies,
)

logger = logging.getLogger(__name__)


def _use_broker() -> bool:
    return bool(settings.CELERY_BROKER_URL) and not settings.CELERY_TASK_ALWAYS_EAGER


def replay_payer_deferrals(*, kind: str, value: str) -> None:
    """A payer was bound: replay what waited for it, on the worker when a broker is set, else right here."""
    if _use_broker():
        replay_payer.delay(kind, value)
    else:
        replay_payer.apply(args=[kind, value])


@shared_task(bind=True, max_retries=5, acks_late=True)
def replay_payer(self: Any, kind: str, value: str) -> int:
    """A key, team, run or end user was bound to an account: bill what waited for it."""
    billed = 0
    try:
        for deferred_id in make_payer_deferrals_due(kind=kind, value=value):
            if retry_deferred_usage(deferred=DeferredUsage(pk=deferred_id)) is not None:
                billed += 1
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    logger.info("replayed %s %r: %d record(s) billed", kind, value, billed)
    return billed


@shared_task(bind=True, max_retries=5, acks_late=True)
def retry_deferred(self: Any, deferred_id: int) -> str:
    """Retry one deferred record; returns its status afterwards (billed, pending, failed, ...)."""
    deferred = DeferredUsage.objects.filter(pk=deferred_id).first()
    if deferred is None:
        logger.warning("deferred usage %s: no such record", deferred_id)
        return "missing"
    try:
        outcome = retry_deferred_usage(deferred=deferred)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    status, attempts, error = DeferredUsage.objects.values_list("status", "attempts", "last_error").get(pk=deferred_id)
    logger.info(
        "deferred usage %s (litellm_call_id=%s): %s, status %s after %d attempt(s)%s",
        deferred_id,
        deferred.litellm_call_id,
        outcome.outcome if outcome else "not billed",
        status,
        attempts,
        f"; {error}" if error and status != DeferredUsage.Status.BILLED else "",
    )
    return status


def _dispatch_retry(deferred_id: int) -> None:
    if _use_broker():
        retry_deferred.delay(deferred_id)
        return
    result = retry_deferred.apply(args=[deferred_id])
    if result.failed():
        # BILLING_NEVER_THROWS: the record keeps its claim and comes round again.
        logger.error("retry of deferred usage %s failed: %r", deferred_id, result.result)


def _publish_deferred_gauges() -> None:
    counts = deferred_open_counts()
    for reason in DeferredUsage.Reason.values:
        metrics.deferred_pending.labels(reason=reason).set(counts.get((DeferredUsage.Status.PENDING, reason), 0))
        metrics.deferred_failed.labels(reason=reason).set(counts.get((DeferredUsage.Status.FAILED, reason), 0))


@shared_task(bind=True, max_retries=3)
def sweep_deferred_usage(self: Any) -> int:
    """Hand every due deferred record to a retry (the beat schedule runs this)."""
    try:
        ids = claim_due_deferred_usage(limit=settings.BILLING_DEFERRED_SWEEP_BATCH)
        for deferred_id in ids:
            _dispatch_retry(deferred_id)
        _publish_deferred_gauges()
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if ids:
        logger.info("deferred usage sweep: %d record(s) due", len(ids))
    return len(ids)


@shared_task(bind=True, max_retries=3)
def purge_delivery_bodies(self: Any) -> int:
    """Drop stored delivery bodies past BILLING_DELIVERY_RETENTION_DAYS (the beat schedule runs this hourly)."""
    try:
        purged = purge_bodies(now=timezone.now())
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if purged:
        logger.info("delivery bodies: %d purged (older than BILLING_DELIVERY_RETENTION_DAYS)", purged)
    return purged
