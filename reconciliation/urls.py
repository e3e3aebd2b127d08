from django.urls import path

from billing_project.api import INTERNAL_API
from reconciliation.views import RunReconcileApi

urlpatterns = [
    # <path:…>: run ids may contain "/".
    path(f"{INTERNAL_API}runs/<path:run_id>/reconcile", RunReconcileApi.as_view(), name="billing-run-reconcile"),
]
