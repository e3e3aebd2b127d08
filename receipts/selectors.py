import json
from dataclasses import dataclass
from datetime import UTC, date, datetime

import zstandard
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate

from receipts.delivery import BodyError, split_delivery
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch

# What staff see of a delivered record: never the prompt or completion text.
_PRIVATE_FIELDS = ("messages", "response")
_SHOWN_BYTES = 200_000


def receipt_for_call(*, litellm_call_id: str) -> ChargeReceipt | None:
    return (
        ChargeReceipt.objects.select_related("account").filter(litellm_call_id=litellm_call_id).order_by("id").first()
    )


def open_deferral_for_call(*, litellm_call_id: str) -> DeferredUsage | None:
    return DeferredUsage.objects.open().filter(litellm_call_id=litellm_call_id).order_by("-id").first()


def deferred_due(*, now: datetime) -> QuerySet[DeferredUsage]:
    return DeferredUsage.objects.filter(status=DeferredUsage.Status.PENDING, next_attempt_at__lte=now).order_by(
        "next_attempt_at", "id"
    )


def deferred_open_counts() -> dict[tuple[str, str], int]:
    """Open deferred records by (status, reason): pending ones wait for a retry, failed ones for staff."""
    rows = DeferredUsage.objects.open().values_list("status", "reason").annotate(n=Count("id")).order_by()
    return {(status, reason): n for status, reason, n in rows}


def delivery_body(*, batch: IngestBatch) -> bytes:
    """The body of a delivery exactly as it was received."""
    return zstandard.ZstdDecompressor().decompress(bytes(batch.body or b""))


def delivered_record(*, ingest_batch_id: int | None, position: int | None) -> bytes | None:
    """The exact bytes of one record of a delivery (what a receipt or deferral came from)."""
    if ingest_batch_id is None or position is None:
        return None
    batch = IngestBatch.objects.filter(pk=ingest_batch_id).first()
    if batch is None or not batch.body:
        return None
    try:
        records = split_delivery(delivery_body(batch=batch))
    except BodyError:
        return None
    return records[position] if 0 <= position < len(records) else None


def delivered_record_for_staff(*, ingest_batch_id: int | None, position: int | None) -> str:
    """A delivered record as readable text for the admin, without `messages`/`response`."""
    raw = delivered_record(ingest_batch_id=ingest_batch_id, position=position)
    if raw is None:
        return ""
    try:
        value = json.loads(raw, parse_float=str, parse_int=str, parse_constant=str)
    except (ValueError, RecursionError):
        return raw[:_SHOWN_BYTES].decode("utf-8", "replace")
    if isinstance(value, dict):
        value = {k: ("(not shown)" if k in _PRIVATE_FIELDS else v) for k, v in value.items()}
    text = json.dumps(value, indent=2, ensure_ascii=True)
    return text[:_SHOWN_BYTES]


@dataclass(frozen=True)
class CallDayUsage:
    """One UTC day of an account's billed calls, dated by LiteLLM's call time (not when they were billed)."""

    day: date
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: int


def usage_by_call_day(*, account_id: int, start: datetime, end: datetime) -> dict[date, CallDayUsage]:
    """Billed usage per UTC day of call time in [start, end) (the receipt_account_call index)."""
    rows = (
        ChargeReceipt.objects.filter(account_id=account_id)
        .annotate(call_time=Coalesce("started_at", "created_at"))
        .filter(call_time__gte=start, call_time__lt=end)
        .annotate(day=TruncDate("call_time", tzinfo=UTC))
        .values("day")
        .annotate(
            calls=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            total=Sum("total_tokens"),
            credits=Sum("charged_credits"),
        )
    )
    return {
        r["day"]: CallDayUsage(r["day"], r["calls"], r["prompt"], r["completion"], r["total"], r["credits"])
        for r in rows
    }
