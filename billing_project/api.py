"""Shared API pieces: the scoped internal bearer tokens and a JSON error format."""

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

from billing_project.scopes import SCOPE_SETTINGS, TokenScope
from billing_project.text_rules import call_id_problem, control_character_problem

# Where the internal APIs (LiteLLM, gateways, payment systems) live; each app's urls.py mounts its own under it.
INTERNAL_API = "api/internal/billing/"


def scope_token(scope: TokenScope) -> str:
    """The token a scope accepts: its own setting, else BILLING_INGEST_TOKEN (an upgrade keeps working)."""
    return getattr(settings, SCOPE_SETTINGS[scope]) or settings.BILLING_INGEST_TOKEN


class InternalService:
    """The authenticated principal of internal calls (LiteLLM, gateways, payment systems), with its scope."""

    is_authenticated = True
    is_staff = False
    pk = None

    def __init__(self, scope: TokenScope) -> None:
        self.scope = scope

    def __str__(self) -> str:
        return f"internal-service:{self.scope}"


BEARER = b"bearer"
WWW_AUTHENTICATE = 'Bearer realm="billing-internal"'


def internal_bearer_token(request: HttpRequest | Request, *, scope: TokenScope) -> str:
    """The caller's `Authorization: Bearer` token when it is the token of `scope` (constant-time compare).

    The one check of an internal token: the internal API (the scoped authentication classes below),
    /metrics and /api/schema/ all go through it. Raises NotAuthenticated or AuthenticationFailed.
    """
    header = get_authorization_header(request).split()
    if not header:
        raise exceptions.NotAuthenticated("Missing Authorization: Bearer <token> header.")
    if header[0].lower() != BEARER or len(header) != 2:
        raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
    expected = scope_token(scope).encode()
    if not expected or not hmac.compare_digest(header[1], expected):
        raise exceptions.AuthenticationFailed(
            f"Invalid bearer token for this endpoint: it takes {SCOPE_SETTINGS[scope]}."
        )
    return header[1].decode()


def internal_only(
    view: Callable[..., HttpResponse], *, scope: TokenScope = TokenScope.METRICS
) -> Callable[..., HttpResponse]:
    """Wrap a plain Django view (e.g. django-prometheus' /metrics) so it needs the scope's token: 401 otherwise."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            internal_bearer_token(request, scope=scope)
        except exceptions.APIException as exc:
            response = JsonResponse(error_body(str(exc.detail), field="Authorization"), status=401)
            response["WWW-Authenticate"] = WWW_AUTHENTICATE
            return response
        return view(request, *args, **kwargs)

    return wrapped


class _ScopedTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <the scope's token>`, compared in constant time."""

    keyword = BEARER
    scope: TokenScope

    def authenticate(self, request: Request) -> tuple[InternalService, str] | None:
        return InternalService(self.scope), internal_bearer_token(request, scope=self.scope)

    def authenticate_header(self, request: Request) -> str:
        return WWW_AUTHENTICATE


class IngestTokenAuthentication(_ScopedTokenAuthentication):
    scope = TokenScope.INGEST


class AuthorizeTokenAuthentication(_ScopedTokenAuthentication):
    scope = TokenScope.AUTHORIZE


class AdminApiTokenAuthentication(_ScopedTokenAuthentication):
    scope = TokenScope.ADMIN_API


class IsInternalService(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, InternalService)


def error_body(message: str, *, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one JSON error body of every endpoint: `{"error": message, "field": the input at fault, ...}`."""
    return {"error": message, **({"field": field} if field else {}), **extra}


def error_response(message: str, *, http_status: int, field: str | None = None, **extra: Any) -> Response:
    """A DRF response carrying error_body()."""
    return Response(error_body(message, field=field, **extra), status=http_status)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF errors as `{"error": <message>, "detail": ...}` so clients always get a named problem."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        response.data = error_body(str(data["detail"]))
    elif isinstance(data, dict) and "error" not in data:
        response.data = error_body("invalid request", fields=data)
    elif isinstance(data, list):
        response.data = error_body("invalid request", detail=data)
    return response


class _ScopedTokenScheme(OpenApiAuthenticationExtension):
    """Documents a scoped internal bearer token in the OpenAPI schema."""

    scope: TokenScope

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        setting = SCOPE_SETTINGS[self.scope]
        return {"type": "http", "scheme": "bearer", "description": f"{setting} (at least 32 characters)"}


class IngestTokenScheme(_ScopedTokenScheme):
    target_class = "billing_project.api.IngestTokenAuthentication"
    name = "ingestToken"
    scope = TokenScope.INGEST


class AuthorizeTokenScheme(_ScopedTokenScheme):
    target_class = "billing_project.api.AuthorizeTokenAuthentication"
    name = "authorizeToken"
    scope = TokenScope.AUTHORIZE


class AdminApiTokenScheme(_ScopedTokenScheme):
    target_class = "billing_project.api.AdminApiTokenAuthentication"
    name = "adminApiToken"
    scope = TokenScope.ADMIN_API


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    """Every 4xx/5xx of the API: what was wrong, and which field (or fields) it was."""

    error = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The request field at fault.")
    fields = serializers.DictField(required=False, help_text="Per-field messages of a 400.")
    detail = serializers.JSONField(required=False)


def printable_text(value: str) -> str:
    """A serializer validator: billing_project.text_rules.control_character_problem as a 400."""
    problem = control_character_problem(value)
    if problem:
        raise serializers.ValidationError(problem)
    return value


def valid_call_id(value: str) -> str:
    """A serializer validator: billing_project.text_rules.call_id_problem as a 400 naming the call id."""
    problem = call_id_problem(value)
    if problem:
        raise serializers.ValidationError(problem)
    return value


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
        return JsonResponse(error_body(f"no such endpoint: {request.path[:200]}", field="path"), status=404)
    return page_not_found(request, exception)


def document_unsupported_media_type(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation that takes a body may answer 415 (DRF refuses a
    Content-Type no parser reads, or a body its parser cannot split), with the one error body."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "415",
                    {
                        "description": _ERROR_MEANINGS[415],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
