from django.contrib import admin
from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.views import SpectacularAPIView

from accounts.hold_views import AuthorizeApi, AuthorizeReleaseApi, AuthorizeRenewApi
from accounts.payer_views import PayerBindingApi, RunRegisterApi
from accounts.views import CreditGrantApi
from billing_project.api import internal_only
from billing_project.health import healthz
from receipts.views import ReceiptDetailApi, UsageIngestApi
from reconciliation.views import RunReconcileApi

internal = [
    path("ingest", UsageIngestApi.as_view(), name="billing-ingest"),
    path("receipts/<str:litellm_call_id>", ReceiptDetailApi.as_view(), name="billing-receipt"),
    path("credits", CreditGrantApi.as_view(), name="billing-credits"),
    path("runs", RunRegisterApi.as_view(), name="billing-runs"),
    path("payer-bindings", PayerBindingApi.as_view(), name="billing-payer-bindings"),
    # <path:…>: run ids may contain "/".
    path("runs/<path:run_id>/reconcile", RunReconcileApi.as_view(), name="billing-run-reconcile"),
    path("authorize", AuthorizeApi.as_view(), name="billing-authorize"),
    path("authorize/<str:litellm_call_id>", AuthorizeReleaseApi.as_view(), name="billing-authorize-release"),
    path("authorize/<str:litellm_call_id>/renew", AuthorizeRenewApi.as_view(), name="billing-authorize-renew"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/internal/billing/", include(internal)),
    # The schema and the metrics describe internals: both need the internal bearer token.
    path(
        "api/schema/",
        internal_only(SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[])),
        name="openapi-schema",
    ),
    path("metrics", internal_only(ExportToDjangoView), name="prometheus-django-metrics"),
    path("", include("invoices.urls")),
]

handler404 = "billing_project.api.not_found"
