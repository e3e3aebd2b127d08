from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.exceptions import IdempotencyConflict
from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import GRANT_REASONS, InvalidGrant, grant_credits
from billing_project.api import AdminApiTokenAuthentication, IsInternalService, error_responses


class CreditGrantApi(APIView):
    """Top-ups and grants from payment systems; idempotent by `idempotency_key`."""

    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="CreditGrantRequest")
    class InputSerializer(serializers.Serializer):
        account = serializers.UUIDField()
        amount_credits = serializers.IntegerField()
        reason = serializers.ChoiceField(choices=sorted(GRANT_REASONS))
        idempotency_key = serializers.CharField(max_length=255, required=False, allow_blank=False)
        memo = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

        def validate_account(self, value):  # type: ignore[no-untyped-def]
            if not BillingAccount.objects.filter(public_id=value).exists():
                raise serializers.ValidationError("no billing account has this id")
            return value

    @extend_schema_serializer(component_name="CreditGrantResult")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="CreditLedgerEntry")
        class EntrySerializer(serializers.ModelSerializer):
            account = serializers.UUIDField(source="account.public_id")

            class Meta:
                model = CreditLedgerEntry
                fields = [
                    "id",
                    "account",
                    "amount_credits",
                    "reason",
                    "balance_after",
                    "idempotency_key",
                    "memo",
                    "created_at",
                ]

        entry = EntrySerializer()
        balance_credits = serializers.IntegerField()
        created = serializers.BooleanField()

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer, 200: OutputSerializer, **error_responses(400, 401, 409)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        account = get_object_or_404(BillingAccount, public_id=params["account"])
        try:
            result = grant_credits(
                account=account,
                amount_credits=params["amount_credits"],
                reason=params["reason"],
                idempotency_key=params.get("idempotency_key"),
                memo=params["memo"],
            )
        except IdempotencyConflict as exc:
            return Response({"error": str(exc), "field": "idempotency_key"}, status=status.HTTP_409_CONFLICT)
        except InvalidGrant as exc:  # amounts are judged by the service alone (accounts.services.validate_grant)
            return Response({"error": str(exc), "field": exc.field}, status=status.HTTP_400_BAD_REQUEST)
        account.refresh_from_db(fields=["balance_credits"])
        body = self.OutputSerializer(
            {"entry": result.entry, "balance_credits": account.balance_credits, "created": result.created}
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
