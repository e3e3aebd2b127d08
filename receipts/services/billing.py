"""The money path: usage facts become charge receipts and usage debits.

commit_usage_facts() is the one writer of receipts and usage debits
(ONE_LEDGER_WRITER); commit_usage_fact() is its one-record form. Ingest, the
deferred retry and the reconciler's backfill all call them.
"""

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from django.db import connection, transaction
from django.utils import timezone

from accounts.hold_services import settle_holds
from accounts.models import CreditLedgerEntry
from accounts.money import ChargeRate, current_charge_rate
from accounts.selectors import PayerDecision, PayerQuery, resolve_payers
from receipts import metrics
from receipts.models import ChargeReceipt, DeferredUsage
from receipts.services.deferrals import defer_usage
from receipts.usage import SOURCE_SYSTEM, NotBillable, UsageFact

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
    fact: UsageFact, *, payer: PayerDecision, rate: ChargeRate, charged: int, now: datetime
) -> dict[str, Any]:
    """One receipt's column values by field name."""
    return {
        "account": payer.account_id,
        "payer_source": payer.source,
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
        "charged_credits": charged,
        "credits_per_usd": rate.credits_per_usd,
        "markup": rate.markup,
        "zero_cost_suspect": fact.zero_cost_suspect,
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
    """INSERT … ON CONFLICT DO NOTHING; returns {source_reference: receipt id} of new receipts."""
    inserted: dict[str, int] = {}
    connection.ensure_connection()
    # A server-binding cursor on Django's connection (same transaction): the JSON travels apart
    # from the SQL instead of being quoted into it; wrap_database_errors gives Django's exceptions.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        for start in range(0, len(rows), _CHUNK):
            cursor.execute(_RECEIPT_INSERT_SQL, [_rows_json(_RECEIPT_FIELDS, rows[start : start + _CHUNK])])
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
        for start in range(0, len(rows), _CHUNK):
            cursor.execute(_LEDGER_INSERT_SQL, [_rows_json(_LEDGER_FIELDS, rows[start : start + _CHUNK])])


def _existing_receipts(references: Iterable[str]) -> dict[str, int]:
    refs = list(references)
    if not refs:
        return {}
    return dict(
        ChargeReceipt.objects.filter(source_system=SOURCE_SYSTEM, source_reference__in=refs).values_list(
            "source_reference", "id"
        )
    )


def _payers(facts: Sequence[UsageFact]) -> list[PayerDecision | None]:
    """Who pays for each fact, derived from what LiteLLM logged (SERVER_DERIVES_IDENTITY); None: unknown."""
    return resolve_payers(
        queries=[
            PayerQuery(key_hash=f.api_key_hash, team_id=f.team_id, end_user=f.end_user, run_id=f.explicit_run_id)
            for f in facts
        ]
    )


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
    Facts whose payer no binding decides are deferred (never guessed).
    Receipts are inserted in source_reference order and debits in account
    order, so concurrent batches cannot deadlock. Every value was judged
    before it got here (receipts.usage), so the database has nothing to refuse.
    """
    if any(f.cost_usd is None for f in facts):
        raise ValueError("commit_usage_facts() bills facts with a known cost only")
    now = timezone.now()
    rate = current_charge_rate()
    payers = _payers(facts)
    first_by_ref: dict[str, tuple[UsageFact, PayerDecision]] = {}
    unknown_payer: list[UsageFact] = []
    for fact, payer in zip(facts, payers, strict=True):
        if payer is None:
            unknown_payer.append(fact)
        else:
            first_by_ref.setdefault(fact.source_reference, (fact, payer))

    ordered = sorted(first_by_ref.values(), key=lambda pair: pair[0].source_reference)
    charged = {f.source_reference: rate.credits_for(f.cost_usd) for f, _ in ordered}  # type: ignore[arg-type]
    inserted = _insert_receipts(
        [_receipt_row(f, payer=payer, rate=rate, charged=charged[f.source_reference], now=now) for f, payer in ordered]
    )
    new = [(f, payer.account_id) for f, payer in ordered if f.source_reference in inserted]
    _insert_usage_debits(
        [
            (account, charged[f.source_reference], inserted[f.source_reference])
            for f, account in sorted(new, key=lambda pair: (pair[1], inserted[pair[0].source_reference]))
        ],
        now=now,
    )
    # HOLDS_NEVER_OVERSPEND: each new receipt settles its call's hold in this same transaction (the charge
    # above has landed in full whatever the hold was: POST_CALL_NEVER_BLOCKS).
    receipt_by_call: dict[str, int] = {}
    for f, _ in new:
        receipt_by_call.setdefault(f.litellm_call_id, inserted[f.source_reference])
    settle_holds(litellm_call_ids=list(receipt_by_call), receipts_by_call_id=receipt_by_call, now=now)
    known = {**_existing_receipts(set(first_by_ref) - set(inserted)), **inserted}
    # One round trip for both: the deferrals these receipts settle, and the NOTIFY of the new ones.
    _close_open_deferrals(references=list(known), notify=sorted({f.litellm_call_id for f, _ in new}))
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
    claimed: set[str] = set()
    for fact, payer in zip(facts, payers, strict=True):
        ref = fact.source_reference
        if payer is None:
            outcomes.append(CommitOutcome("deferred", fact.litellm_call_id, reason=DeferredUsage.Reason.UNKNOWN_PAYER))
        elif ref in inserted and ref not in claimed:
            claimed.add(ref)
            outcomes.append(CommitOutcome("processed", fact.litellm_call_id, inserted[ref]))
        else:
            outcomes.append(CommitOutcome("duplicate", fact.litellm_call_id, known.get(ref)))
    suspects = sum(1 for f, _ in new if f.zero_cost_suspect)
    # Callbacks only: a backfilled receipt (from a spend-log row) is late by design, not ingest lag.
    ended = [f.ended_at for f, _ in new if f.ended_at is not None and not f.spend_log_request_id]
    transaction.on_commit(lambda: _count_outcomes(outcomes, suspects, ended))
    return outcomes


def _count_outcomes(outcomes: Sequence[CommitOutcome], suspects: int, ended: Sequence[datetime] = ()) -> None:
    for outcome in outcomes:
        metrics.receipts_total.labels(outcome=outcome.outcome).inc()
    if suspects:
        metrics.zero_cost_suspect_total.inc(suspects)
    committed = timezone.now()
    for ended_at in ended:
        # endTime comes from LiteLLM's clock: a skewed one never makes a negative lag.
        metrics.ingest_lag_seconds.observe(max(0.0, (committed - ended_at).total_seconds()))


_CLOSE_OPEN_DEFERRALS_SQL = f"""
    UPDATE {DeferredUsage._meta.db_table} AS d
       SET status = %s, receipt_id = r.id, updated_at = now(), next_attempt_at = NULL
      FROM {ChargeReceipt._meta.db_table} AS r
     WHERE d.status = ANY(%s)
       AND d.source_system = %s
       AND d.source_reference = ANY(%s)
       AND r.source_system = d.source_system
       AND r.source_reference = d.source_reference
"""


def _close_open_deferrals(*, references: list[str], notify: list[str]) -> None:
    """A deferred record now billed (late callback, backfill) stops waiting; NOTIFY RECEIPT_CHANNEL of each
    call id in `notify`; in one statement."""
    if not references and not notify:
        return
    close = [DeferredUsage.Status.BILLED, list(DeferredUsage.OPEN_STATUSES), SOURCE_SYSTEM, references]
    with connection.cursor() as cursor:
        if not notify:
            cursor.execute(_CLOSE_OPEN_DEFERRALS_SQL, close)
        elif not references:
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
