"""Staff admin of purchases: attempts and provider events are read-only records.

An attempt's page shows every event and ledger entry of it (what a dispute needs); an event can be
reprocessed (processing is idempotent: a credit already made is not made again).
"""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing_project.modeladmin import ReadOnlyMixin
from payments.models import PaymentAttempt, ProviderEvent
from payments.selectors import ledger_entries_of_attempt
from payments.services import process_provider_event, resolve_mismatch


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "public_id",
        "account",
        "provider",
        "amount_usd",
        "received_usd",
        "credits",
        "status",
        "mismatch",
        "created_at",
    ]
    list_filter = ["provider", "status", "mismatch"]
    search_fields = ["=public_id", "=provider_reference", "=payment_intent", "account__name"]
    list_select_related = ["account"]
    actions = ["mark_mismatch_resolved"]
    fields = [
        "public_id",
        "account",
        "provider",
        "status",
        "amount_usd",
        "credits",
        "credits_per_usd",
        "provider_reference",
        "payment_intent",
        "payer_wallet",
        "chain_id",
        "received_usd",
        "confirmations",
        "mismatch",
        "mismatch_resolved_at",
        "refunded_cents",
        "disputed_cents",
        "failure_reason",
        "created_by",
        "created_at",
        "updated_at",
        "events_and_entries",
    ]
    readonly_fields = fields

    @admin.action(description="Mark the under- or over-payment resolved")
    def mark_mismatch_resolved(self, request: HttpRequest, queryset: QuerySet[PaymentAttempt]) -> None:
        flagged = list(queryset.exclude(mismatch="").filter(mismatch_resolved_at__isnull=True))
        for attempt in flagged:
            resolve_mismatch(attempt=attempt, by=request.user)
        messages.info(request, f"{len(flagged)} payments marked resolved")

    @admin.display(description="events and ledger entries")
    def events_and_entries(self, attempt: PaymentAttempt) -> str:
        events = format_html_join(
            "",
            '<li><a href="{}">{} {}</a> · {} · {}</li>',
            (
                (
                    reverse("admin:payments_providerevent_change", args=[e.pk]),
                    e.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                    e.event_type,
                    e.outcome or e.error or "not processed",
                    "signature ok" if e.signature_valid else "signature refused",
                )
                for e in attempt.events.order_by("id")
            ),
        )
        entries = format_html_join(
            "",
            "<li>#{} {} {} credits → balance {} ({})</li>",
            (
                (e.pk, e.reason, f"{e.amount_credits:+,d}", f"{e.balance_after:,d}", e.idempotency_key)
                for e in ledger_entries_of_attempt(attempt=attempt)
            ),
        )
        return format_html("<p>Events</p><ul>{}</ul><p>Ledger entries</p><ul>{}</ul>", events, entries)


@admin.register(ProviderEvent)
class ProviderEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "provider", "event_type", "event_id", "signature_valid", "outcome", "error", "received_at"]
    list_filter = ["provider", "signature_valid", "event_type"]
    search_fields = ["=event_id", "attempt__public_id"]
    actions = ["reprocess"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Read-only fields, but the reprocess action needs the changelist's actions.
        return obj is None and request.user.has_perm("payments.change_providerevent")

    @admin.action(description="Reprocess the selected events (idempotent)")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[ProviderEvent]) -> None:
        done = failed = 0
        for event in queryset.filter(signature_valid=True).order_by("id"):
            try:
                process_provider_event(event=event)
                done += 1
            except Exception as exc:  # noqa: BLE001 - kept on the event; staff see the count
                failed += 1
                messages.error(request, f"event {event.pk}: {type(exc).__name__}: {exc}")
        messages.info(request, f"reprocessed {done} events, {failed} failed")
