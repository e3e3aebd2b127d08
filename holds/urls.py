from django.urls import path

from billing_project.api import INTERNAL_API
from holds.views import AuthorizeApi, AuthorizeReleaseApi, AuthorizeRenewApi

urlpatterns = [
    path(f"{INTERNAL_API}authorize", AuthorizeApi.as_view(), name="billing-authorize"),
    path(
        f"{INTERNAL_API}authorize/<str:litellm_call_id>",
        AuthorizeReleaseApi.as_view(),
        name="billing-authorize-release",
    ),
    path(
        f"{INTERNAL_API}authorize/<str:litellm_call_id>/renew",
        AuthorizeRenewApi.as_view(),
        name="billing-authorize-renew",
    ),
]
