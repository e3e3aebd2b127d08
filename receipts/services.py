"""The money path: usage facts become charge receipts and usage debits.

commit_usage_facts() is the one writer of receipts and usage debits
(ONE_LEDGER_WRITER); commit_usage_fact() is its one-record form. The ingest
endpoint, the deferred retry and the reconciler's backfill all call them.
"""

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import CreditLedgerEntry, EndUserAlias
from accounts.money import usd_to_credits
from integrations.litellm.client import LiteLLMClient, LiteLLMError
from receipts import metrics
from receipts.exactjson import dumps_exact
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.usage import SOURCE_SYSTEM, NotBillable, UsageFact, judge, parse_usage_record

logger = logging.getLogger(__name__)

RECEIPT_CHANNEL = "billing_receipts"
_CHUNK = 1000


@dataclass(frozen=True)
class CommitOutcome:
    """What happened to one fact: "processed" (new receipt), "duplicate" or "deferred"."""

    outcome: str
    litellm_call_id: str
    receipt_id: int | None = None
    reason: str = ""


# Columns of a receipt INSERT, in model order (the primary key comes from the sequence).
_RECEIPT_FIELDS = [f for f in ChargeReceipt._meta.concrete_fields if not f.primary_key]


def _receipt_insert_sql() -> str:
    """One array parameter per column, unnested, and the records as one JSON array.

    Binding a handful of arrays is far cheaper than a parameter per value, and
    one JSON text avoids escaping each record as an array element (bench/README.md,
    "Ingest"). WITH ORDINALITY keeps the rows in source_reference order.
    """
    columns = [f for f in _RECEIPT_FIELDS if f.name != "raw_record"]
    names = ", ".join(f.column for f in columns)
    arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in columns)
    return (
        f"INSERT INTO {ChargeReceipt._meta.db_table} ({names}, raw_record) "
        f"SELECT {', '.join('u.' + f.column for f in columns)}, r.value "
        f"FROM unnest({arrays}) WITH ORDINALITY AS u({names}, ord) "
        "JOIN jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(value, ord) USING (ord) ORDER BY ord "
        "ON CONFLICT (source_system, source_reference) DO NOTHING RETURNING id, source_reference"
    )


def _receipt_row(fact: UsageFact, *, account_id: int, now: datetime) -> dict[str, Any]:
    """One receipt's column values by field name (the JSON record already serialised, exactly)."""
    return {
        "account": account_id,
        "source_system": SOURCE_SYSTEM,
        "source_reference": fact.source_reference,
        "litellm_call_id": fact.litellm_call_id,
        "request_id": fact.request_id,
        "run_id": fact.run_id,
        "attempt": fact.attempt,
        "status": fact.status,
        "model_group": fact.model_group,
        "model": fact.model,
        "provider": fact.provider,
        "call_type": fact.call_type,
        "stream": fact.stream,
        "cache_hit": fact.cache_hit,
        "prompt_tokens": fact.prompt_tokens,
        "completion_tokens": fact.completion_tokens,
        "total_tokens": fact.total_tokens,
        "cost_usd": fact.cost_usd,
        "charged_credits": usd_to_credits(fact.cost_usd),
        "zero_cost_suspect": fact.zero_cost_suspect,
        "end_user": fact.end_user,
        "api_key_hash": fact.api_key_hash,
        "api_key_alias": fact.api_key_alias,
        "team_id": fact.team_id,
        "started_at": fact.started_at,
        "ended_at": fact.ended_at,
        "created_at": now,
        "raw_record": dumps_exact(fact.record),
    }


def _insert_receipts(rows: list[tuple[UsageFact, int]], *, now: datetime) -> dict[str, int]:
    """INSERT … ON CONFLICT DO NOTHING; returns {source_reference: receipt id} of new receipts."""
    inserted: dict[str, int] = {}
    sql = _receipt_insert_sql()
    connection.ensure_connection()
    # A server-binding cursor on Django's connection (same transaction): the
    # parameters travel apart from the SQL instead of being quoted into it,
    # which halves the cost of a 512-record INSERT (bench/README.md, "Ingest");
    # wrap_database_errors turns psycopg's errors into Django's, as for any query.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        for start in range(0, len(rows), _CHUNK):
            values = [_receipt_row(fact, account_id=account, now=now) for fact, account in rows[start : start + _CHUNK]]
            params: list[Any] = [[row[f.name] for row in values] for f in _RECEIPT_FIELDS if f.name != "raw_record"]
            params.append("[" + ",".join(row["raw_record"] for row in values) + "]")
            cursor.execute(sql, params)
            inserted.update({ref: pk for pk, ref in cursor.fetchall()})
    return inserted


