from django.contrib import admin

from billing_project.admin_mixins import ReadOnlyMixin
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch


@admin.register(ChargeReceipt)
class ChargeReceiptAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["litellm_call_id", "account", "model_group", "cost_usd", "charged_credits", "status", "created_at"]
    list_filter = ["status", "stream", "provider", "zero_cost_suspect"]
    search_fields = ["=litellm_call_id", "=request_id", "=run_id", "=end_user"]
    raw_id_fields = ["account"]
    list_select_related = ["account"]
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(DeferredUsage)
class DeferredUsageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "litellm_call_id",
        "reason",
        "status",
        "attempts",
        "next_attempt_at",
        "end_user",
        "created_at",
    ]
    list_filter = ["reason", "status"]
    search_fields = ["=litellm_call_id", "=end_user"]
    readonly_fields = [f.name for f in DeferredUsage._meta.fields]
    raw_id_fields = ["receipt"]


@admin.register(IngestBatch)
class IngestBatchAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "received_at",
        "record_count",
        "processed",
        "duplicates",
        "deferred",
        "skipped",
        "duration_ms",
    ]
    show_full_result_count = False
