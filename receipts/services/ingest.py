"""One LiteLLM delivery: stored as received first, then billed record by record (dj-stripe style).

The delivery (body zstd-compressed, the headers that matter) is committed
before anything is processed, so every record can be re-read exactly as it
arrived and a delivery whose processing failed can be reprocessed. Then each
record is judged alone and billed in one transaction per delivery; whatever
goes wrong with one record (its value, its insert, keeping it) costs that
record alone. Only a database that is truly unavailable fails the delivery.
"""

import logging
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import zstandard
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction

from holds.selectors import unpriced_hold_estimates
from integrations.litellm.records import judge_usage_record
from integrations.litellm.redaction import redacted_delivery
from receipts import metrics
from receipts.delivery import BodyError, split_delivery
from receipts.facts import NotBillable, UsageFact
from receipts.models import DeferredUsage, IngestBatch
from receipts.selectors import delivery_body
from receipts.services.billing import CommitOutcome, commit_usage_fact, commit_usage_facts
from receipts.services.deferrals import defer_usage

logger = logging.getLogger(__name__)

# Level 3: ~14× smaller LiteLLM bodies at ~0.5 ms per MB (bench/README.md, "zstd levels for the delivery body").
_ZSTD_LEVEL = 3
# One compressor per thread: a ZstdCompressor must not be used by two threads at once (python-zstandard's
# thread-safety rule), and gunicorn's gthread workers run requests in threads; sharing one crashed workers
# with SIGSEGV under concurrent POSTs.
_compressors = threading.local()
# Connection-level failures: the database is unavailable, not the record at fault.
UNAVAILABLE = (OperationalError, InterfaceError)


@dataclass
class IngestResult:
    processed: int = 0
    duplicates: int = 0
    deferred: int = 0
    skipped: int = 0
    skipped_records: list[dict[str, Any]] = field(default_factory=list)
    deferred_records: list[dict[str, Any]] = field(default_factory=list)
    ingest_batch_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "duplicates": self.duplicates,
            "deferred": self.deferred,
            "skipped": self.skipped,
            "skipped_records": self.skipped_records,
            "deferred_records": self.deferred_records,
        }


def ingest_delivery(*, body: bytes, content_type: str, remote_addr: str, headers: dict[str, str]) -> IngestResult:
    """Store a delivery, then bill its records. Raises BodyError (nothing usable) or a DatabaseError
    (the database is unavailable; the sender may retry: every record is idempotent).

    What is stored is each record's billing fields only (integrations.litellm.redaction): never prompts, completions,
    e-mail or IP, whatever LiteLLM sends. A body that cannot be split is kept as a rejected delivery
    without its bytes.
    """
    started = time.perf_counter()
    try:
        raws = split_delivery(body)
    except BodyError as exc:
        IngestBatch.objects.create(
            remote_addr=remote_addr[:64],
            content_type=content_type[:255],
            body_bytes=len(body),
            headers=headers,
            status=IngestBatch.Status.REJECTED,
            error=str(exc)[:10_000],
        )
        raise
    batch = IngestBatch.objects.create(
        remote_addr=remote_addr[:64],
        content_type=content_type[:255],
        body_bytes=len(body),
        body=_compress(redacted_delivery(raws)),
        headers=headers,
    )
    return _process(batch=batch, raws=raws, started=started)


@transaction.atomic
def purge_delivery_bodies(*, now: datetime) -> int:
    """Drop the stored bodies of deliveries older than BILLING_DELIVERY_RETENTION_DAYS; returns how many.

    Receipts and deferrals keep every field billing reads (a deferral its judged fact), so they still
    explain themselves; the delivery row keeps its counts, headers and errors.
    """
    cutoff = now - timedelta(days=settings.BILLING_DELIVERY_RETENTION_DAYS)
    return IngestBatch.objects.filter(received_at__lt=cutoff, body__isnull=False).update(body=None, body_purged_at=now)


