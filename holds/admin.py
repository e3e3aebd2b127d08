"""Admin of credit holds: the open holds per account, filters by status and account, and a "release" action."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.models import BillingAccount
from billing_project.modeladmin import ReadOnlyMixin
from holds.models import CreditHold
from holds.selectors import credit_availability
from holds.services import release_hold

RELEASE_PERMISSION = "holds.change_credithold"


def holds_summary(account: BillingAccount) -> str:
    """For the account page: available, held, and a link to its open holds."""
    availability = credit_availability(account=account)
    return format_html(
        '{} available · {} held · <a href="{}?account__id__exact={}&status__exact=held">open holds</a>',
        availability.available_credits,
        availability.held_credits,
        reverse("admin:holds_credithold_changelist"),
        account.pk,
    )


class OpenCreditHoldInline(admin.TabularInline):
    """The account's open holds (read only; release them from the credit holds list)."""

    model = CreditHold
    fk_name = "account"
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "open credit holds"
    fields = ["litellm_call_id", "model", "held_credits", "created_at", "expires_at"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(status=CreditHold.Status.HELD).order_by("expires_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "litellm_call_id",
        "account",
        "status",
        "held_credits",
        "estimated_cost_usd",
        "model",
        "created_at",
        "expires_at",
        "receipt_link",
    ]
    list_filter = ["status", "account"]
    search_fields = ["=litellm_call_id", "=hold_id"]
    list_select_related = ["account"]
    ordering = ["-id"]
    actions = ["release"]

    @admin.display(description="receipt")
    def receipt_link(self, hold: CreditHold) -> str:
        if hold.receipt_id is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:receipts_chargereceipt_change", args=[hold.receipt_id]),
            hold.receipt_id,
        )

    def has_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RELEASE_PERMISSION)

    @admin.action(description="Release the selected open holds", permissions=["release"])
    def release(self, request: HttpRequest, queryset: QuerySet[CreditHold]) -> None:
        now = timezone.now()
        released = sum(
            1
            for call_id in queryset.filter(status=CreditHold.Status.HELD).values_list("litellm_call_id", flat=True)
            if release_hold(litellm_call_id=call_id, now=now) is not None
        )
        self.message_user(request, f"{released} hold(s) released.", messages.SUCCESS)
