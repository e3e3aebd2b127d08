from django.urls import path

from accounts.views import BalanceApi, CreditGrantApi
from billing_project.api import INTERNAL_API

urlpatterns = [
    path(f"{INTERNAL_API}credits", CreditGrantApi.as_view(), name="billing-credits"),
    path("billing/balance", BalanceApi.as_view(), name="billing-balance"),
]
