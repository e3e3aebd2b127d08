"""Every call of an account, newest first by LiteLLM's call time: its receipt (billed) or its open deferral
(waiting, with the reason). Keyset pages: a cursor names the last row, so a page costs the same deep down."""

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import BooleanField, F, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from accounts.models import BillingAccount
from invoices.selectors import api_key_label
from payers.models import KEY_HASH_SHOWN_CHARS
from receipts.facts import fact_from_json, is_fact_json
from receipts.models import ChargeReceipt, DeferredUsage

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
BILLED = "billed"
WAITING = "waiting"
STATUSES = (BILLED, WAITING)
# In the sort, at one call time: billed rows before waiting rows, then the newest id first.
_KIND_RANK = {BILLED: 1, WAITING: 0}


class InvalidActivityQuery(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ActivityFilters:
    account: BillingAccount
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    key: str = ""
    end_user: str = ""
    status: str = ""


@dataclass(frozen=True)
class Cursor:
    called_at: datetime
    kind: str
    id: int

    def encode(self) -> str:
        text = f"{self.called_at.isoformat()}|{self.kind}|{self.id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            moment, kind, pk = raw.split("|")
            cursor = cls(datetime.fromisoformat(moment), kind, int(pk))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidActivityQuery("cursor is not one this API gave out", field="cursor") from exc
        if cursor.kind not in STATUSES or cursor.called_at.tzinfo is None:
            raise InvalidActivityQuery("cursor is not one this API gave out", field="cursor")
        return cursor


@dataclass(frozen=True)
class ActivityRow:
    kind: str
    id: int
    litellm_call_id: str
    called_at: datetime
    model_group: str
    key_label: str
    end_user: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None
    credits: int | None
    status: str
    waiting_reason: str = ""

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.called_at, self.kind, self.id)


@dataclass(frozen=True)
class ActivityPage:
    rows: list[ActivityRow]
    next_cursor: str | None


def _after(cursor: Cursor | None, kind: str, time_sql: str, id_sql: str) -> Q | RawSQL:
    """Rows after `cursor` in (call time desc, kind rank desc, id desc) order: a row comparison at the
    cursor's own kind (what the (account, call time desc, id desc) index walks), else a plain bound."""
    if cursor is None:
        return Q()
    rank, cursor_rank = _KIND_RANK[kind], _KIND_RANK[cursor.kind]
    if rank == cursor_rank:
        # Our own column names only; the values travel as parameters.
        return RawSQL(f"({time_sql}, {id_sql}) < (%s, %s)", [cursor.called_at, cursor.id], output_field=BooleanField())  # noqa: S611
    operator = "<=" if rank < cursor_rank else "<"
    return RawSQL(f"{time_sql} {operator} %s", [cursor.called_at], output_field=BooleanField())  # noqa: S611


def _filtered(query: QuerySet, filters: ActivityFilters, *, time: str, model: str, alias: str) -> QuerySet:
    """The filters, on receipts and on open deferrals alike (their fields named by the caller)."""
    if filters.since:
        query = query.filter(**{f"{time}__gte": filters.since})
    if filters.until:
        query = query.filter(**{f"{time}__lt": filters.until})
    if filters.model:
        query = query.filter(**{model: filters.model})
    if filters.end_user:
        query = query.filter(end_user=filters.end_user)
    if filters.key:
        # The key as pages show it (invoices.selectors.api_key_label): its alias, else its shortened hash.
        prefix = filters.key.removesuffix("…")
        by_hash = Q(api_key_hash__startswith=prefix) if len(prefix) >= KEY_HASH_SHOWN_CHARS else Q(api_key_hash=prefix)
        query = query.filter(Q(**{alias: filters.key}) | (Q(**{alias: ""}) & by_hash))
    return query


def _receipts(filters: ActivityFilters, cursor: Cursor | None) -> QuerySet[ChargeReceipt]:
    query = ChargeReceipt.objects.filter(account=filters.account).annotate(
        call_time=Coalesce("started_at", "created_at")
    )
    query = _filtered(query, filters, time="call_time", model="model_group", alias="api_key_alias")
    table = ChargeReceipt._meta.db_table
    after = _after(cursor, BILLED, f"COALESCE({table}.started_at, {table}.created_at)", f"{table}.id")
    return query.filter(after).order_by(F("call_time").desc(), "-id")


def _waiting(filters: ActivityFilters, cursor: Cursor | None) -> QuerySet[DeferredUsage]:
    query = DeferredUsage.objects.open().filter(account=filters.account, called_at__isnull=False)
    query = _filtered(query, filters, time="called_at", model="fact__model_group", alias="fact__api_key_alias")
    table = DeferredUsage._meta.db_table
    return query.filter(_after(cursor, WAITING, f"{table}.called_at", f"{table}.id")).order_by(
        F("called_at").desc(), "-id"
    )


def _billed_row(receipt: ChargeReceipt) -> ActivityRow:
    return ActivityRow(
        kind=BILLED,
        id=receipt.pk,
        litellm_call_id=receipt.litellm_call_id,
        called_at=receipt.call_time,  # type: ignore[attr-defined]
        model_group=receipt.model_group,
        key_label=api_key_label(receipt.api_key_hash, receipt.api_key_alias),
        end_user=receipt.end_user,
        prompt_tokens=receipt.prompt_tokens,
        completion_tokens=receipt.completion_tokens,
        cost_usd=receipt.cost_usd,
        credits=receipt.charged_credits,
        status=BILLED,
    )


def _waiting_row(row: DeferredUsage) -> ActivityRow:
    fact = fact_from_json(row.fact) if is_fact_json(row.fact) else None
    return ActivityRow(
        kind=WAITING,
        id=row.pk,
        litellm_call_id=row.litellm_call_id,
        called_at=row.called_at,  # type: ignore[arg-type]
        model_group=fact.model_group if fact else "",
        key_label=api_key_label(row.api_key_hash, fact.api_key_alias if fact else ""),
        end_user=row.end_user,
        prompt_tokens=fact.prompt_tokens if fact else 0,
        completion_tokens=fact.completion_tokens if fact else 0,
        cost_usd=fact.cost_usd if fact else None,
        credits=None,
        status=WAITING,
        waiting_reason=row.get_reason_display(),
    )


def activity_page(*, filters: ActivityFilters, cursor: Cursor | None = None, size: int = PAGE_SIZE) -> ActivityPage:
    """One page of calls, newest call time first; `next_cursor` is None on the last page."""
    rows: list[ActivityRow] = []
    if filters.status in ("", BILLED):
        rows += [_billed_row(r) for r in _receipts(filters, cursor)[: size + 1]]
    if filters.status in ("", WAITING):
        rows += [_waiting_row(r) for r in _waiting(filters, cursor)[: size + 1]]
    rows.sort(key=lambda r: (r.called_at, _KIND_RANK[r.kind], r.id), reverse=True)
    page = rows[:size]
    more = len(rows) > size
    return ActivityPage(rows=page, next_cursor=page[-1].cursor.encode() if more and page else None)


def all_activity(*, filters: ActivityFilters, chunk: int = 1000) -> Iterator[ActivityRow]:
    """Every matching row, in page order, a keyset page at a time (no server-side cursor: PgBouncer-safe)."""
    cursor: Cursor | None = None
    while True:
        page = activity_page(filters=filters, cursor=cursor, size=chunk)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.rows[-1].cursor
