"""Internal API of pre-call authorization, as the LiteLLM plugin (litellm_billing_plugin/) calls it.

POST   /api/internal/billing/authorize                          hold the call's worst-case cost, or 402
DELETE /api/internal/billing/authorize/<litellm_call_id>        release it (the call failed before being billed)
POST   /api/internal/billing/authorize/<litellm_call_id>/renew  extend it (the call is still streaming)
"""

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_project.api import (
    AuthorizeTokenAuthentication,
    IsInternalService,
    error_response,
    error_responses,
    valid_call_id,
)
from billing_project.exactjson import loads_exact
from billing_project.text_rules import CALL_ID_MAX_LENGTH
from holds.exceptions import AuthorizeTooLate, CallIdReused, HoldConflict, InvalidAuthorization
from holds.models import CreditHold
from holds.services import AuthorizeDecision, OutputSizing, authorize_call, release_hold, renew_hold

# Longer than any binding value (255): a longer end user simply matches no binding.
_TEXT_MAX = 1024


class ExactJSONParser(JSONParser):
    """JSON with numbers kept exact: a JSON number estimate becomes a Decimal from its text, never a float."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return loads_exact(stream.read(), constants="refuse")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


@extend_schema_field(OpenApiTypes.DECIMAL)
class UsdAmountField(serializers.Field):
    """A USD amount as decimal text ("0.0042") or a JSON number (parsed exactly); never a bool."""

    default_error_messages = {"invalid": "must be a decimal number (text or JSON number)"}

    def to_internal_value(self, data: object) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, str | int | Decimal):
            self.fail("invalid")
        try:
            value = Decimal(data.strip() if isinstance(data, str) else data)
        except InvalidOperation:
            self.fail("invalid")
        if not value.is_finite():
            self.fail("invalid")
        if value < 0:
            raise serializers.ValidationError("must not be negative")
        return value

    def to_representation(self, value: Decimal) -> str:
        return str(value)


class TextField(serializers.CharField):
    """Text only: a number or a bool is refused, not turned into text."""

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _optional_text(help_text: str, *, max_length: int = _TEXT_MAX) -> serializers.CharField:
    return TextField(
        required=False,
        allow_null=True,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        max_length=max_length,
        help_text=help_text,
    )


def _invalid(errors: dict[str, Any]) -> Response:
    """400 naming the first field at fault (`field`) and every message (`fields`)."""
    field = next(iter(errors), "body")
    messages = errors[field] if field in errors else ["invalid"]
    message = messages[0] if isinstance(messages, list) and messages else messages
    return error_response(f"{field}: {message}", http_status=status.HTTP_400_BAD_REQUEST, field=field, fields=errors)


class AuthorizeApi(APIView):
    """Pre-call authorization: hold the call's worst-case cost if its payer can afford it (else 402)."""

    authentication_classes = [AuthorizeTokenAuthentication]
    permission_classes = [IsInternalService]
    parser_classes = [ExactJSONParser]

    @extend_schema_serializer(component_name="AuthorizeRequest")
    class InputSerializer(serializers.Serializer):
        litellm_call_id = TextField(max_length=CALL_ID_MAX_LENGTH, trim_whitespace=False, validators=[valid_call_id])
        key_hash = _optional_text("The hash LiteLLM logs for the caller's key.")
        team_id = _optional_text("The team of the caller's key.")
        end_user = _optional_text("The caller's end user, as the plugin reads it (litellm_billing_plugin.end_user).")
        run_id = _optional_text("The run the caller named in its spend-log metadata, when it named one.")
        model = _optional_text(
            "The model group the caller named (shown to staff).",
            max_length=CreditHold._meta.get_field("model").max_length,
        )
        estimated_cost_usd = UsdAmountField(help_text="The call's worst-case cost in USD: decimal text or number.")
        priced = serializers.BooleanField(
            required=False,
            default=True,
            help_text="false when LiteLLM knows no price for the model (the estimate is a default): refused "
            "with BILLING_UNPRICED_CALLS=refuse.",
        )
        max_output_tokens = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=1,
            max_value=10**9,
            help_text="With output_cost_per_token_usd, for a call without max_tokens: the output limit the "
            "estimate assumed. The hold is sized by what this key used instead (never above the estimate).",
        )
        output_cost_per_token_usd = UsdAmountField(required=False, allow_null=True, default=None)
        deadline_ms = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=1,
            max_value=60_000,
            help_text="How long the caller waits for this answer: past it nothing is held (503 too_late).",
        )

    @extend_schema_serializer(component_name="AuthorizeAllowed")
    class AllowedSerializer(serializers.Serializer):
        allowed = serializers.BooleanField()
        hold_id = serializers.CharField(help_text='"" when an unknown payer is let through without a hold.')
        held_credits = serializers.IntegerField()
        available_credits = serializers.IntegerField(allow_null=True, help_text="balance − open holds, after this one")
        expires_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_serializer(component_name="AuthorizeRefused")
    class RefusedSerializer(serializers.Serializer):
        allowed = serializers.BooleanField()
        reason = serializers.ChoiceField(choices=["insufficient_credits", "unknown_payer", "unpriced_model"])
        message = serializers.CharField(help_text="A sentence for people, in USD.")
        available_credits = serializers.IntegerField(
            required=False, help_text="Only when BILLING_402_SHOWS_BALANCE is true."
        )
        required_credits = serializers.IntegerField()
        topup_url = serializers.CharField(required=False, help_text="BILLING_TOPUP_URL, when set.")

    @extend_schema(
        request=InputSerializer,
        responses={
            200: AllowedSerializer,
            402: OpenApiResponse(response=RefusedSerializer, description="The payer cannot pay, or is unknown."),
            **error_responses(
                400,
                401,
                409,
                503,
                e503="The account stayed busy past `deadline_ms` (or the database is unavailable): nothing held.",
                e400="Malformed body, or a negative or non-numeric `estimated_cost_usd`; `field` names it.",
                e409="The call id holds credits for another `estimated_cost_usd` (`field` names it), or was "
                "used before: its hold is settled, released or expired, or another payer holds it "
                "(`field` is `litellm_call_id`).",
            ),
        },
        description="Idempotent per litellm_call_id: the same call and estimate get the same hold (200).",
    )
    def post(self, request: Request) -> Response:
        received = time.monotonic()
        if not isinstance(request.data, dict):
            return error_response(
                "the body must be a JSON object", http_status=status.HTTP_400_BAD_REQUEST, field="body"
            )
        data = self.InputSerializer(data=request.data)
        if not data.is_valid():
            return _invalid(data.errors)
        params = data.validated_data
        try:
            decision = authorize_call(
                litellm_call_id=params["litellm_call_id"],
                estimated_cost_usd=params["estimated_cost_usd"],
                key_hash=params["key_hash"] or "",
                team_id=params["team_id"] or "",
                end_user=params["end_user"] or "",
                run_id=params["run_id"] or "",
                model=params["model"] or "",
                priced=params["priced"],
                sizing=OutputSizing(
                    max_output_tokens=params["max_output_tokens"],
                    output_cost_per_token_usd=params["output_cost_per_token_usd"],
                )
                if params["max_output_tokens"] and params["output_cost_per_token_usd"] is not None
                else None,
                deadline=received + params["deadline_ms"] / 1000 if params["deadline_ms"] else None,
            )
        except AuthorizeTooLate as exc:
            return error_response(
                str(exc), http_status=status.HTTP_503_SERVICE_UNAVAILABLE, field="deadline_ms", reason="too_late"
            )
        except InvalidAuthorization as exc:
            return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field=exc.field)
        except (HoldConflict, CallIdReused) as exc:
            return error_response(str(exc), http_status=status.HTTP_409_CONFLICT, field=exc.field)
        return self._answer(decision)

    @extend_schema_serializer(component_name="AuthorizeService")
    class ServiceSerializer(serializers.Serializer):
        scope = serializers.CharField(help_text='"authorize": the token is the plugin\'s.')
        hold_ttl_seconds = serializers.IntegerField()
        unpriced_calls = serializers.CharField(help_text="BILLING_UNPRICED_CALLS: refuse or charge_hold.")

    @extend_schema(
        request=None,
        responses={200: ServiceSerializer, **error_responses(401)},
        description="For the plugin's check at proxy start: the service answers and accepts its token.",
    )
    def get(self, request: Request) -> Response:
        return Response(
            self.ServiceSerializer(
                {
                    "scope": request.user.scope,
                    "hold_ttl_seconds": settings.BILLING_HOLD_TTL_SECONDS,
                    "unpriced_calls": settings.BILLING_UNPRICED_CALLS,
                }
            ).data
        )

    def _answer(self, decision: AuthorizeDecision) -> Response:
        if not decision.allowed:
            shows_balance = settings.BILLING_402_SHOWS_BALANCE
            topup_url = settings.BILLING_TOPUP_URL
            refusal: dict[str, Any] = {
                "allowed": False,
                "reason": decision.reason,
                "message": decision.refusal_sentence(shows_balance=shows_balance, topup_url=topup_url),
                "required_credits": decision.required_credits,
            }
            if decision.available_credits is not None and shows_balance:
                refusal["available_credits"] = decision.available_credits
            if topup_url:
                refusal["topup_url"] = topup_url
            return Response(self.RefusedSerializer(refusal).data, status=status.HTTP_402_PAYMENT_REQUIRED)
        hold = decision.hold
        body = {
            "allowed": True,
            "hold_id": str(hold.hold_id) if hold else "",
            "held_credits": hold.held_credits if hold else 0,
            "available_credits": decision.available_credits,
            "expires_at": hold.expires_at if hold else None,
        }
        return Response(self.AllowedSerializer(body).data)


