from django.urls import path

from billing_project.api import INTERNAL_API
from notifications.views import (
    BalanceAlertDetailApi,
    BalanceAlertListApi,
    NotificationSettingsPageView,
    WebhookEndpointDetailApi,
    WebhookEndpointListApi,
)

urlpatterns = [
    path(f"{INTERNAL_API}webhook-endpoints", WebhookEndpointListApi.as_view(), name="billing-webhook-endpoints"),
    path(
        f"{INTERNAL_API}webhook-endpoints/<uuid:endpoint_id>",
        WebhookEndpointDetailApi.as_view(),
        name="billing-webhook-endpoint",
    ),
    path(f"{INTERNAL_API}balance-alerts", BalanceAlertListApi.as_view(), name="billing-balance-alerts"),
    path(
        f"{INTERNAL_API}balance-alerts/<uuid:alert_id>", BalanceAlertDetailApi.as_view(), name="billing-balance-alert"
    ),
    path(
        "billing/settings/notifications", NotificationSettingsPageView.as_view(), name="billing-notification-settings"
    ),
]
