"""Staff admin for payer bindings: API keys, teams, registered runs and end-user aliases.

Every binding is created through its service in payers.services (so
payer_binding_created fires and waiting records are replayed) and never
edited: delete it and add another. The key form takes a raw `sk-…` key and
keeps only the hash LiteLLM logs; the raw key is neither stored nor shown again.
"""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from billing_project.modeladmin import adopt_created_row
from integrations.litellm.keys import storable_key_hash
from payers.exceptions import BindingConflict, InvalidBinding
from payers.models import ApiKeyBinding, EndUserAlias, RunBinding, TeamBinding
from payers.services import (
    api_key_binding_create,
    end_user_alias_bind,
    end_user_alias_create,
    run_binding_create,
    team_binding_create,
)


class _NoEditMixin:
    """Bindings are added or deleted, never changed (a change would silently move who pays)."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # type: ignore[misc]


# --- inlines on the billing account page --------------------------------------------------


class ApiKeyBindingInline(admin.TabularInline):
    """Read-only here: keys are added from the API key binding form (it hashes a raw key)."""

    model = ApiKeyBinding
    extra = 0
    fields = ["key_hash", "is_gateway", "label", "created_by", "created_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EndUserAliasInline(admin.TabularInline):
    """Existing aliases are read-only; new ones are created by end_user_alias_create (see save_binding_formset)."""

    model = EndUserAlias
    extra = 0
    fields = ["end_user", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TeamBindingInline(admin.TabularInline):
    """New rows go through team_binding_create (see save_binding_formset); existing rows are read-only."""

    model = TeamBinding
    extra = 0
    fields = ["team_id", "label", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RunBindingInline(admin.TabularInline):
    """New rows go through run_binding_create (see save_binding_formset); existing rows are read-only."""

    model = RunBinding
    extra = 0
    fields = ["run_id", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def save_binding_formset(*, request: HttpRequest, form: Any, formset: Any) -> bool:
    """Save a team, run or alias inline of the account page through its service; False for other inlines."""
    if formset.model not in (TeamBinding, RunBinding, EndUserAlias):
        return False
    account = form.instance
    created = []
    for row in formset.save(commit=False):
        if row.pk is not None:
            continue
        if isinstance(row, TeamBinding):
            result = team_binding_create(account=account, team_id=row.team_id, label=row.label)
        elif isinstance(row, EndUserAlias):
            result = end_user_alias_bind(account=account, end_user=row.end_user)
        else:
            result = run_binding_create(account=account, run_id=row.run_id)
        adopt_created_row(row, result.binding)
        created.append(row)
    formset.new_objects = created
    return True


def bindings_links(account_pk: int) -> str:
    """Links to the account's bindings lists and to the add-key form (for the account page)."""
    return format_html(
        '<a href="{}?account__id__exact={}">API keys</a> · <a href="{}?account__id__exact={}">teams</a> · '
        '<a href="{}?account__id__exact={}">runs</a> · <a href="{}?account={}">add an API key</a>',
        reverse("admin:payers_apikeybinding_changelist"),
        account_pk,
        reverse("admin:payers_teambinding_changelist"),
        account_pk,
        reverse("admin:payers_runbinding_changelist"),
        account_pk,
        reverse("admin:payers_apikeybinding_add"),
        account_pk,
    )


# --- standalone admins ------------------------------------------------------------------------