def _existing_receipts(references: Iterable[str]) -> dict[str, int]:
    refs = list(references)
    if not refs:
        return {}
    return dict(
        ChargeReceipt.objects.filter(source_system=SOURCE_SYSTEM, source_reference__in=refs).values_list(
            "source_reference", "id"
        )
    )


def commit_usage_fact(*, fact: UsageFact) -> CommitOutcome:
    """Bill one usage fact: one receipt and one usage debit, or nothing if it was billed before."""
    return commit_usage_facts(facts=[fact])[0]


@transaction.atomic
def commit_usage_facts(*, facts: Sequence[UsageFact]) -> list[CommitOutcome]:
    """Bill facts in one transaction; the outcomes are in the order of `facts`.

    Idempotent by (source_system, source_reference): a fact already billed,
    by this batch, an earlier one or a concurrent one, is a "duplicate".
    Facts whose end user has no alias are deferred (unknown_end_user).
    Receipts are inserted in source_reference order and debits in account
    order, so concurrent batches cannot deadlock.
    """
    now = timezone.now()
    aliases = dict(
        EndUserAlias.objects.filter(end_user__in={f.end_user for f in facts if f.end_user}).values_list(
            "end_user", "account_id"
        )
    )
    first_by_ref: dict[str, UsageFact] = {}
    unknown_user: list[UsageFact] = []
    for fact in facts:
        if fact.end_user not in aliases:
            unknown_user.append(fact)
        else:
            first_by_ref.setdefault(fact.source_reference, fact)

    ordered = sorted(first_by_ref.values(), key=lambda f: f.source_reference)
    inserted = _insert_receipts([(f, aliases[f.end_user]) for f in ordered], now=now)
    new_facts = [f for f in ordered if f.source_reference in inserted]
    CreditLedgerEntry.objects.bulk_create(
        [
            CreditLedgerEntry(
                account_id=aliases[f.end_user],
                amount_credits=-usd_to_credits(f.cost_usd),
                reason=CreditLedgerEntry.Reason.USAGE,
                receipt_id=inserted[f.source_reference],
                created_at=now,
            )
            for f in sorted(new_facts, key=lambda f: (aliases[f.end_user], inserted[f.source_reference]))
        ],
        batch_size=_CHUNK,
    )
    known = {**_existing_receipts(set(first_by_ref) - set(inserted)), **inserted}
    _close_open_deferrals(list(known))
    if inserted:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, call_id) FROM unnest(%s::text[]) AS call_id",
                [RECEIPT_CHANNEL, sorted({f.litellm_call_id for f in new_facts})],
            )
    if unknown_user:
        defer_usage(
            items=[
                NotBillable(
                    kind="deferred",
                    reason=DeferredUsage.Reason.UNKNOWN_END_USER,
                    detail=f"no billing account has the end user {f.end_user!r}"
                    if f.end_user
                    else "the record names no end user",
                    litellm_call_id=f.litellm_call_id,
                    record=f.record,
                    run_id=f.run_id,
                    attempt=f.attempt,
                    request_id=f.request_id,
                    end_user=f.end_user,
                )
                for f in unknown_user
            ]
        )

    outcomes = []
    claimed: set[str] = set()
    for fact in facts:
        ref = fact.source_reference
        if fact.end_user not in aliases:
            outcomes.append(CommitOutcome("deferred", fact.litellm_call_id, reason="unknown_end_user"))
        elif ref in inserted and ref not in claimed:
            claimed.add(ref)
            outcomes.append(CommitOutcome("processed", fact.litellm_call_id, inserted[ref]))
        else:
            outcomes.append(CommitOutcome("duplicate", fact.litellm_call_id, known.get(ref)))
    suspects = sum(1 for f in new_facts if f.zero_cost_suspect)
    transaction.on_commit(lambda: _count_outcomes(outcomes, suspects))
    return outcomes


def _count_outcomes(outcomes: Sequence[CommitOutcome], suspects: int) -> None:
    for outcome in outcomes:
        metrics.receipts_total.labels(outcome=outcome.outcome).inc()
    if suspects:
        metrics.zero_cost_suspect_total.inc(suspects)


