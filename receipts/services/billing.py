"""The money path: usage facts become charge receipts and usage debits.

commit_usage_facts() is the one writer of receipts and usage debits
(ONE_LEDGER_WRITER); commit_usage_fact() is its one-record form. Ingest, the
deferred retry and the reconciler's backfill all call them.
"""

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import CreditLedgerEntry
from accounts.money import ChargeRate, current_charge_rate
from accounts.services import grant_credits
from billing_project.db import INSERT_CHUNK_ROWS
from holds.services import settle_holds
from payers.selectors import PayerDecision
from receipts import metrics
from receipts.facts import REUSED_CALL_SEPARATOR, SOURCE_SYSTEM, NotBillable, UsageFact
from receipts.models import ChargeReceipt, DeferredUsage
from receipts.services.deferrals import defer_usage, payers_of

logger = logging.getLogger(__name__)

RECEIPT_CHANNEL = "billing_receipts"


@dataclass(frozen=True)
class CommitOutcome:
    """What happened to one fact: "processed" (new receipt), "duplicate" or "deferred"."""

    outcome: str
    litellm_call_id: str
    receipt_id: int | None = None
    reason: str = ""


# Columns of a receipt INSERT, in model order (the primary key comes from the sequence).
_RECEIPT_FIELDS = [f for f in ChargeReceipt._meta.concrete_fields if not f.primary_key]
_LEDGER_FIELDS = [f for f in CreditLedgerEntry._meta.concrete_fields if not f.primary_key]
# One JSON document per statement, encoded in C: psycopg dumps a list parameter element by element in Python,
# which cost more than the INSERT itself (bench/README.md, "Ingest vs the ceiling"). Decimal as its exact digits.
_ENCODER = msgspec.json.Encoder(decimal_format="string")


def _record_type(field: Any) -> str:
    # Text, not varchar(n): an explicit cast to varchar(n) silently truncates, an assignment refuses.
    # JSON columns travel as their JSON text and are cast in the select list.
    if field.get_internal_type() in ("CharField", "JSONField"):
        return "text"
    return field.db_type(connection)


def _json_insert_sql(model: Any, fields: list[Any], tail: str) -> str:
    """INSERT … SELECT from one JSON array of row objects, rows kept in array order (WITH ORDINALITY)."""
    names = ", ".join(f.column for f in fields)
    record = ", ".join(f"{f.column} {_record_type(f)}" for f in fields)
    select = ", ".join(
        f"u.{f.column}::jsonb" if f.get_internal_type() == "JSONField" else f"u.{f.column}" for f in fields
    )
    return (
        f"INSERT INTO {model._meta.db_table} ({names}) SELECT {select} "
        f"FROM ROWS FROM (json_to_recordset(%s::json) AS ({record})) WITH ORDINALITY AS u({names}, ord) "
        f"ORDER BY ord {tail}"
    )


def _rows_json(fields: list[Any], rows: Sequence[dict[str, Any]]) -> str:
    return _ENCODER.encode([{f.column: row[f.name] for f in fields} for row in rows]).decode()


_RECEIPT_INSERT_SQL = _json_insert_sql(
    ChargeReceipt,
    _RECEIPT_FIELDS,
    "ON CONFLICT (source_system, source_reference) DO NOTHING RETURNING id, source_reference",
)
_LEDGER_INSERT_SQL = _json_insert_sql(CreditLedgerEntry, _LEDGER_FIELDS, "")


def _receipt_row(
    fact: UsageFact, *, ref: str, payer: PayerDecision, rate: ChargeRate, charged: int, now: datetime
) -> dict[str, Any]:
    """One receipt's column values by field name."""
    return {
        "account": payer.account_id,
        "payer_source": payer.source,
        "source_system": SOURCE_SYSTEM,
        "source_reference": ref,
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
        "charged_credits": charged,
        "credits_per_usd": rate.credits_per_usd,
        "markup": rate.markup,
        "zero_cost_suspect": fact.zero_cost_suspect,
        "provisional_cost": fact.provisional_cost,
        "end_user": fact.end_user,
        "api_key_hash": fact.api_key_hash,
        "api_key_alias": fact.api_key_alias,
        "team_id": fact.team_id,
        "started_at": fact.started_at,
        "ended_at": fact.ended_at,
        "created_at": now,
        "cost_breakdown": None if fact.cost_breakdown is None else json.dumps(fact.cost_breakdown),
        "ingest_batch": fact.ingest_batch_id,
        "batch_position": fact.batch_position,
        "spend_log_request_id": fact.spend_log_request_id,
    }


