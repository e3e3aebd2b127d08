"""Staff admin for receipts (read-only, fast on millions of rows) and deferred records (replay).

Deferred records are resolved through receipts.services.retry_deferred_usage
("Retry now") and accounts.services.end_user_alias_create ("Attach end user
to an account and replay"); nothing here writes receipts or ledger entries
itself.
"""

import logging
from collections import defaultdict
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.widgets import AutocompleteSelect
from django.db import DatabaseError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from accounts.admin import AccountFilter, account_link
from accounts.exceptions import BillingError
from accounts.models import BillingAccount
from billing_project.modeladmin import EstimatedCountPaginator, ExactSearchMixin, IndexedValuesFilter, ReadOnlyMixin
from payers.models import EndUserAlias
from payers.services import end_user_alias_create
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.selectors import delivered_record_for_staff
from receipts.services import reprocess_delivery, retry_deferred_usage

logger = logging.getLogger(__name__)

# One admin action retries at most this many records; the sweep handles the rest.
MAX_RETRIES_PER_ACTION = 500


class ModelGroupFilter(IndexedValuesFilter):
    title = "model group"
    parameter_name = "model_group"
    field_name = "model_group"  # leads the receipt_model_time index


class ProviderFilter(IndexedValuesFilter):
    title = "provider"
    parameter_name = "provider"
    field_name = "provider"  # receipt_provider index