def _close_open_deferrals(references: list[str]) -> None:
    """A deferred record that is now billed (late callback, backfill) stops waiting."""
    if not references:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {DeferredUsage._meta.db_table} AS d
               SET status = %s, receipt_id = r.id, updated_at = now(), next_attempt_at = NULL
              FROM {ChargeReceipt._meta.db_table} AS r
             WHERE d.status IN (%s, %s)
               AND d.source_system = %s
               AND d.source_reference = ANY(%s)
               AND r.source_system = d.source_system
               AND r.source_reference = d.source_reference
            """,
            [
                DeferredUsage.Status.BILLED,
                DeferredUsage.Status.PENDING,
                DeferredUsage.Status.FAILED,
                SOURCE_SYSTEM,
                references,
            ],
        )


def next_attempt_delay(attempts: int) -> timedelta:
    """Exponential backoff with full jitter, capped (BILLING_DEFERRED_* settings)."""
    base = settings.BILLING_DEFERRED_BASE_DELAY_SECONDS
    cap = settings.BILLING_DEFERRED_MAX_DELAY_SECONDS
    ceiling = min(cap, base * (2 ** max(0, attempts)))
    return timedelta(seconds=base / 2 + random.uniform(0, ceiling))


def defer_usage(*, items: Sequence[NotBillable]) -> None:
    """Keep records that cannot be billed now. One open row per source reference."""
    now = timezone.now()
    rows = []
    for item in items:
        waiting = item.kind == "deferred"
        rows.append(
            DeferredUsage(
                source_system=SOURCE_SYSTEM,
                source_reference=item.source_reference,
                litellm_call_id=item.litellm_call_id,
                request_id=item.request_id,
                end_user=item.end_user,
                reason=item.reason if waiting else DeferredUsage.Reason.INVALID,
                detail=item.detail if waiting else f"{item.reason}: {item.detail}",
                status=DeferredUsage.Status.PENDING if waiting else DeferredUsage.Status.FAILED,
                next_attempt_at=now + next_attempt_delay(0) if waiting else None,
                record=item.record,
            )
        )
    # ON CONFLICT DO NOTHING: a record already waiting keeps its row and schedule.
    DeferredUsage.objects.bulk_create(rows, ignore_conflicts=True, batch_size=_CHUNK)


@dataclass
class IngestResult:
    processed: int = 0
    duplicates: int = 0
    deferred: int = 0
    skipped: int = 0
    skipped_records: list[dict[str, Any]] = field(default_factory=list)
    deferred_records: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "duplicates": self.duplicates,
            "deferred": self.deferred,
            "skipped": self.skipped,
            "skipped_records": self.skipped_records,
            "deferred_records": self.deferred_records,
        }


def _commit_isolated(facts: Sequence[UsageFact]) -> list[CommitOutcome]:
    """Commit facts as a batch; if the batch fails, one by one, so one bad fact costs only itself."""
    try:
        return commit_usage_facts(facts=facts)
    except DatabaseError:
        if len(facts) == 1:
            raise
        logger.warning("batch commit of %d facts failed; committing one by one", len(facts), exc_info=True)
    outcomes = []
    for fact in facts:
        try:
            outcomes.append(commit_usage_fact(fact=fact))
        except DatabaseError as exc:
            # BILLING_NEVER_THROWS: keep it for replay, count it, go on with the rest.
            logger.exception("billing failed for litellm_call_id=%s", fact.litellm_call_id)
            metrics.invariant_violation_total.labels(reason="commit_error").inc()
            defer_usage(
                items=[
                    NotBillable(
                        kind="deferred",
                        reason=DeferredUsage.Reason.ERROR,
                        detail=f"{type(exc).__name__}: {exc}"[:2000],
                        litellm_call_id=fact.litellm_call_id,
                        record=fact.record,
                        run_id=fact.run_id,
                        attempt=fact.attempt,
                        request_id=fact.request_id,
                        end_user=fact.end_user,
                    )
                ]
            )
            outcomes.append(CommitOutcome("deferred", fact.litellm_call_id, reason="error"))
    return outcomes


def ingest_usage_records(*, records: Sequence[Any]) -> IngestResult:
    """Bill a batch of LiteLLM records; each is judged alone and none is dropped silently."""
    result = IngestResult()
    facts: list[UsageFact] = []
    kept: list[NotBillable] = []
    for index, record in enumerate(records):
        parsed = judge(record)
        if isinstance(parsed, UsageFact):
            facts.append(parsed)
            continue
        entry = {"index": index, "litellm_call_id": parsed.litellm_call_id or None, "reason": parsed.reason}
        if parsed.kind == "deferred":
            kept.append(parsed)
            result.deferred += 1
            result.deferred_records.append(entry)
            if parsed.reason == DeferredUsage.Reason.UNKNOWN_COST:
                metrics.missing_cost_deferred_total.inc()
        else:
            entry["detail"] = parsed.detail
            result.skipped += 1
            result.skipped_records.append(entry)
            if parsed.kind == "invalid":
                kept.append(parsed)
                metrics.invariant_violation_total.labels(reason=f"invalid_record:{parsed.reason}").inc()
            else:
                metrics.failed_call_without_cost_total.inc()
            logger.warning(
                "usage record %s skipped (%s): %s", parsed.litellm_call_id or f"#{index}", parsed.reason, parsed.detail
            )
    if kept:
        defer_usage(items=kept)
        for item in kept:
            if item.kind == "deferred":
                metrics.receipts_total.labels(outcome="deferred").inc()
            else:
                metrics.receipts_total.labels(outcome="skipped").inc()
    if facts:
        for fact, outcome in zip(facts, _commit_isolated(facts), strict=True):
            if outcome.outcome == "processed":
                result.processed += 1
            elif outcome.outcome == "duplicate":
                result.duplicates += 1
            else:
                result.deferred += 1
                result.deferred_records.append(
                    {"litellm_call_id": fact.litellm_call_id, "reason": outcome.reason or "deferred"}
                )
    return result


def ingest_batch_open(*, remote_addr: str, content_type: str, body_bytes: int) -> IngestBatch:
    """Store the delivery before it is processed (dj-stripe style)."""
    return IngestBatch.objects.create(remote_addr=remote_addr, content_type=content_type, body_bytes=body_bytes)


def ingest_batch_close(*, batch: IngestBatch, result: IngestResult, duration_ms: float) -> None:
    IngestBatch.objects.filter(pk=batch.pk).update(
        record_count=result.processed + result.duplicates + result.deferred + result.skipped,
        processed=result.processed,
        duplicates=result.duplicates,
        deferred=result.deferred,
        skipped=result.skipped,
        duration_ms=duration_ms,
    )


def ingest_batch_fail(*, batch: IngestBatch, error: str) -> None:
    IngestBatch.objects.filter(pk=batch.pk).update(error=error[:10_000])


_OPEN = (DeferredUsage.Status.PENDING, DeferredUsage.Status.FAILED)
_WAITING_REASONS = frozenset({DeferredUsage.Reason.UNKNOWN_COST, DeferredUsage.Reason.UNKNOWN_END_USER})


def retry_deferred_usage(*, deferred: DeferredUsage, record: dict[str, Any] | None = None) -> CommitOutcome | None:
    """Re-judge a deferred record and bill it through commit_usage_fact() if it can be billed now.

    With `record` given (e.g. a cost learnt elsewhere patched in), that record
    is judged; otherwise the stored one, and when its cost is still unknown
    LiteLLM's spend logs are asked for it first (outside any transaction).
    Returns the commit outcome ("processed" or "duplicate"), or None when it
    still cannot be billed: then the row is rescheduled with backoff, or
    marked failed after BILLING_DEFERRED_MAX_ATTEMPTS (counted in
    billing_invariant_violation_total{reason="deferred_expired"}). A row
    already billed or discarded, or being retried by another worker right
    now (its row lock is taken with SKIP LOCKED), is left alone (None).
    Two retries of one record can never bill it twice: the receipt's
    UNIQUE(source_system, source_reference) makes the second a duplicate.
    """
    current = DeferredUsage.objects.filter(pk=deferred.pk, status__in=_OPEN).first()
    if current is None:
        metrics.deferred_retries_total.labels(result="skipped").inc()
        return None
    lookup_error = ""
    if record is None:
        record = current.record
        judged = parse_usage_record(record)
        if isinstance(judged, NotBillable) and judged.reason == DeferredUsage.Reason.UNKNOWN_COST:
            record, lookup_error = _record_with_litellm_cost(record, judged)
    outcome, result = _settle_deferred(
        deferred_id=current.pk, record=record, lookup_error=lookup_error, learnt=record is not current.record
    )
    metrics.deferred_retries_total.labels(result=result).inc()
    return outcome


def _record_with_litellm_cost(record: dict[str, Any], judged: NotBillable) -> tuple[dict[str, Any], str]:
    """The record with the cost LiteLLM's spend logs know for it, or the record and why not."""
    if not judged.litellm_call_id:
        return record, "the record has no litellm_call_id to look its cost up by"
    if not settings.LITELLM_MASTER_KEY:
        return record, "litellm_error: LITELLM_MASTER_KEY is not set, so LiteLLM's spend logs cannot be asked"
    try:
        # No quick retries here: a failed lookup is an attempt, retried later with backoff.
        with LiteLLMClient(retries=0) as client:
            cost = client.cost_of_call(request_id=judged.request_id, litellm_call_id=judged.litellm_call_id)
    except LiteLLMError as exc:
        logger.warning("cost lookup for litellm_call_id=%s failed: %s", judged.litellm_call_id, exc)
        return record, f"litellm_error: {exc}"
    if cost is None:
        return record, "LiteLLM's spend logs have no row for this call yet"
    if cost.spend is None or cost.spend <= 0:
        # LiteLLM logs 0 when it could not price a call: that is no cost (never charge an unknown as 0).
        return record, f"LiteLLM's spend log {cost.request_id!r} has no cost for it either (spend={cost.spend})"
    patched = dict(record)
    patched["response_cost"] = cost.spend
    if record.get("response_cost_failure_debug_info") not in (None, {}, ""):
        patched["billing_original_response_cost_failure_debug_info"] = record["response_cost_failure_debug_info"]
    patched["response_cost_failure_debug_info"] = None
    patched["billing_cost_source"] = {"litellm_spend_log_request_id": cost.request_id}
    return patched, ""


