from django.urls import path

from billing_project.api import INTERNAL_API
from receipts.views import ReceiptDetailApi, UsageIngestApi

urlpatterns = [
    path(f"{INTERNAL_API}ingest", UsageIngestApi.as_view(), name="billing-ingest"),
    path(f"{INTERNAL_API}receipts/<str:litellm_call_id>", ReceiptDetailApi.as_view(), name="billing-receipt"),
]
