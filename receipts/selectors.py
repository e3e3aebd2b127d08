from django.db.models import Count, QuerySet

from receipts.models import ChargeReceipt, DeferredUsage


def receipt_for_call(*, litellm_call_id: str) -> ChargeReceipt | None:
    return (
        ChargeReceipt.objects.select_related("account").filter(litellm_call_id=litellm_call_id).order_by("id").first()
    )


def open_deferral_for_call(*, litellm_call_id: str) -> DeferredUsage | None:
    return (
        DeferredUsage.objects.filter(
            litellm_call_id=litellm_call_id,
            status__in=[DeferredUsage.Status.PENDING, DeferredUsage.Status.FAILED],
        )
        .order_by("-id")
        .first()
    )


def deferred_due(*, now) -> QuerySet[DeferredUsage]:  # type: ignore[no-untyped-def]
    return DeferredUsage.objects.filter(status=DeferredUsage.Status.PENDING, next_attempt_at__lte=now).order_by(
        "next_attempt_at", "id"
    )


def deferred_open_counts() -> dict[tuple[str, str], int]:
    """Open deferred records by (status, reason): pending ones wait for a retry, failed ones for staff."""
    rows = (
        DeferredUsage.objects.filter(status__in=[DeferredUsage.Status.PENDING, DeferredUsage.Status.FAILED])
        .values_list("status", "reason")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {(status, reason): n for status, reason, n in rows}
