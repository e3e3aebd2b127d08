"""Staff admin for accounts and the ledger.

Writes go through services: new accounts through billing_account_create, the
account page's bindings through payers.services (payers/admin.py), credits
through grant_credits from the "Grant credits" form. Ledger entries are read-only.
"""

import re
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.exceptions import IdempotencyConflict
from accounts.models import (
    PROMOTION_PRIORITY_DEFAULT,
    PROMOTION_PRIORITY_MAX,
    PROMOTION_PRIORITY_MIN,
    BillingAccount,
    CreditCategory,
    CreditLedgerEntry,
    PromotionalCredit,
)
from accounts.money import credits_per_usd, credits_to_usd
from accounts.selectors import account_lookup
from accounts.services import (
    GRANT_REASONS,
    InvalidGrant,
    billing_account_create,
    grant_credits,
    grant_promotional_credits,
)
from billing_project.modeladmin import EstimatedCountPaginator, InputListFilter, ReadOnlyMixin, adopt_created_row
from holds.admin import OpenCreditHoldInline, holds_summary
from payers.admin import (
    ApiKeyBindingInline,
    EndUserAliasInline,
    RunBindingInline,
    TeamBindingInline,
    bindings_links,
    save_binding_formset,
)
from receipts.models import ChargeReceipt

admin.site.site_header = "LLM usage billing"
admin.site.site_title = "LLM usage billing admin"
admin.site.index_title = "Books, receipts and deferred records"
# The receipt and ledger lists are wide; the app list stays one click away on the index.
admin.site.enable_nav_sidebar = False

GRANT_KEY_PREFIX = "admin-grant-"
_GRANT_KEY_RE = re.compile(rf"^{GRANT_KEY_PREFIX}[0-9a-f]{{32}}$")
GRANT_PERMISSION = "accounts.add_creditledgerentry"


class AccountFilter(InputListFilter):
    """Filter a big list by account: its public UUID or its numeric id (uses the account index)."""

    title = "account"
    parameter_name = "account"
    placeholder = "account UUID or id"
    account_field = "account"

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        account = account_lookup(reference=value, by_database_id=True)
        return queryset.filter(**{f"{self.account_field}_id": account.pk}) if account else queryset.none()


def account_link(account_id: int, label: object, changelist: str) -> str:
    """A link to `changelist` filtered to one account."""
    return format_html('<a href="{}?account={}">{}</a>', reverse(changelist), account_id, label)