def _insert_receipts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """INSERT … ON CONFLICT DO NOTHING, rows in source_reference order (concurrent batches lock keys in one
    order: no deadlock); returns {source_reference: receipt id} of new receipts."""
    rows = sorted(rows, key=lambda row: row["source_reference"])
    inserted: dict[str, int] = {}
    connection.ensure_connection()
    # A server-binding cursor on Django's connection (same transaction): the JSON travels apart
    # from the SQL instead of being quoted into it; wrap_database_errors gives Django's exceptions.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        for start in range(0, len(rows), INSERT_CHUNK_ROWS):
            cursor.execute(_RECEIPT_INSERT_SQL, [_rows_json(_RECEIPT_FIELDS, rows[start : start + INSERT_CHUNK_ROWS])])
            inserted.update({ref: pk for pk, ref in cursor.fetchall()})
    return inserted


def _insert_usage_debits(entries: list[tuple[int, int, int]], *, now: datetime) -> None:
    """Append usage debits (account, credits, receipt), in the given order, as one statement per chunk.

    The ledger's triggers do the rest per row, as for any INSERT: check the receipt, move the balance,
    set balance_after and the id under the account lock, summarise. Every other column gets its model default.
    """
    if not entries:
        return
    defaults = {f.name: f.get_default() for f in _LEDGER_FIELDS}
    rows = [
        {
            **defaults,
            "account": account,
            "amount_credits": -credits,
            "reason": CreditLedgerEntry.Reason.USAGE.value,
            "receipt": receipt,
            "created_at": now,
        }
        for account, credits, receipt in entries
    ]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_CHUNK_ROWS):
            cursor.execute(_LEDGER_INSERT_SQL, [_rows_json(_LEDGER_FIELDS, rows[start : start + INSERT_CHUNK_ROWS])])


def _existing_receipts(references: Iterable[str]) -> dict[str, int]:
    refs = list(references)
    if not refs:
        return {}
    return dict(
        ChargeReceipt.objects.filter(source_system=SOURCE_SYSTEM, source_reference__in=refs).values_list(
            "source_reference", "id"
        )
    )


@dataclass(frozen=True)
class _BilledCall:
    """A receipt already holding a call id: what tells whether a new record is the same call."""

    receipt_id: int
    source_reference: str
    request_id: str
    api_key_hash: str
    prompt_tokens: int
    completion_tokens: int


def _billed_calls(call_ids: Iterable[str]) -> dict[str, list[_BilledCall]]:
    """Every receipt of these call ids (whatever run, attempt or reuse suffix), by call id."""
    ids = sorted(set(call_ids))
    found: dict[str, list[_BilledCall]] = {}
    if not ids:
        return found
    rows = ChargeReceipt.objects.filter(source_system=SOURCE_SYSTEM, litellm_call_id__in=ids).values_list(
        "litellm_call_id", "id", "source_reference", "request_id", "api_key_hash", "prompt_tokens", "completion_tokens"
    )
    for call_id, *values in rows:
        found.setdefault(call_id, []).append(_BilledCall(*values))
    return found


def _same_billed_call(fact: UsageFact, billed: Sequence[_BilledCall]) -> _BilledCall | None:
    """The receipt that already records this very call (same reference, or a reuse of it), if any."""
    base = fact.source_reference
    for call in billed:
        ref = call.source_reference
        if (ref == base or ref.startswith(base + REUSED_CALL_SEPARATOR)) and fact.is_same_call(
            request_id=call.request_id,
            api_key_hash=call.api_key_hash,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
        ):
            return call
    return None