class AuthorizeReleaseApi(APIView):
    """Release a call's hold: the proxy's failure hook calls it for a call that failed."""

    authentication_classes = [AuthorizeTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="HoldReleased")
    class OutputSerializer(serializers.Serializer):
        hold_id = serializers.UUIDField()
        litellm_call_id = serializers.CharField()
        status = serializers.CharField()
        released_credits = serializers.IntegerField(source="held_credits")

    @extend_schema(
        request=None,
        responses={
            200: OutputSerializer,
            **error_responses(401, 404, e404="The call has no open hold (none, or settled, released or expired)."),
        },
    )
    def delete(self, request: Request, litellm_call_id: str) -> Response:
        hold = release_hold(litellm_call_id=litellm_call_id)
        if hold is None:
            return error_response(
                f"call {litellm_call_id} has no open hold",
                http_status=status.HTTP_404_NOT_FOUND,
                field="litellm_call_id",
            )
        return Response(self.OutputSerializer(hold).data)


class AuthorizeRenewApi(APIView):
    """Extend a running call's hold by BILLING_HOLD_TTL_SECONDS: the plugin renews it while a stream runs."""

    authentication_classes = [AuthorizeTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="HoldRenewed")
    class OutputSerializer(serializers.Serializer):
        hold_id = serializers.UUIDField()
        litellm_call_id = serializers.CharField()
        held_credits = serializers.IntegerField()
        expires_at = serializers.DateTimeField()

    @extend_schema(
        request=None,
        responses={
            200: OutputSerializer,
            **error_responses(401, 404, e404="The call has no open hold (none, settled, released or expired)."),
        },
    )
    def post(self, request: Request, litellm_call_id: str) -> Response:
        hold = renew_hold(litellm_call_id=litellm_call_id)
        if hold is None:
            return error_response(
                f"call {litellm_call_id} has no open hold to renew",
                http_status=status.HTTP_404_NOT_FOUND,
                field="litellm_call_id",
            )
        return Response(self.OutputSerializer(hold).data)
