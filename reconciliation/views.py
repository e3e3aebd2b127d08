"""Internal API of reconciliation: reconcile one registered run against LiteLLM's spend logs."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_project.api import (
    AdminApiTokenAuthentication,
    ErrorSerializer,
    IsInternalService,
    error_response,
    error_responses,
)
from integrations.litellm.client import LiteLLMError, LiteLLMUnavailable
from payers.models import BINDING_VALUE_MAX_LENGTH
from reconciliation.runs import RunNotFound, reconcile_run
from reconciliation.window import ReconcileInputError


class RunReconcileApi(APIView):
    """Reconcile one run: read its calls from LiteLLM's spend logs, backfill missing receipts, report the rest."""

    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]

    @extend_schema_serializer(component_name="RunReconcileRequest")
    class InputSerializer(serializers.Serializer):
        since = serializers.DateTimeField(
            required=False, help_text="Start of the spend-log window (default: a day before the run's registration)."
        )
        until = serializers.DateTimeField(required=False, help_text="End of the window (default: now).")

    @extend_schema_serializer(component_name="RunReconcileResult")
    class OutputSerializer(serializers.Serializer):
        run_id = serializers.CharField()
        account = serializers.UUIDField(help_text="The run's account (public UUID).")
        window = serializers.DictField(child=serializers.CharField(), help_text="The spend-log window read.")
        end_users = serializers.ListField(
            child=serializers.CharField(), help_text='The end users read from LiteLLM ("{run_id}/{attempt}", ...).'
        )
        spend_log_rows = serializers.IntegerField()
        receipts = serializers.IntegerField(help_text="The run's receipts billed to its account, after the backfill.")
        backfilled = serializers.IntegerField(help_text="Receipts written now for calls whose callback never came.")
        charged_credits = serializers.IntegerField(help_text="Credits charged to the account for the run.")
        receipts_billed_elsewhere = serializers.IntegerField(
            help_text="Calls that named the run but were billed to their own (non-gateway) key's account."
        )
        discrepancies = serializers.ListField(
            child=serializers.DictField(), help_text="What is left after the backfill (kind and detail)."
        )
        outcome = serializers.ChoiceField(choices=["clean", "discrepancies"])

    @extend_schema(
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **error_responses(
                400, 401, 404, 503, e404="No registered run has this id (`field`: run_id).", e503="LiteLLM unreachable."
            ),
            502: OpenApiResponse(response=ErrorSerializer, description="LiteLLM answered, but not with spend logs."),
        },
        description=(
            "Idempotent: a second call finds nothing to backfill. The run's calls are read from LiteLLM's "
            '`/spend/logs/v2` by end user ("{run_id}/{attempt}" for attempts 0, 1, ...).'
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        if len(run_id) > BINDING_VALUE_MAX_LENGTH:
            return error_response(
                f"no registered run {run_id[:40]!r}…", http_status=status.HTTP_404_NOT_FOUND, field="run_id"
            )
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        try:
            result = reconcile_run(run_id=run_id, since=params.get("since"), until=params.get("until"))
        except RunNotFound as exc:
            return error_response(str(exc), http_status=status.HTTP_404_NOT_FOUND, field="run_id")
        except ReconcileInputError as exc:
            return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field="since")
        except LiteLLMUnavailable as exc:
            return error_response(
                f"LiteLLM's spend logs could not be read: {exc}", http_status=status.HTTP_503_SERVICE_UNAVAILABLE
            )
        except LiteLLMError as exc:
            return error_response(
                f"LiteLLM's spend logs could not be read: {exc}", http_status=status.HTTP_502_BAD_GATEWAY
            )
        return Response(self.OutputSerializer(result.as_dict()).data)