def unknown_payer_detail(fact: UsageFact) -> str:
    """What staff need to bind the payer of a deferred record."""
    run = f", run {fact.explicit_run_id!r}" if fact.explicit_run_id else ""
    return (
        f"no binding decides who pays: key hash {fact.api_key_hash or '(none)'!r}, "
        f"team {fact.team_id or '(none)'!r}, end user {fact.end_user or '(none)'!r}{run}"
    )


def commit_usage_fact(*, fact: UsageFact) -> CommitOutcome:
    """Bill one usage fact: one receipt and one usage debit, or nothing if it was billed before."""
    return commit_usage_facts(facts=[fact])[0]


@transaction.atomic
def commit_usage_facts(*, facts: Sequence[UsageFact]) -> list[CommitOutcome]:
    """Bill facts in one transaction; the outcomes are in the order of `facts`.

    Idempotent by (source_system, source_reference): a fact already billed,
    by this batch, an earlier one or a concurrent one, is a "duplicate".
    A different call that reuses a billed call id (clients may choose call ids)
    is billed as its own receipt under fact.reused_call_reference and counted
    (A_SERVED_CALL_IS_BILLED). Facts whose payer no binding decides are
    deferred (never guessed). Receipts are inserted in source_reference order
    and debits in account order, so concurrent batches cannot deadlock. Every
    value was judged before it got here (integrations.litellm.records), so the database has
    nothing to refuse.
    """
    if any(f.cost_usd is None for f in facts):
        raise ValueError("commit_usage_facts() bills facts with a known cost only")
    now = timezone.now()
    rate = current_charge_rate()
    payers = payers_of(facts)
    # The batch's distinct calls per source reference (an identical record again follows its first copy).
    calls: dict[str, list[int]] = {}
    first_copy: list[int | None] = [None] * len(facts)
    unknown_payer: list[UsageFact] = []
    for index, (fact, payer) in enumerate(zip(facts, payers, strict=True)):
        if payer is None:
            unknown_payer.append(fact)
            continue
        group = calls.setdefault(fact.source_reference, [])
        first_copy[index] = next((i for i in group if _same_fact_call(facts[i], fact)), index)
        if first_copy[index] == index:
            group.append(index)

    # Round 1: the first call of each reference, under the reference itself.
    ref_of: dict[int, str] = {group[0]: base for base, group in calls.items()}
    inserted = _bill_new_receipts(facts, payers, {base: group[0] for base, group in calls.items()}, rate, now)
    known: dict[str, int] = dict(inserted)
    # Round 2: a reference already billed (before, or by round 1 for another call of this batch) is either
    # this very call again (a duplicate) or another call that reused the id (billed under its reuse reference).
    contested = [base for base, group in calls.items() if base not in inserted or len(group) > 1]
    billed = _billed_calls(facts[calls[base][0]].litellm_call_id for base in contested)
    reusing: dict[str, int] = {}
    for base in contested:
        for index in calls[base]:
            if index == calls[base][0] and base in inserted:
                continue
            same = _same_billed_call(facts[index], billed.get(facts[index].litellm_call_id, []))
            if same is not None:
                ref_of[index] = same.source_reference
                known[same.source_reference] = same.receipt_id
            else:
                ref_of[index] = facts[index].reused_call_reference
                reusing[ref_of[index]] = index
    if reusing:
        again = _bill_new_receipts(facts, payers, reusing, rate, now)
        inserted.update(again)
        # A reuse reference that still conflicts is this very call, billed by a concurrent delivery.
        known.update({**_existing_receipts(set(reusing) - set(again)), **again})

    owner = {ref: index for index, ref in ref_of.items() if ref in inserted}
    new = sorted(inserted.items(), key=lambda item: (payers[owner[item[0]]].account_id, item[1]))  # type: ignore[union-attr]
    _insert_usage_debits(
        [(payers[owner[ref]].account_id, _credits(facts[owner[ref]], rate), pk) for ref, pk in new],  # type: ignore[union-attr]
        now=now,
    )
    # HOLDS_NEVER_OVERSPEND: each new receipt settles its call's hold in this same transaction (the charge
    # above has landed in full whatever the hold was: POST_CALL_NEVER_BLOCKS), when the hold is its payer's.
    receipt_by_call: dict[str, tuple[int, int]] = {}
    for ref, pk in sorted(inserted.items(), key=lambda item: item[1]):
        fact = facts[owner[ref]]
        receipt_by_call.setdefault(fact.litellm_call_id, (pk, payers[owner[ref]].account_id))  # type: ignore[union-attr]
    settle_holds(receipts_by_call_id=receipt_by_call, now=now)
    # One round trip for both: the deferrals these receipts settle, and the NOTIFY of the new ones.
    _close_open_deferrals(
        settled=[(facts[index], known[ref]) for index, ref in ref_of.items() if ref in known],
        notify=sorted({facts[owner[ref]].litellm_call_id for ref in inserted}),
    )
    if unknown_payer:
        defer_usage(
            items=[
                NotBillable(
                    kind="deferred",
                    reason=DeferredUsage.Reason.UNKNOWN_PAYER,
                    detail=unknown_payer_detail(f),
                    litellm_call_id=f.litellm_call_id,
                    fact=f,
                    ingest_batch_id=f.ingest_batch_id,
                    batch_position=f.batch_position,
                )
                for f in unknown_payer
            ]
        )

    outcomes = []
    for index, fact in enumerate(facts):
        copy = first_copy[index]
        if copy is None:
            outcomes.append(CommitOutcome("deferred", fact.litellm_call_id, reason=DeferredUsage.Reason.UNKNOWN_PAYER))
            continue
        ref = ref_of[copy]
        if copy == index and ref in inserted:
            outcomes.append(CommitOutcome("processed", fact.litellm_call_id, inserted[ref]))
        else:
            outcomes.append(CommitOutcome("duplicate", fact.litellm_call_id, known.get(ref)))
    new_facts = [facts[owner[ref]] for ref in inserted]
    reused = sum(1 for ref in inserted if ref != facts[owner[ref]].source_reference)
    suspects = sum(1 for f in new_facts if f.zero_cost_suspect)
    # Callbacks only: a backfilled receipt (from a spend-log row) is late by design, not ingest lag.
    ended = [f.ended_at for f in new_facts if f.ended_at is not None and not f.spend_log_request_id]
    transaction.on_commit(lambda: _count_outcomes(outcomes, suspects, ended, reused))
    return outcomes


