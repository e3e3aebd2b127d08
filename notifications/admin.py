"""Staff admin for notifications: endpoints and alerts made through the services; events and deliveries are a
read-only log, with "Replay" for deliveries."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin import AccountFilter
from billing_project.modeladmin import ReadOnlyMixin, adopt_created_row
from notifications.exceptions import InvalidNotificationSetting
from notifications.models import BalanceAlert, BillingEvent, EventType, WebhookDelivery, WebhookEndpoint
from notifications.services import (
    balance_alert_create,
    replay_delivery,
    validate_endpoint_url,
    validate_threshold,
    webhook_endpoint_create,
    webhook_endpoint_delete,
)


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(choices=EventType.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = WebhookEndpoint
        fields = ["account", "url", "events"]

    def clean_url(self) -> str:
        try:
            return validate_endpoint_url(self.cleaned_data["url"])
        except InvalidNotificationSetting as exc:
            raise forms.ValidationError(str(exc)) from exc


class BalanceAlertForm(forms.ModelForm):
    class Meta:
        model = BalanceAlert
        fields = ["account", "threshold_credits"]

    def clean_threshold_credits(self) -> int:
        try:
            return validate_threshold(self.cleaned_data["threshold_credits"])
        except InvalidNotificationSetting as exc:
            raise forms.ValidationError(str(exc)) from exc


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "account", "events", "is_active", "disabled_reason", "created_at"]
    list_filter = [AccountFilter, "is_active"]
    list_select_related = ["account"]
    readonly_fields = ["secret", "is_active", "disabled_at", "disabled_reason", "deleted_at", "created_at"]
    actions = ["disable_endpoints"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*self.readonly_fields, "account", "url", "events"] if obj else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deliveries name it: "disable" instead

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("an endpoint is not edited; disable it and add a new one")
        try:
            adopt_created_row(
                obj, webhook_endpoint_create(account=obj.account, url=obj.url, events=form.cleaned_data["events"])
            )
        except InvalidNotificationSetting as exc:
            messages.error(request, f"{exc.field}: {exc}")
            raise PermissionDenied(str(exc)) from exc

    @admin.action(description="Disable the selected endpoints (nothing more is sent to them)")
    def disable_endpoints(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhook_endpoint_delete(endpoint=endpoint)
        messages.success(request, f"{queryset.count()} endpoints disabled.")


@admin.register(BalanceAlert)
class BalanceAlertAdmin(admin.ModelAdmin):
    list_display = ["account", "threshold_credits", "created_at"]
    list_filter = [AccountFilter]
    list_select_related = ["account"]
    form = BalanceAlertForm

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: BalanceAlert, form: Any, change: bool) -> None:
        try:
            adopt_created_row(obj, balance_alert_create(account=obj.account, threshold_credits=obj.threshold_credits))
        except InvalidNotificationSetting as exc:
            messages.error(request, f"{exc.field}: {exc}")
            raise PermissionDenied(str(exc)) from exc


class WebhookDeliveryInline(ReadOnlyMixin, admin.TabularInline):
    model = WebhookDelivery
    fields = ["endpoint", "status", "attempts", "last_status_code", "last_error", "next_attempt_at", "delivered_at"]
    readonly_fields = fields
    extra = 0


@admin.register(BillingEvent)
class BillingEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "type", "account", "created_at", "dispatched_at"]
    list_filter = ["type", AccountFilter]
    list_select_related = ["account"]
    readonly_fields = ["public_id", "account", "type", "data", "ledger_entry", "created_at", "dispatched_at"]
    inlines = [WebhookDeliveryInline]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "event", "endpoint", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay: send the selected deliveries again now (same webhook-id)")
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        replayed = 0
        for delivery in queryset.select_related("endpoint"):
            try:
                replay_delivery(delivery=delivery)
                replayed += 1
            except ValueError as exc:
                messages.warning(request, str(exc))
        messages.success(request, f"{replayed} deliveries due now; the worker sends them within seconds.")
