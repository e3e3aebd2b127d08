"""Shared API pieces: the internal bearer token and a JSON error format."""

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema_serializer
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class InternalService:
    """The authenticated principal of internal calls (LiteLLM, gateways, payment systems)."""

    is_authenticated = True
    is_staff = False
    pk = None

    def __str__(self) -> str:
        return "internal-service"


BEARER = b"bearer"
WWW_AUTHENTICATE = 'Bearer realm="billing-internal"'


def internal_bearer_token(request: HttpRequest | Request) -> str:
    """The caller's `Authorization: Bearer` token when it is BILLING_INGEST_TOKEN (constant-time compare).

    The one check of the internal token: the internal API (InternalTokenAuthentication),
    /metrics and /api/schema/ all go through it. Raises NotAuthenticated or AuthenticationFailed.
    """
    header = get_authorization_header(request).split()
    if not header:
        raise exceptions.NotAuthenticated("Missing Authorization: Bearer <token> header.")
    if header[0].lower() != BEARER or len(header) != 2:
        raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
    expected = settings.BILLING_INGEST_TOKEN.encode()
    if not expected or not hmac.compare_digest(header[1], expected):
        raise exceptions.AuthenticationFailed("Invalid bearer token.")
    return header[1].decode()


def internal_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a plain Django view (e.g. django-prometheus' /metrics) so it needs the internal token: 401 otherwise."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            internal_bearer_token(request)
        except exceptions.APIException as exc:
            response = JsonResponse({"error": str(exc.detail)}, status=401)
            response["WWW-Authenticate"] = WWW_AUTHENTICATE
            return response
        return view(request, *args, **kwargs)

    return wrapped


class InternalTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer $BILLING_INGEST_TOKEN`, compared in constant time."""

    keyword = BEARER

    def authenticate(self, request: Request) -> tuple[InternalService, str] | None:
        return InternalService(), internal_bearer_token(request)

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


class IsInternalService(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, InternalService)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF errors as `{"error": <message>, "detail": ...}` so clients always get a named problem."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        response.data = {"error": str(data["detail"])}
    elif isinstance(data, dict) and "error" not in data:
        response.data = {"error": "invalid request", "fields": data}
    elif isinstance(data, list):
        response.data = {"error": "invalid request", "detail": data}
    return response


class InternalTokenScheme(OpenApiAuthenticationExtension):
    """Documents the internal bearer token in the OpenAPI schema."""

    target_class = "billing_project.api.InternalTokenAuthentication"
    name = "internalBearerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "BILLING_INGEST_TOKEN (at least 32 characters)"}


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    """Every 4xx/5xx of the API: what was wrong, and which field (or fields) it was."""

    error = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The request field at fault.")
    fields = serializers.DictField(required=False, help_text="Per-field messages of a 400.")
    detail = serializers.JSONField(required=False)


_ERROR_MEANINGS = {
    400: "Invalid input; `field` (or `fields`) names it.",
    401: "Missing or wrong internal bearer token.",
    402: "Payment required.",
    404: "Not found.",
    409: "Conflicts with what is already recorded; `field` names it.",
    411: "A chunked body the server did not terminate: send Content-Length.",
    413: "Body over the configured limit.",
    415: "Unsupported Content-Type.",
    503: "The billing database is unavailable; safe to retry.",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """OpenAPI responses for the given error codes (descriptions by `e400=...` override the defaults)."""
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=descriptions.get(f"e{code}", _ERROR_MEANINGS[code]))
        for code in codes
    }


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for a URL no route matches: JSON under /api/ (clients parse it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": f"no such endpoint: {request.path[:200]}", "field": "path"}, status=404)
    return page_not_found(request, exception)