def correct_provisional_charge(*, receipt_id: int, cost_usd: Decimal) -> CreditLedgerEntry | None:
    """A provisional charge (BILLING_UNPRICED_CALLS=charge_hold) meets its real cost: the difference moves
    as one `adjustment` entry (a refund of what the hold over-charged, or a debit of what it under-charged),
    at the receipt's own rate, once per receipt (idempotency key). The receipt itself, append-only, keeps
    the estimate it was charged at. Returns the entry, or None when nothing is owed either way."""
    receipt = ChargeReceipt.objects.select_related("account").get(pk=receipt_id)
    if not receipt.provisional_cost:
        return None
    rate = ChargeRate(credits_per_usd=receipt.credits_per_usd, markup=receipt.markup)
    owed = rate.credits_for(cost_usd) - receipt.charged_credits
    if owed == 0:
        return None
    return grant_credits(
        account=receipt.account,
        amount_credits=-owed,
        reason=CreditLedgerEntry.Reason.ADJUSTMENT,
        idempotency_key=f"provisional-cost:{receipt.pk}",
        memo=f"call {receipt.litellm_call_id}: charged its hold ({receipt.cost_usd} USD); "
        f"LiteLLM's cost is {cost_usd} USD",
    ).entry


def _same_fact_call(a: UsageFact, b: UsageFact) -> bool:
    return a.is_same_call(
        request_id=b.request_id,
        api_key_hash=b.api_key_hash,
        prompt_tokens=b.prompt_tokens,
        completion_tokens=b.completion_tokens,
    )


def _credits(fact: UsageFact, rate: ChargeRate) -> int:
    return rate.credits_for(fact.cost_usd)  # type: ignore[arg-type]


