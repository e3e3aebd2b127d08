from django.urls import path
from django.views.generic import RedirectView

from invoices.views import InvoiceApi, InvoicePageView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="invoice-current"), name="home"),
    path("billing/invoice/", InvoicePageView.as_view(), name="invoice-current"),
    path("billing/invoice/<str:period>/", InvoicePageView.as_view(), name="invoice"),
    path("api/billing/invoice", InvoiceApi.as_view(), name="billing-invoice-api"),
]
