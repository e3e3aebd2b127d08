from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.exceptions import IdempotencyConflict
from accounts.fields import AccountField
from accounts.models import PROMOTION_PRIORITY_DEFAULT, BillingAccount, CreditCategory, CreditLedgerEntry
from accounts.money import credits_to_usd
from accounts.selectors import account_for_user_or_404, open_promotions
from accounts.services import GRANT_REASONS, InvalidGrant, grant_credits, grant_promotional_credits
from billing_project.api import AdminApiTokenAuthentication, IsInternalService, error_response, error_responses
from holds.selectors import credit_availability


class CreditGrantApi(APIView):
    """Top-ups and grants from payment systems; idempotent by `idempotency_key`.

    `category: "promotional"` grants credit that expires at `expires_at` and is used before paid credit
    (lowest `priority` first, then the soonest expiry); its reason is always `grant`.
    """

    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="CreditGrantRequest")
    class InputSerializer(serializers.Serializer):
        account = AccountField()
        amount_credits = serializers.IntegerField()
        reason = serializers.ChoiceField(choices=sorted(GRANT_REASONS))
        idempotency_key = serializers.CharField(max_length=255, required=False, allow_blank=False)
        memo = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
        category = serializers.ChoiceField(choices=CreditCategory.choices, default=CreditCategory.PAID)
        expires_at = serializers.DateTimeField(required=False, help_text="promotional credit only: when it expires")
        priority = serializers.IntegerField(
            required=False,
            help_text=f"promotional credit only: lower is used first (default {PROMOTION_PRIORITY_DEFAULT})",
        )

        def validate(self, attrs: dict) -> dict:
            if attrs["category"] == CreditCategory.PROMOTIONAL:
                if "expires_at" not in attrs:
                    raise serializers.ValidationError({"expires_at": "promotional credit needs an expiry"})
                if attrs["reason"] != CreditLedgerEntry.Reason.GRANT:
                    raise serializers.ValidationError({"reason": "promotional credit is always a grant"})
            else:
                for field in ("expires_at", "priority"):
                    if field in attrs:
                        raise serializers.ValidationError({field: "only promotional credit expires or has a priority"})
            return attrs

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
                    "promotional_credit",
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
        account = params["account"]
        try:
            if params["category"] == CreditCategory.PROMOTIONAL:
                result = grant_promotional_credits(
                    account=account,
                    amount_credits=params["amount_credits"],
                    expires_at=params["expires_at"],
                    priority=params.get("priority", PROMOTION_PRIORITY_DEFAULT),
                    idempotency_key=params.get("idempotency_key"),
                    memo=params["memo"],
                )
            else:
                result = grant_credits(
                    account=account,
                    amount_credits=params["amount_credits"],
                    reason=params["reason"],
                    idempotency_key=params.get("idempotency_key"),
                    memo=params["memo"],
                )
        except IdempotencyConflict as exc:
            return error_response(str(exc), http_status=status.HTTP_409_CONFLICT, field="idempotency_key")
        except InvalidGrant as exc:  # amounts are judged by the service alone (accounts.services.validate_grant)
            return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field=exc.field)
        account.refresh_from_db(fields=["balance_credits"])
        body = self.OutputSerializer(
            {"entry": result.entry, "balance_credits": account.balance_credits, "created": result.created}
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class BalanceApi(APIView):
    """GET /billing/balance[?account=<uuid>] → balance, its USD value, and available (balance − open holds)."""

    class InputSerializer(serializers.Serializer):
        account = serializers.UUIDField(required=False, allow_null=True, default=None)

    @extend_schema_serializer(component_name="Balance")
    class OutputSerializer(serializers.Serializer):
        account = serializers.UUIDField(source="public_id")
        balance_credits = serializers.IntegerField()
        balance_usd = serializers.SerializerMethodField()

        def get_balance_usd(self, account: BillingAccount) -> str:
            return f"{credits_to_usd(account.balance_credits):.6f}"

        available_credits = serializers.SerializerMethodField(help_text="balance − credits held by calls in flight")
        held_credits = serializers.SerializerMethodField(help_text="credits held by calls in flight (open holds)")

        def get_available_credits(self, account: BillingAccount) -> int:
            return self.context["availability"].available_credits

        def get_held_credits(self, account: BillingAccount) -> int:
            return self.context["availability"].held_credits

        promotional_credits = serializers.IntegerField(
            help_text="the part of the balance that is promotional credit (used first, expires)"
        )

        @extend_schema_serializer(component_name="PromotionalGrant")
        class PromotionalGrantSerializer(serializers.Serializer):
            remaining_credits = serializers.IntegerField()
            granted_credits = serializers.IntegerField()
            priority = serializers.IntegerField()
            expires_at = serializers.DateTimeField()

        promotions = serializers.SerializerMethodField(help_text="unused promotional grants, in the order used")

        @extend_schema_field(PromotionalGrantSerializer(many=True))
        def get_promotions(self, account: BillingAccount) -> list:
            return self.PromotionalGrantSerializer(open_promotions(account=account), many=True).data

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        account = account_for_user_or_404(user=request.user, public_id=params.validated_data["account"])
        availability = credit_availability(account=account)
        return Response(self.OutputSerializer(account, context={"availability": availability}).data)