def _compress(body: bytes) -> bytes:
    compressor = getattr(_compressors, "zstd", None)
    if compressor is None:
        compressor = _compressors.zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return compressor.compress(body)


def reprocess_delivery(*, batch: IngestBatch) -> IngestResult:
    """Bill a stored delivery again (staff, or after a failure): idempotent record by record.

    Raises BodyError when the delivery has no stored body (rejected, or purged after
    BILLING_DELIVERY_RETENTION_DAYS).
    """
    if not batch.body:
        raise BodyError(f"delivery {batch.pk} has no stored body (rejected or purged)")
    return _process(batch=batch, raws=split_delivery(delivery_body(batch=batch)), started=time.perf_counter())


def _process(*, batch: IngestBatch, raws: list[bytes], started: float) -> IngestResult:
    try:
        result = _bill_records(batch=batch, raws=raws, started=started)
    except Exception as exc:
        _record_failure(batch_id=batch.pk, exc=exc)
        raise
    metrics.ingest_batch_seconds.observe(time.perf_counter() - started)
    metrics.ingest_batch_records.observe(len(raws))
    return result


def _record_failure(*, batch_id: int, exc: BaseException) -> None:
    """Keep the error and traceback with the delivery; when the database itself is gone, log them."""
    try:
        IngestBatch.objects.filter(pk=batch_id).update(
            status=IngestBatch.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:10_000],
            traceback="".join(traceback.format_exception(exc))[:50_000],
        )
    except DatabaseError:
        logger.exception("delivery %s failed and its failure could not be recorded", batch_id)


@transaction.atomic
def _bill_records(*, batch: IngestBatch, raws: Sequence[bytes], started: float) -> IngestResult:
    result = IngestResult(ingest_batch_id=batch.pk)
    facts: list[tuple[int, UsageFact]] = []
    kept: list[NotBillable] = []
    judged_records = [
        judge_usage_record(raw, ingest_batch_id=batch.pk, batch_position=index) for index, raw in enumerate(raws)
    ]
    held_at = _unpriced_hold_estimates(judged_records)
    for index, judged in enumerate(judged_records):
        if isinstance(judged, UsageFact):
            facts.append((index, judged))
            continue
        if judged.fact is not None and judged.litellm_call_id in held_at:
            # BILLING_UNPRICED_CALLS=charge_hold: no cost, so the call is charged its hold now (never free);
            # the deferral stays, to learn the real cost and correct the charge.
            facts.append((index, replace(judged.fact, cost_usd=held_at[judged.litellm_call_id], provisional_cost=True)))
            kept.append(replace(judged, detail=f"{judged.detail}; charged its hold's estimate until it is known"))
            metrics.missing_cost_deferred_total.inc()
            continue
        entry = {"index": index, "litellm_call_id": judged.litellm_call_id or None, "reason": judged.reason}
        if judged.kind == "deferred":
            kept.append(judged)
            result.deferred += 1
            result.deferred_records.append(entry)
            if judged.reason == DeferredUsage.Reason.UNKNOWN_COST:
                metrics.missing_cost_deferred_total.inc()
            continue
        entry["detail"] = judged.detail
        if judged.field:
            entry["field"] = judged.field
        result.skipped += 1
        result.skipped_records.append(entry)
        if judged.kind == "invalid":
            kept.append(judged)
            metrics.invariant_violation_total.labels(reason=f"invalid_record:{judged.reason}").inc()
        else:
            metrics.failed_call_without_cost_total.inc()
        logger.warning(
            "usage record %s skipped (%s): %s", judged.litellm_call_id or f"#{index}", judged.reason, judged.detail
        )
    if kept:
        keep_isolated(items=kept)
        for item in kept:
            metrics.receipts_total.labels(outcome="deferred" if item.kind == "deferred" else "skipped").inc()
    if facts:
        outcomes = commit_isolated(facts=[fact for _, fact in facts])
        for (index, fact), outcome in zip(facts, outcomes, strict=True):
            if outcome.outcome == "processed":
                result.processed += 1
            elif outcome.outcome == "duplicate":
                result.duplicates += 1
            else:
                result.deferred += 1
                result.deferred_records.append(
                    {"index": index, "litellm_call_id": fact.litellm_call_id, "reason": outcome.reason or "deferred"}
                )
    IngestBatch.objects.filter(pk=batch.pk).update(
        status=IngestBatch.Status.PROCESSED,
        record_count=len(raws),
        processed=result.processed,
        duplicates=result.duplicates,
        deferred=result.deferred,
        skipped=result.skipped,
        duration_ms=(time.perf_counter() - started) * 1000,
        error="",
        traceback="",
    )
    return result