def _bill_new_receipts(
    facts: Sequence[UsageFact],
    payers: Sequence[PayerDecision | None],
    chosen: Mapping[str, int],
    rate: ChargeRate,
    now: datetime,
) -> dict[str, int]:
    """Insert the receipts of `chosen` (reference -> fact index); {reference: id} of those new."""
    return _insert_receipts(
        [
            _receipt_row(
                facts[i],
                ref=ref,
                payer=payers[i],
                rate=rate,
                charged=_credits(facts[i], rate),
                now=now,  # type: ignore[arg-type]
            )
            for ref, i in chosen.items()
        ]
    )


def _count_outcomes(outcomes: Sequence[CommitOutcome], suspects: int, ended: Sequence[datetime], reused: int) -> None:
    for outcome in outcomes:
        metrics.receipts_total.labels(outcome=outcome.outcome).inc()
    if suspects:
        metrics.zero_cost_suspect_total.inc(suspects)
    if reused:
        metrics.call_id_reused_total.inc(reused)
    committed = timezone.now()
    for ended_at in ended:
        # endTime comes from LiteLLM's clock: a skewed one never makes a negative lag.
        metrics.ingest_lag_seconds.observe(max(0.0, (committed - ended_at).total_seconds()))


# A deferral closes when a receipt of its very call lands: same reference (or that call's reuse reference),
# and, for a deferral that kept its judged fact, the same response id, key and tokens (a different call
# that reused the call id must not close it). Rows kept before facts were stored close by reference alone.
_CLOSE_OPEN_DEFERRALS_SQL = f"""
    UPDATE {DeferredUsage._meta.db_table} AS d
       SET status = %s, receipt_id = u.receipt_id, updated_at = now(), next_attempt_at = NULL
      FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bigint[])
           AS u(ref, reuse_ref, receipt_id, request_id, api_key_hash, prompt_tokens, completion_tokens)
     WHERE d.status = ANY(%s)
       AND d.source_system = %s
       AND d.source_reference IN (u.ref, u.reuse_ref)
       AND (d.fact->>'version' IS NULL
            OR ((d.fact->>'request_id' IN ('', u.request_id, d.litellm_call_id)
                 OR u.request_id IN ('', d.litellm_call_id))
                AND (d.fact->>'api_key_hash' = '' OR u.api_key_hash = '' OR d.fact->>'api_key_hash' = u.api_key_hash)
                AND (d.fact->>'prompt_tokens')::bigint = u.prompt_tokens
                AND (d.fact->>'completion_tokens')::bigint = u.completion_tokens))
"""


def _close_open_deferrals(*, settled: Sequence[tuple[UsageFact, int]], notify: list[str]) -> None:
    """A deferred record now billed (late callback, backfill) stops waiting; NOTIFY RECEIPT_CHANNEL of each
    call id in `notify`; in one statement. `settled`: each billed fact with its receipt's id."""
    if not settled and not notify:
        return
    # A provisional charge (the hold's estimate) leaves its deferral waiting for the real cost.
    settled = sorted(((f, pk) for f, pk in settled if not f.provisional_cost), key=lambda p: p[0].source_reference)
    close = [
        DeferredUsage.Status.BILLED,
        [f.source_reference for f, _ in settled],
        [f.reused_call_reference for f, _ in settled],
        [pk for _, pk in settled],
        [f.request_id for f, _ in settled],
        [f.api_key_hash for f, _ in settled],
        [f.prompt_tokens for f, _ in settled],
        [f.completion_tokens for f, _ in settled],
        list(DeferredUsage.OPEN_STATUSES),
        SOURCE_SYSTEM,
    ]
    with connection.cursor() as cursor:
        if not notify:
            cursor.execute(_CLOSE_OPEN_DEFERRALS_SQL, close)
        elif not settled:
            cursor.execute(
                "SELECT pg_notify(%s, call_id) FROM unnest(%s::text[]) AS call_id", [RECEIPT_CHANNEL, notify]
            )
        else:
            # A data-modifying CTE runs to completion whether or not the outer query reads it.
            cursor.execute(
                f"WITH closed AS ({_CLOSE_OPEN_DEFERRALS_SQL}) "
                "SELECT pg_notify(%s, call_id) FROM unnest(%s::text[]) AS call_id",
                [*close, RECEIPT_CHANNEL, notify],
            )