class ApiKeyBindingForm(forms.ModelForm):
    """Paste the raw key (hashed here as LiteLLM hashes it) or, for other logged values, the hash itself."""

    raw_key = forms.CharField(
        label="LiteLLM API key",
        required=False,
        strip=True,
        # Never rendered back: the raw key does not travel further than this request.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "size": 60}),
        help_text="The raw sk-… key (or the proxy's master key). Only its hash is stored.",
    )

    class Meta:
        model = ApiKeyBinding
        fields = ["account", "raw_key", "key_hash", "is_gateway", "label"]
        help_texts = {
            "key_hash": "Or the key hash LiteLLM logs for it (e.g. litellm_proxy_master_key for the master key).",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["key_hash"].required = False

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        raw, given_hash = data.get("raw_key") or "", data.get("key_hash") or ""
        if bool(raw) == bool(given_hash):
            raise forms.ValidationError("Give either the raw API key or its hash, not both.")
        if raw:
            hashed = storable_key_hash(raw, master_key=settings.LITELLM_MASTER_KEY)
            if hashed is None:
                self.add_error("raw_key", "Not a LiteLLM sk-… key (nor the master key): paste its logged hash instead.")
            else:
                data["key_hash"] = hashed
                # The instance is built from cleaned_data: uniqueness is checked on the hash.
                self.instance.key_hash = hashed
        data.pop("raw_key", None)
        return data


@admin.register(ApiKeyBinding)
class ApiKeyBindingAdmin(_NoEditMixin, admin.ModelAdmin):
    form = ApiKeyBindingForm
    list_display = ["key_hash", "account", "is_gateway", "label", "created_by", "created_at"]
    list_filter = ["is_gateway"]
    search_fields = ["=key_hash", "label", "account__name"]
    search_help_text = "Exact key hash, or a label or account name."
    raw_id_fields = ["account"]
    list_select_related = ["account", "created_by"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["account", "raw_key", "key_hash", "is_gateway", "label"]
        return ["account", "key_hash", "is_gateway", "label", "created_by", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["account", "key_hash", "is_gateway", "label", "created_by", "created_at"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        if str(request.GET.get("account", "")).isdigit():
            initial["account"] = request.GET["account"]
        return initial

    def save_model(self, request: HttpRequest, obj: ApiKeyBinding, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("bindings are not edited; delete it and add a new one")
        try:
            result = api_key_binding_create(
                account=obj.account,
                key_hash=obj.key_hash,
                is_gateway=obj.is_gateway,
                label=obj.label,
                created_by=request.user,
            )
        except (BindingConflict, InvalidBinding) as exc:
            # Only a concurrent binding gets here (the form checked uniqueness).
            raise PermissionDenied(str(exc)) from exc
        adopt_created_row(obj, result.binding)


@admin.register(TeamBinding)
class TeamBindingAdmin(_NoEditMixin, admin.ModelAdmin):
    list_display = ["team_id", "account", "label", "created_at"]
    search_fields = ["=team_id", "label", "account__name"]
    raw_id_fields = ["account"]
    list_select_related = ["account"]
    fields = ["account", "team_id", "label", "created_at"]
    readonly_fields = ["created_at"]

    def save_model(self, request: HttpRequest, obj: TeamBinding, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("bindings are not edited; delete it and add a new one")
        adopt_created_row(obj, team_binding_create(account=obj.account, team_id=obj.team_id, label=obj.label).binding)


@admin.register(RunBinding)
class RunBindingAdmin(_NoEditMixin, admin.ModelAdmin):
    list_display = ["run_id", "account", "created_at"]
    search_fields = ["=run_id", "account__name"]
    raw_id_fields = ["account"]
    list_select_related = ["account"]
    fields = ["account", "run_id", "created_at"]
    readonly_fields = ["created_at"]

    def save_model(self, request: HttpRequest, obj: RunBinding, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("bindings are not edited; delete it and add a new one")
        adopt_created_row(obj, run_binding_create(account=obj.account, run_id=obj.run_id).binding)


@admin.register(EndUserAlias)
class EndUserAliasAdmin(_NoEditMixin, admin.ModelAdmin):
    """Aliases are created through end_user_alias_create (which replays waiting usage) and never edited."""

    list_display = ["end_user", "account", "created_at"]
    search_fields = ["=end_user", "account__name"]
    raw_id_fields = ["account"]
    list_select_related = ["account"]

    def save_model(self, request: HttpRequest, obj: EndUserAlias, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("aliases are not edited; delete it and add a new one")
        adopt_created_row(obj, end_user_alias_create(account=obj.account, end_user=obj.end_user))