def _unpriced_hold_estimates(judged_records: Sequence[UsageFact | NotBillable]) -> dict[str, Decimal]:
    """For BILLING_UNPRICED_CALLS=charge_hold: the hold estimate of each record that came without a cost."""
    if settings.BILLING_UNPRICED_CALLS != "charge_hold":
        return {}
    return unpriced_hold_estimates(
        litellm_call_ids=[
            j.litellm_call_id
            for j in judged_records
            if isinstance(j, NotBillable) and j.reason == DeferredUsage.Reason.UNKNOWN_COST and j.fact is not None
        ]
    )


def commit_isolated(*, facts: Sequence[UsageFact]) -> list[CommitOutcome]:
    """Commit facts as a batch; if the batch fails, one by one, so one bad fact costs only itself."""
    try:
        # commit_usage_facts() is atomic itself: inside the delivery's transaction that is the savepoint
        # a failed batch rolls back to (a second atomic() here would only add a SAVEPOINT round trip).
        return commit_usage_facts(facts=facts)
    except UNAVAILABLE:
        raise
    except Exception:
        logger.warning("batch commit of %d facts failed; committing one by one", len(facts), exc_info=True)
    outcomes = []
    for fact in facts:
        try:
            outcomes.append(commit_usage_fact(fact=fact))  # atomic itself (a savepoint)
        except UNAVAILABLE:
            raise
        except Exception as exc:
            logger.exception("billing failed for litellm_call_id=%s", fact.litellm_call_id)
            metrics.invariant_violation_total.labels(reason="commit_error").inc()
            keep_isolated(
                items=[
                    NotBillable(
                        kind="deferred",
                        reason=DeferredUsage.Reason.ERROR,
                        detail=f"{type(exc).__name__}: {exc}"[:2000],
                        litellm_call_id=fact.litellm_call_id,
                        fact=fact,
                        ingest_batch_id=fact.ingest_batch_id,
                        batch_position=fact.batch_position,
                    )
                ]
            )
            outcomes.append(CommitOutcome("deferred", fact.litellm_call_id, reason="error"))
    return outcomes


def keep_isolated(*, items: Sequence[NotBillable]) -> None:
    """defer_usage(), falling back one by one and, for a row that still cannot be written, to a bare
    row that names only its delivery and position (whose bytes are already stored)."""
    try:
        with transaction.atomic():
            defer_usage(items=items)
            return
    except UNAVAILABLE:
        raise
    except Exception:
        logger.warning("keeping %d records failed; keeping them one by one", len(items), exc_info=True)
    for item in items:
        try:
            with transaction.atomic():
                defer_usage(items=[item])
        except UNAVAILABLE:
            raise
        except Exception as exc:
            logger.exception("record %s of delivery %s kept bare", item.batch_position, item.ingest_batch_id)
            bare = NotBillable(
                kind="invalid",
                reason="unstorable",
                detail=f"could not be stored ({type(exc).__name__}); its bytes are in the delivery",
                ingest_batch_id=item.ingest_batch_id,
                batch_position=item.batch_position,
            )
            with transaction.atomic():
                defer_usage(items=[bare])