@admin.register(ChargeReceipt)
class ChargeReceiptAdmin(ExactSearchMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_per_page = 50
    list_display = [
        "litellm_call_id",
        "account_column",
        "model_group",
        "provider",
        "status",
        "total_tokens",
        "cost",
        "charged_credits",
        "end_user",
        "created_at",
    ]
    list_filter = [
        AccountFilter,
        ModelGroupFilter,
        ProviderFilter,
        "stream",
        "status",
        "cache_hit",
        "zero_cost_suspect",
    ]
    date_hierarchy = "created_at"
    search_fields = ["litellm_call_id", "request_id", "run_id", "end_user"]
    exact_search_fields = ("litellm_call_id", "request_id", "run_id", "end_user")
    search_help_text = "Exact LiteLLM call id, request id (chatcmpl-…), run id or end user."
    list_select_related = ["account"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    change_list_template = "admin/fast_change_list.html"
    readonly_fields = ["ledger_entry_link", "delivered_record"]

    @admin.display(description="account", ordering="account_id")
    def account_column(self, receipt: ChargeReceipt) -> str:
        return account_link(receipt.account_id, receipt.account.name, "admin:receipts_chargereceipt_changelist")

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, receipt: ChargeReceipt) -> str:
        """The cost exactly as LiteLLM sent it, without the column's trailing zeros."""
        return f"{receipt.cost_usd.normalize():f}"

    @admin.display(description="ledger entry")
    def ledger_entry_link(self, receipt: ChargeReceipt) -> str:
        entry = getattr(receipt, "ledger_entry", None)
        if entry is None:
            return "-"
        return format_html(
            '<a href="{}">#{}</a>: {} credits, balance after {}',
            reverse("admin:accounts_creditledgerentry_change", args=[entry.pk]),
            entry.pk,
            entry.amount_credits,
            entry.balance_after,
        )

    @admin.display(description="record (as delivered, without messages/response)")
    def delivered_record(self, receipt: ChargeReceipt) -> str:
        return _delivered_record_html(receipt.ingest_batch_id, receipt.batch_position, receipt.spend_log_request_id)


def _delivered_record_html(batch_id: int | None, position: int | None, spend_log_request_id: str = "") -> str:
    """The exact record a receipt or deferral came from: decompressed from its delivery on demand."""
    if batch_id is None:
        if spend_log_request_id:
            return f"backfilled from LiteLLM's spend log {spend_log_request_id!r}"
        return "-"
    text = delivered_record_for_staff(ingest_batch_id=batch_id, position=position)
    return format_html(
        '<a href="{}">delivery #{}</a>, record {}<pre style="white-space: pre-wrap">{}</pre>',
        reverse("admin:receipts_ingestbatch_change", args=[batch_id]),
        batch_id,
        position,
        text or "(not available)",
    )


class AttachEndUserForm(forms.Form):
    account = forms.ModelChoiceField(
        queryset=BillingAccount.objects.all(),
        widget=AutocompleteSelect(EndUserAlias._meta.get_field("account"), admin.site),
        help_text="The account the end user bills to from now on; its waiting records are replayed.",
    )


@admin.register(DeferredUsage)
class DeferredUsageAdmin(ExactSearchMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "litellm_call_id",
        "reason",
        "status",
        "attempts",
        "next_attempt_at",
        "end_user",
        "last_error_short",
        "receipt",
        "created_at",
    ]
    list_filter = ["reason", "status"]
    search_fields = ["litellm_call_id", "end_user", "request_id"]
    exact_search_fields = ("litellm_call_id", "end_user", "request_id")
    search_help_text = "Exact LiteLLM call id, end user or request id."
    readonly_fields = [*(f.name for f in DeferredUsage._meta.fields), "delivered_record"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    actions = ["retry_now", "attach_end_user"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions need the change permission; a record itself is never edited by hand.
        return obj is None and super().has_change_permission(request, obj)

    @admin.display(description="record (as delivered, without messages/response)")
    def delivered_record(self, deferred: DeferredUsage) -> str:
        return _delivered_record_html(deferred.ingest_batch_id, deferred.batch_position)

    @admin.display(description="last error")
    def last_error_short(self, deferred: DeferredUsage) -> str:
        text = deferred.last_error or deferred.detail
        return text if len(text) <= 80 else f"{text[:79]}…"

    @admin.action(description="Retry now", permissions=["change"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[DeferredUsage]) -> None:
        billed = waiting = closed = errors = 0
        selected = list(queryset.order_by("id")[: MAX_RETRIES_PER_ACTION + 1])
        for deferred in selected[:MAX_RETRIES_PER_ACTION]:
            if deferred.status not in DeferredUsage.OPEN_STATUSES:
                closed += 1
                continue
            try:
                outcome = retry_deferred_usage(deferred=deferred)
            except (DatabaseError, BillingError):
                logger.exception("admin retry of deferred usage %s failed", deferred.pk)
                errors += 1
                continue
            if outcome is None:
                waiting += 1
            else:
                billed += 1
        parts = [f"{billed} billed", f"{waiting} still waiting (rescheduled)"]
        if closed:
            parts.append(f"{closed} skipped (already billed or discarded)")
        if errors:
            parts.append(f"{errors} failed with an error (see the log)")
        level = messages.WARNING if errors or waiting else messages.SUCCESS
        self.message_user(request, "Retry now: " + ", ".join(parts) + ".", level)
        if len(selected) > MAX_RETRIES_PER_ACTION:
            self.message_user(
                request,
                f"Only the first {MAX_RETRIES_PER_ACTION} records were retried; run the action again for the rest.",
                messages.WARNING,
            )

    @admin.action(description="Attach end user to an account and replay", permissions=["change"])
    def attach_end_user(self, request: HttpRequest, queryset: QuerySet[DeferredUsage]) -> HttpResponse | None:
        if not request.user.has_perm("payers.add_enduseralias"):
            self.message_user(request, "You may not create end user aliases.", messages.ERROR)
            return None
        waiting = [
            d
            for d in queryset.order_by("id")
            if d.reason in DeferredUsage.PAYER_REASONS and d.status in DeferredUsage.OPEN_STATUSES
        ]
        by_end_user: dict[str, list[DeferredUsage]] = defaultdict(list)
        for deferred in waiting:
            by_end_user[deferred.end_user].append(deferred)
        nameless = by_end_user.pop("", [])

        if "apply" in request.POST:
            form = AttachEndUserForm(request.POST)
            if form.is_valid():
                self._attach(request, form.cleaned_data["account"], by_end_user, nameless)
                return None
        else:
            form = AttachEndUserForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Attach end users to an account",
            "opts": self.opts,
            "form": form,
            "media": self.media + form.media,
            "end_users": sorted((end_user, len(items)) for end_user, items in by_end_user.items()),
            "nameless": len(nameless),
            "ignored": queryset.count() - len(waiting),
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/receipts/deferredusage/attach_end_user.html", context)

    def _attach(
        self,
        request: HttpRequest,
        account: BillingAccount,
        by_end_user: dict[str, list[DeferredUsage]],
        nameless: list[DeferredUsage],
    ) -> None:
        ids = [d.pk for items in by_end_user.values() for d in items]
        existing = dict(
            EndUserAlias.objects.filter(end_user__in=list(by_end_user)).values_list("end_user", "account_id")
        )
        for end_user, items in sorted(by_end_user.items()):
            owner = existing.get(end_user)
            if owner is None:
                # Creates the alias and replays every record waiting for this end user.
                end_user_alias_create(account=account, end_user=end_user)
                self.message_user(request, f"End user {end_user!r} now bills to {account.name}.", messages.SUCCESS)
            elif owner == account.pk:
                for deferred in items:
                    try:
                        retry_deferred_usage(deferred=deferred)
                    except (DatabaseError, BillingError):
                        logger.exception("admin replay of deferred usage %s failed", deferred.pk)
            else:
                self.message_user(
                    request,
                    f"End user {end_user!r} already bills to another account (id {owner}); "
                    "its records were not replayed. Change that alias first if it is wrong.",
                    messages.ERROR,
                )
        if nameless:
            self.message_user(
                request,
                f"{len(nameless)} record(s) name no end user and cannot be attached.",
                messages.WARNING,
            )
        statuses = dict.fromkeys(DeferredUsage.Status.values, 0)
        for status in DeferredUsage.objects.filter(pk__in=ids).values_list("status", flat=True):
            statuses[status] += 1
        if ids:
            self.message_user(
                request,
                f"Replay: {statuses[DeferredUsage.Status.BILLED]} billed, "
                f"{statuses[DeferredUsage.Status.PENDING] + statuses[DeferredUsage.Status.FAILED]} still waiting "
                "(queued on the worker when a broker is configured).",
                messages.INFO,
            )


@admin.register(IngestBatch)
class IngestBatchAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "received_at",
        "status",
        "record_count",
        "processed",
        "duplicates",
        "deferred",
        "skipped",
        "duration_ms",
    ]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_filter = ["status"]
    exclude = ["body"]
    readonly_fields = ["stored_body_bytes"]
    actions = ["reprocess"]

    @admin.display(description="stored body (zstd)")
    def stored_body_bytes(self, batch: IngestBatch) -> str:
        if batch.body_purged_at:
            return (
                f"purged {batch.body_purged_at:%Y-%m-%d} (BILLING_DELIVERY_RETENTION_DAYS); {batch.body_bytes} received"
            )
        if not batch.body:
            return f"not stored (the body was unusable); {batch.body_bytes} received"
        return f"{len(batch.body)} bytes compressed (billing fields only), {batch.body_bytes} received"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The reprocess action needs it; a delivery itself is never edited.
        return obj is None and request.user.has_perm("receipts.change_ingestbatch")

    @admin.action(description="Reprocess (bills what is not billed yet; idempotent)", permissions=["change"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[IngestBatch]) -> None:
        done = failed = 0
        for batch in queryset.order_by("id")[:MAX_RETRIES_PER_ACTION]:
            try:
                reprocess_delivery(batch=batch)
                done += 1
            except Exception:
                logger.exception("admin reprocess of delivery %s failed", batch.pk)
                failed += 1
        self.message_user(request, f"Reprocessed {done} deliveries; {failed} failed (see their error).", messages.INFO)
