from django.contrib import admin
from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.views import SpectacularAPIView

from billing_project.api import internal_only
from billing_project.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    # Each app's own URLs; the internal APIs sit under billing_project.api.INTERNAL_API.
    path("", include("receipts.urls")),
    path("", include("holds.urls")),
    path("", include("payers.urls")),
    path("", include("accounts.urls")),
    path("", include("reconciliation.urls")),
    path("", include("payments.urls")),
    path("", include("notifications.urls")),
    path("", include("activity.urls")),
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
