from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from accounts.payer_views import PayerBindingApi, RunRegisterApi
from accounts.views import CreditGrantApi
from billing_project.health import healthz
from receipts.views import ReceiptDetailApi, UsageIngestApi

internal = [
    path("ingest", UsageIngestApi.as_view(), name="billing-ingest"),
    path("receipts/<str:litellm_call_id>", ReceiptDetailApi.as_view(), name="billing-receipt"),
    path("credits", CreditGrantApi.as_view(), name="billing-credits"),
    path("runs", RunRegisterApi.as_view(), name="billing-runs"),
    path("payer-bindings", PayerBindingApi.as_view(), name="billing-payer-bindings"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/internal/billing/", include(internal)),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="openapi-schema"),
    path("", include("invoices.urls")),
    path("", include("django_prometheus.urls")),
]
