from django.db.models import QuerySet

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