@transaction.atomic
def _settle_deferred(
    *, deferred_id: int, record: Any, lookup_error: str, learnt: bool
) -> tuple[CommitOutcome | None, str]:
    row = DeferredUsage.objects.select_for_update(skip_locked=True).filter(pk=deferred_id, status__in=_OPEN).first()
    if row is None:
        return None, "skipped"
    parsed = parse_usage_record(record)
    if isinstance(parsed, UsageFact):
        outcome = commit_usage_fact(fact=parsed)
        if learnt:
            # Keep what was learnt (the cost from LiteLLM) with the row: billed, or waiting for an alias.
            DeferredUsage.objects.filter(pk=row.pk).update(record=parsed.record)
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
        reason, detail = DeferredUsage.Reason.UNKNOWN_END_USER, "no billing account has this end user yet"
    elif parsed.kind == "deferred":
        reason, detail = parsed.reason, lookup_error or parsed.detail
    else:
        # Invalid, or nothing to bill: retrying cannot help; staff decide.
        _mark_deferred(row, reason=row.reason, error=f"{parsed.reason}: {parsed.detail}", give_up=True)
        return None, "expired"
    expired = _mark_deferred(row, reason=reason, error=f"{reason}: {detail}", give_up=False)
    if expired:
        return None, "expired"
    return None, "litellm_error" if lookup_error.startswith("litellm_error") else "waiting"


