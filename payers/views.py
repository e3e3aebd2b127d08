"""Internal API of payer bindings: register runs, bind keys, teams and end users (who pays)."""

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.fields import AccountField
from billing_project.api import (
    AdminApiTokenAuthentication,
    IsInternalService,
    error_response,
    error_responses,
    printable_text,
)
from payers.exceptions import BindingConflict, InvalidBinding
from payers.models import BINDING_VALUE_MAX_LENGTH, ApiKeyBinding, EndUserAlias, PayerSource, TeamBinding
from payers.services import payer_binding_create, run_binding_create

_BINDING_ERRORS = error_responses(
    400,
    401,
    409,
    e400="Invalid input; `field` (or `fields`) names it. An unknown account is a 400 on `account`.",
    e409="The value is already bound to another account (or, for a key, with another `gateway` flag).",
)


def _binding_error(exc: InvalidBinding | BindingConflict, field: str) -> Response:
    code = status.HTTP_409_CONFLICT if isinstance(exc, BindingConflict) else status.HTTP_400_BAD_REQUEST
    return error_response(str(exc), http_status=code, field=field)


class RunRegisterApi(APIView):
    """Register an external-executor run: its calls (`user = "{run_id}/{attempt}"` from a gateway key) bill here."""

    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="RunRegistrationRequest")
    class InputSerializer(serializers.Serializer):
        run_id = serializers.CharField(
            max_length=BINDING_VALUE_MAX_LENGTH,
            trim_whitespace=False,
            validators=[printable_text],
            help_text='Any printable text (may contain "/"), at most 255 characters.',
        )
        account = AccountField(help_text="The paying account's public UUID.")
        attempt = serializers.IntegerField(
            min_value=0,
            required=False,
            allow_null=True,
            help_text="Accepted and checked, not stored: a registered run bills every attempt of it.",
        )

    @extend_schema_serializer(component_name="RunRegistration")
    class OutputSerializer(serializers.Serializer):
        run_id = serializers.CharField()
        account = serializers.UUIDField(source="account.public_id")
        created_at = serializers.DateTimeField()
        created = serializers.BooleanField()

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer, 200: OutputSerializer, **_BINDING_ERRORS},
        description="Idempotent: 201 when registered now, 200 when already registered to this account.",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        try:
            result = run_binding_create(account=params["account"], run_id=params["run_id"])
        except (InvalidBinding, BindingConflict) as exc:
            return _binding_error(exc, exc.field)
        run = result.binding
        body = self.OutputSerializer(
            {
                "run_id": run.run_id,
                "account": run.account,
                "created_at": run.created_at,
                "created": result.created,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


# Service field → request field of PayerBindingApi.
_BINDING_FIELDS = {
    "key_hash": "value",
    "team_id": "value",
    "end_user": "value",
    "raw_key": "api_key",
    "is_gateway": "gateway",
    "kind": "kind",
}


class PayerBindingApi(APIView):
    """Bind a LiteLLM key (hash or raw `sk-` key; only the hash is kept), team or end user to an account."""

    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="PayerBindingRequest")
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=[PayerSource.KEY, PayerSource.TEAM, PayerSource.END_USER])
        value = serializers.CharField(
            max_length=BINDING_VALUE_MAX_LENGTH,
            required=False,
            trim_whitespace=False,
            validators=[printable_text],
            help_text="The key hash LiteLLM logs for the key, the team id or the end user.",
        )
        api_key = serializers.CharField(
            required=False,
            write_only=True,
            trim_whitespace=False,
            max_length=4096,
            help_text="kind=key only, instead of `value`: the raw `sk-` key; only its hash is stored.",
        )
        account = AccountField(help_text="The paying account's public UUID.")
        gateway = serializers.BooleanField(
            required=False,
            default=False,
            help_text="kind=key only: a trusted server's key whose records bill their run or end-user alias.",
        )
        label = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            kind = attrs["kind"]
            has_value, has_key = "value" in attrs, "api_key" in attrs
            if kind == PayerSource.KEY:
                if has_value == has_key:
                    raise serializers.ValidationError({"value": "give exactly one of value (key hash) and api_key"})
            else:
                if has_key:
                    raise serializers.ValidationError({"api_key": "only for kind 'key'"})
                if attrs.get("gateway"):
                    raise serializers.ValidationError({"gateway": "only a key can be a gateway key"})
                if not has_value:
                    raise serializers.ValidationError({"value": "this field is required"})
            return attrs

    @extend_schema_serializer(component_name="PayerBinding")
    class OutputSerializer(serializers.Serializer):
        kind = serializers.CharField()
        value = serializers.CharField(help_text="For a key: the hash LiteLLM logs, never the raw key.")
        account = serializers.UUIDField(source="account.public_id")
        gateway = serializers.BooleanField()
        created_at = serializers.DateTimeField()
        created = serializers.BooleanField()

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer, 200: OutputSerializer, **_BINDING_ERRORS},
        description="Idempotent: 201 when bound now, 200 when already bound the same way to this account.",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        try:
            result = payer_binding_create(
                kind=params["kind"],
                account=params["account"],
                value=params.get("value"),
                raw_key=params.get("api_key"),
                is_gateway=params["gateway"],
                label=params["label"],
            )
        except (InvalidBinding, BindingConflict) as exc:
            field = _BINDING_FIELDS.get(exc.field, exc.field)
            if exc.field == "key_hash" and "api_key" in params:
                field = "api_key"
            return _binding_error(exc, field)
        binding = result.binding
        value = {ApiKeyBinding: "key_hash", TeamBinding: "team_id", EndUserAlias: "end_user"}[type(binding)]
        body = self.OutputSerializer(
            {
                "kind": params["kind"],
                "value": getattr(binding, value),
                "account": binding.account,
                "gateway": getattr(binding, "is_gateway", False),
                "created_at": binding.created_at,
                "created": result.created,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
