from django.conf import settings
from django.db import DatabaseError, connection
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.money import COST_DECIMAL_PLACES, COST_MAX_DIGITS
from billing_project.api import (
    AuthorizeTokenAuthentication,
    IngestTokenAuthentication,
    IsInternalService,
    error_response,
    error_responses,
    valid_call_id,
)
from billing_project.http import RequestBodyError, read_request_body
from receipts.delivery import BodyError
from receipts.notify import waiter
from receipts.selectors import open_deferral_for_call, receipt_for_call
from receipts.services import ingest_delivery

# LiteLLM's generic_api logger always says application/json, also for NDJSON.
ACCEPTED_CONTENT_TYPES = {
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "text/plain",
}


class UsageIngestApi(APIView):
    """LiteLLM `generic_api` callback: a batch of StandardLoggingPayload records."""

    authentication_classes = [IngestTokenAuthentication]
    permission_classes = [IsInternalService]
    parser_classes: list = []  # the body is read raw: money is parsed as Decimal from its text

    @extend_schema_serializer(component_name="IngestResult")
    class OutputSerializer(serializers.Serializer):
        processed = serializers.IntegerField()
        duplicates = serializers.IntegerField()
        deferred = serializers.IntegerField()
        skipped = serializers.IntegerField()
        skipped_records = serializers.ListField(child=serializers.DictField())
        deferred_records = serializers.ListField(child=serializers.DictField())

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses={200: OutputSerializer, **error_responses(400, 401, 411, 413, 415, 503)},
        description="Bill a LiteLLM callback batch: a JSON array, NDJSON, or one record.",
    )
    def post(self, request: Request) -> Response:
        content_type = request.content_type.split(";")[0].strip().lower()
        if content_type and content_type not in ACCEPTED_CONTENT_TYPES:
            return error_response(
                f"unsupported Content-Type {content_type!r}; send application/json or application/x-ndjson",
                http_status=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                field="Content-Type",
            )
        try:
            body = read_request_body(
                request._request,
                limit=settings.BILLING_INGEST_MAX_BODY_BYTES,
                limit_name="BILLING_INGEST_MAX_BODY_BYTES",
            )
        except RequestBodyError as exc:
            return error_response(str(exc), http_status=exc.status_code, field=exc.field)
        try:
            result = ingest_delivery(
                body=body,
                content_type=content_type,
                remote_addr=str(request.META.get("REMOTE_ADDR", "")),
                headers=_delivery_headers(request),
            )
        except BodyError as exc:
            return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field="body")
        except DatabaseError as exc:
            # Nothing could be billed: let the sender retry (every record is idempotent).
            return error_response(
                f"the billing database is unavailable: {type(exc).__name__}",
                http_status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(self.OutputSerializer(result.as_dict()).data)


# Headers worth keeping with a delivery (never Authorization).
_DELIVERY_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "User-Agent")


def _delivery_headers(request: Request) -> dict[str, str]:
    return {name: request.headers[name][:512] for name in _DELIVERY_HEADERS if name in request.headers}


@extend_schema_serializer(component_name="ChargeReceipt")
class ReceiptOutputSerializer(serializers.Serializer):
    litellm_call_id = serializers.CharField()
    request_id = serializers.CharField()
    source_reference = serializers.CharField()
    run_id = serializers.CharField()
    attempt = serializers.IntegerField()
    account = serializers.UUIDField(source="account.public_id")
    end_user = serializers.CharField()
    status = serializers.CharField()
    model_group = serializers.CharField()
    model = serializers.CharField()
    provider = serializers.CharField()
    call_type = serializers.CharField()
    stream = serializers.BooleanField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(
        max_digits=COST_MAX_DIGITS, decimal_places=COST_DECIMAL_PLACES, coerce_to_string=True, normalize_output=True
    )
    charged_credits = serializers.IntegerField()
    zero_cost_suspect = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class ReceiptDetailApi(APIView):
    """For executors: has this call been billed? Long-polls up to `wait_ms`."""

    authentication_classes = [AuthorizeTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="ReceiptWaitParameters")
    class InputSerializer(serializers.Serializer):
        wait_ms = serializers.IntegerField(required=False, default=0, min_value=0)
        # From the path: the one call-id rule (billing_project.text_rules), as authorize and ingest apply it.
        litellm_call_id = serializers.CharField(trim_whitespace=False, validators=[valid_call_id])

    @extend_schema(
        parameters=[OpenApiParameter("wait_ms", int, description="Wait up to this long for the receipt (bounded).")],
        responses={
            200: ReceiptOutputSerializer,
            **error_responses(400, 401),
            404: inline_serializer(
                "ReceiptNotBilled", {"error": serializers.CharField(), "status": serializers.CharField()}
            ),
        },
    )
    def get(self, request: Request, litellm_call_id: str) -> Response:
        params = self.InputSerializer(data={**request.query_params.dict(), "litellm_call_id": litellm_call_id})
        if not params.is_valid() and "litellm_call_id" in params.errors:
            return error_response(
                f"litellm_call_id: {params.errors['litellm_call_id'][0]}",
                http_status=status.HTTP_400_BAD_REQUEST,
                field="litellm_call_id",
            )
        params.is_valid(raise_exception=True)
        wait_s = min(params.validated_data["wait_ms"], settings.BILLING_RECEIPT_MAX_WAIT_MS) / 1000
        receipt = receipt_for_call(litellm_call_id=litellm_call_id)
        if receipt is None and wait_s > 0:
            with waiter.subscribe(litellm_call_id) as landed:
                receipt = receipt_for_call(litellm_call_id=litellm_call_id)
                if receipt is None:
                    if not connection.in_atomic_block:
                        connection.close()  # hold no database connection while waiting
                    landed.wait(wait_s)
                    receipt = receipt_for_call(litellm_call_id=litellm_call_id)
        if receipt is not None:
            return Response(ReceiptOutputSerializer(receipt).data)
        deferral = open_deferral_for_call(litellm_call_id=litellm_call_id)
        if deferral is not None:
            return error_response(
                "not billed yet: the record is deferred",
                http_status=status.HTTP_404_NOT_FOUND,
                status="deferred",
                reason=deferral.reason,
                litellm_call_id=litellm_call_id,
            )
        return error_response(
            "not billed yet", http_status=status.HTTP_404_NOT_FOUND, status="unknown", litellm_call_id=litellm_call_id
        )
