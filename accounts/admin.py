from django.contrib import admin

from accounts.models import BillingAccount, CreditLedgerEntry, EndUserAlias
from billing_project.admin_mixins import ReadOnlyMixin


class EndUserAliasInline(admin.TabularInline):
    model = EndUserAlias
    extra = 0


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "owner", "balance_credits", "created_at"]
    search_fields = ["name", "public_id", "aliases__end_user", "owner__username"]
    readonly_fields = ["public_id", "balance_credits", "created_at"]
    raw_id_fields = ["owner"]
    list_select_related = ["owner"]
    inlines = [EndUserAliasInline]


@admin.register(EndUserAlias)
class EndUserAliasAdmin(admin.ModelAdmin):
    list_display = ["end_user", "account", "created_at"]
    search_fields = ["end_user", "account__name"]
    raw_id_fields = ["account"]
    list_select_related = ["account"]


@admin.register(CreditLedgerEntry)
class CreditLedgerEntryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "account", "reason", "amount_credits", "balance_after", "receipt", "created_by", "created_at"]
    list_filter = ["reason"]
    search_fields = ["account__name", "idempotency_key", "memo"]
    raw_id_fields = ["account", "receipt", "created_by"]
    list_select_related = ["account", "created_by"]
    show_full_result_count = False
