"""The staff dashboard on the admin index: is the books' machinery healthy? Each figure links to its list."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Max, Min, Sum
from django.urls import reverse
from django.utils import timezone

from holds.selectors import open_holds
from notifications.models import DeliveryStatus, WebhookDelivery
from payments.models import AttemptStatus, PaymentAttempt
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from reconciliation.models import ReconcileRun


@dataclass(frozen=True)
class Figure:
    label: str
    value: str
    url: str
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True)
class BooksHealth:
    figures: list[Figure]
    deferred_by_reason: list[tuple[str, int, str, str]] = field(default_factory=list)  # reason, count, oldest, url

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.figures)


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    seconds = int((now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{max(seconds, 0)} s"


def books_health(*, now: datetime | None = None) -> BooksHealth:
    now = now or timezone.now()
    figures = []

    run = ReconcileRun.objects.order_by("-finished_at", "-id").first()
    if run is None:
        figures.append(Figure("Last reconcile", "never ran", "", ok=False, detail="manage.py reconcile or the worker"))
    else:
        found = run.summary.get("found", {})
        figures.append(
            Figure(
                "Last reconcile",
                f"{run.outcome}, {_age(run.finished_at, now)} ago",
                "",
                ok=run.outcome == "clean" and now - run.finished_at < timedelta(hours=2),
                detail=", ".join(f"{k}: {v}" for k, v in found.items()) or "nothing found",
            )
        )

    deferred_url = reverse("admin:receipts_deferredusage_changelist")
    waiting = DeferredUsage.objects.open()
    by_reason = [
        (
            str(DeferredUsage.Reason(row["reason"]).label),
            row["n"],
            _age(row["oldest"], now),
            f"{deferred_url}?reason__exact={row['reason']}",
        )
        for row in waiting.values("reason").annotate(n=Count("id"), oldest=Min("created_at")).order_by("reason")
    ]
    total_waiting = sum(n for _, n, _, _ in by_reason)
    figures.append(Figure("Deferred records waiting", f"{total_waiting:,}", deferred_url, ok=total_waiting == 0))

    last = ChargeReceipt.objects.order_by("-id").values("created_at", "ended_at").first()
    lag = "—" if last is None or last["ended_at"] is None else _age(last["ended_at"], last["created_at"])
    last_batch = IngestBatch.objects.aggregate(at=Max("received_at"))["at"]
    figures.append(
        Figure(
            "Ingest lag (last receipt)",
            lag,
            reverse("admin:receipts_ingestbatch_changelist"),
            detail=f"last delivery {_age(last_batch, now)} ago" if last_batch else "no delivery yet",
        )
    )

    holds = open_holds(now=now).aggregate(n=Count("id"), credits=Sum("held_credits"))
    figures.append(
        Figure(
            "Open holds",
            f"{holds['n']:,} holding {holds['credits'] or 0:,} credits",
            reverse("admin:holds_credithold_changelist") + "?status__exact=held",
        )
    )

    pending = PaymentAttempt.objects.filter(status__in=(AttemptStatus.CREATED, AttemptStatus.PENDING))
    oldest = pending.aggregate(at=Min("created_at"))["at"]
    figures.append(
        Figure(
            "Pending payments",
            f"{pending.count():,}",
            reverse("admin:payments_paymentattempt_changelist") + "?status__exact=pending",
            ok=oldest is None or now - oldest < timedelta(hours=1),
            detail=f"oldest {_age(oldest, now)}" if oldest else "",
        )
    )

    failing = WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED).count()
    retrying = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, attempts__gt=0).count()
    figures.append(
        Figure(
            "Webhook deliveries failing",
            f"{failing:,} gave up, {retrying:,} retrying",
            reverse("admin:notifications_webhookdelivery_changelist") + "?status__exact=failed",
            ok=failing == 0,
        )
    )
    return BooksHealth(figures=figures, deferred_by_reason=by_reason)
