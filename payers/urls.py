from django.urls import path

from billing_project.api import INTERNAL_API
from payers.views import PayerBindingApi, RunRegisterApi

urlpatterns = [
    path(f"{INTERNAL_API}runs", RunRegisterApi.as_view(), name="billing-runs"),
    path(f"{INTERNAL_API}payer-bindings", PayerBindingApi.as_view(), name="billing-payer-bindings"),
]