def _mark_deferred(row: DeferredUsage, *, reason: str, error: str, give_up: bool) -> bool:
    """Count a failed attempt: reschedule with backoff, or mark failed. True when it just expired."""

    attempts = row.attempts + 1
    expired = give_up or attempts >= settings.BILLING_DEFERRED_MAX_ATTEMPTS
    now = timezone.now()
    DeferredUsage.objects.filter(pk=row.pk).update(
        attempts=attempts,
        reason=reason if reason in _WAITING_REASONS else row.reason,
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
def claim_due_deferred_usage(*, limit: int, now: Any = None) -> list[int]:
    """Claim up to `limit` pending records that are due, for one retry each.

    A claimed record's next attempt moves BILLING_DEFERRED_CLAIM_SECONDS ahead
    so the next sweep does not hand it out again while its retry runs; the
    retry then sets the real schedule (or bills it). Concurrent sweeps skip
    each other's rows (FOR UPDATE SKIP LOCKED).
    """
    from receipts.selectors import deferred_due

    now = now or timezone.now()
    ids = list(deferred_due(now=now).select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
    if ids:
        DeferredUsage.objects.filter(pk__in=ids).update(
            next_attempt_at=now + timedelta(seconds=settings.BILLING_DEFERRED_CLAIM_SECONDS), updated_at=now
        )
    return ids


def schedule_replay_for_end_user(*, end_user: str) -> None:
    """An alias was added: records waiting for this end user are due now (and replayed after commit)."""
    DeferredUsage.objects.filter(
        end_user=end_user,
        reason=DeferredUsage.Reason.UNKNOWN_END_USER,
        status__in=[DeferredUsage.Status.PENDING, DeferredUsage.Status.FAILED],
    ).update(status=DeferredUsage.Status.PENDING, next_attempt_at=timezone.now())
    from receipts.tasks import enqueue_end_user_replay

    transaction.on_commit(lambda: enqueue_end_user_replay(end_user=end_user))
