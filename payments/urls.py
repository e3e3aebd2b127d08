from django.urls import path

from payments.views import (
    AutoRechargeView,
    BuyCreditsView,
    BuyWithUsdcView,
    CreditsPageView,
    PurchaseView,
    UsdcTransactionView,
    stripe_webhook,
)

urlpatterns = [
    path("billing/credits/", CreditsPageView.as_view(), name="billing-credits-page"),
    path("billing/credits/buy", BuyCreditsView.as_view(), name="billing-credits-buy"),
    path("billing/credits/usdc", BuyWithUsdcView.as_view(), name="billing-credits-usdc"),
    path("billing/credits/auto-recharge", AutoRechargeView.as_view(), name="billing-auto-recharge"),
    path("billing/credits/purchases/<str:attempt_id>/", PurchaseView.as_view(), name="billing-purchase"),
    path("billing/credits/purchases/<str:attempt_id>/tx", UsdcTransactionView.as_view(), name="billing-purchase-tx"),
    path("api/payments/stripe/webhook", stripe_webhook, name="payments-stripe-webhook"),
]