class GrantCreditsForm(forms.Form):
    reason = forms.ChoiceField(
        choices=[(r.value, r.label) for r in CreditLedgerEntry.Reason if r.value in GRANT_REASONS],
        initial=CreditLedgerEntry.Reason.GRANT,
    )
    amount_credits = forms.IntegerField(
        label="Amount (credits)",
        help_text="Positive, except an adjustment, which may be negative (never 0).",
    )
    memo = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why: kept on the ledger entry with your name.",
    )
    category = forms.ChoiceField(
        choices=CreditCategory.choices,
        initial=CreditCategory.PAID,
        required=False,
        help_text="Promotional credit (reason grant) is used before paid credit and expires.",
    )
    expires_at = forms.DateTimeField(required=False, help_text="Promotional only: when the unused rest expires (UTC).")
    priority = forms.IntegerField(
        required=False,
        initial=PROMOTION_PRIORITY_DEFAULT,
        help_text=f"Promotional only: {PROMOTION_PRIORITY_MIN} is used first, {PROMOTION_PRIORITY_MAX} last.",
    )
    # Generated when the form is rendered: submitting the same form twice grants once.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=255)

    @staticmethod
    def new_key() -> str:
        return f"{GRANT_KEY_PREFIX}{uuid.uuid4().hex}"

    def clean_idempotency_key(self) -> str:
        key = self.cleaned_data["idempotency_key"]
        if not _GRANT_KEY_RE.match(key):
            raise forms.ValidationError("This form is stale or was altered; reload the page.")
        return key


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "owner", "balance_credits", "balance_usd", "created_at", "grant_link"]
    search_fields = ["name", "=public_id", "aliases__end_user", "owner__username"]
    fields = ["name", "owner", "public_id", "balance_credits", "balance_usd", "holds", "created_at", "books", "payers"]
    readonly_fields = ["public_id", "balance_credits", "balance_usd", "holds", "created_at", "books", "payers"]
    raw_id_fields = ["owner"]
    list_select_related = ["owner"]
    # Who pays: the account's keys, teams, runs and end-user aliases (payers/admin.py).
    inlines = [ApiKeyBindingInline, TeamBindingInline, RunBindingInline, EndUserAliasInline, OpenCreditHoldInline]
    change_form_template = "admin/accounts/billingaccount/change_form.html"

    @admin.display(description="balance (USD)")
    def balance_usd(self, account: BillingAccount) -> str:
        return f"{credits_to_usd(account.balance_credits):.6f}" if account.pk else "-"

    @admin.display(description="available (balance − open holds)")
    def holds(self, account: BillingAccount) -> str:
        return holds_summary(account) if account.pk else "-"

    @admin.display(description="ledger")
    def books(self, account: BillingAccount) -> str:
        if not account.pk:
            return "-"
        return format_html(
            '<a href="{}?account={}">ledger entries</a> · <a href="{}?account={}">receipts</a>',
            reverse("admin:accounts_creditledgerentry_changelist"),
            account.pk,
            reverse("admin:receipts_chargereceipt_changelist"),
            account.pk,
        )

    @admin.display(description="")
    def grant_link(self, account: BillingAccount) -> str:
        return format_html(
            '<a href="{}">Grant credits</a>', reverse("admin:accounts_billingaccount_grant", args=[account.pk])
        )

    def save_model(self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool) -> None:
        if change:
            # Only name and owner are editable; the balance is moved by the ledger trigger alone.
            obj.save(update_fields=["name", "owner"])
        else:
            adopt_created_row(obj, billing_account_create(name=obj.name, owner=obj.owner))

    def get_inlines(self, request: HttpRequest, obj: Any) -> list:
        # Keys, teams and runs are bound once the account exists; the add page keeps its alias inline only.
        return self.inlines if obj is not None else [EndUserAliasInline]

    @admin.display(description="payer bindings")
    def payers(self, account: BillingAccount) -> str:
        return bindings_links(account.pk) if account.pk else "-"

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if not save_binding_formset(request=request, form=form, formset=formset):
            super().save_formset(request, form, formset, change)

    # --- the "grant credits" form ---------------------------------------------------------

    def get_urls(self) -> list:
        custom = [
            path(
                "<path:object_id>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="accounts_billingaccount_grant",
            )
        ]
        return custom + super().get_urls()

    def has_grant_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(GRANT_PERMISSION)

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        context["can_grant"] = self.has_grant_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)

    def grant_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        account = self.get_object(request, unquote(object_id))
        if account is None:
            raise Http404("no such billing account")
        if not (self.has_view_permission(request, account) and self.has_grant_permission(request)):
            raise PermissionDenied
        if request.method == "POST":
            form = GrantCreditsForm(request.POST)
            if form.is_valid():
                response = self._grant(request, account, form)
                if response is not None:
                    return response
        else:
            form = GrantCreditsForm(initial={"idempotency_key": GrantCreditsForm.new_key()})
        context = {
            **self.admin_site.each_context(request),
            "title": f"Grant credits to {account.name}",
            "opts": self.opts,
            "original": account,
            "form": form,
            "credits_per_usd": credits_per_usd(),
            "balance_usd": credits_to_usd(account.balance_credits),
            "has_view_permission": True,
        }
        return TemplateResponse(request, "admin/accounts/billingaccount/grant_credits.html", context)

    def _grant(self, request: HttpRequest, account: BillingAccount, form: GrantCreditsForm) -> HttpResponse | None:
        data = form.cleaned_data
        try:
            if data["category"] == CreditCategory.PROMOTIONAL:
                if data["reason"] != CreditLedgerEntry.Reason.GRANT:
                    raise InvalidGrant("promotional credit is always a grant", field="reason")
                if data["expires_at"] is None:
                    raise InvalidGrant("promotional credit needs an expiry", field="expires_at")
                result = grant_promotional_credits(
                    account=account,
                    amount_credits=data["amount_credits"],
                    expires_at=data["expires_at"],
                    priority=PROMOTION_PRIORITY_DEFAULT if data["priority"] is None else data["priority"],
                    idempotency_key=data["idempotency_key"],
                    memo=data["memo"],
                    created_by=request.user,
                )
            else:
                result = grant_credits(
                    account=account,
                    amount_credits=data["amount_credits"],
                    reason=data["reason"],
                    idempotency_key=data["idempotency_key"],
                    memo=data["memo"],
                    created_by=request.user,
                )
        except IdempotencyConflict:
            form.add_error(None, "This form was already used for a different grant. Reload the page to make a new one.")
            return None
        except InvalidGrant as exc:  # sign and range are judged by the service alone
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            return None
        entry = result.entry
        account.refresh_from_db(fields=["balance_credits"])
        if result.created:
            text = f"{entry.get_reason_display()} of {entry.amount_credits:+,d} credits (ledger entry #{entry.pk})"
            self.log_change(request, account, f"Granted credits: {text}")
            messages.success(
                request,
                f"Recorded: {text}. Balance now {account.balance_credits:,d} credits "
                f"({credits_to_usd(account.balance_credits)} USD).",
            )
        else:
            messages.warning(
                request,
                f"This form was already submitted: the credits were granted once (ledger entry #{entry.pk}); "
                "nothing was added this time.",
            )
        return HttpResponseRedirect(reverse("admin:accounts_billingaccount_change", args=[account.pk]))


@admin.register(CreditLedgerEntry)
class CreditLedgerEntryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_per_page = 50
    list_display = [
        "id",
        "account_column",
        "reason",
        "amount_credits",
        "balance_after",
        "receipt_call_id",
        "memo",
        "created_by",
        "created_at",
    ]
    list_filter = [AccountFilter, "reason"]
    date_hierarchy = "created_at"
    search_fields = ["idempotency_key", "receipt__litellm_call_id"]
    search_help_text = "Exact idempotency key or LiteLLM call id."
    raw_id_fields = ["account", "receipt", "created_by"]
    list_select_related = ["account", "created_by", "receipt"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    change_list_template = "admin/fast_change_list.html"

    @admin.display(description="account", ordering="account_id")
    def account_column(self, entry: CreditLedgerEntry) -> str:
        return account_link(entry.account_id, entry.account.name, "admin:accounts_creditledgerentry_changelist")

    @admin.display(description="call id")
    def receipt_call_id(self, entry: CreditLedgerEntry) -> str:
        if entry.receipt_id is None:
            return "-"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:receipts_chargereceipt_change", args=[entry.receipt_id]),
            entry.receipt.litellm_call_id,
        )

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Resolve call ids first, so both halves of the OR are index lookups on this table.
        receipt_ids = list(ChargeReceipt.objects.filter(litellm_call_id=term).values_list("id", flat=True)[:100])
        return queryset.filter(Q(idempotency_key=term) | Q(receipt_id__in=receipt_ids)), False


@admin.register(PromotionalCredit)
class PromotionalCreditAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Promotional grants: made from an account's "Grant credits" form, moved only by the ledger."""

    list_display = ["id", "account", "granted_credits", "remaining_credits", "priority", "expires_at", "expired_at"]
    list_filter = [AccountFilter, "expired_at"]
    list_select_related = ["account"]
    ordering = ["-id"]
