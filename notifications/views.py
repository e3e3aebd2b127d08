"""The internal API of notification settings (admin-API token) and the owners' settings page (session)."""

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.fields import AccountField
from accounts.selectors import account_for_user, accounts_for_user
from billing_project.api import AdminApiTokenAuthentication, IsInternalService, error_response, error_responses
from notifications.exceptions import InvalidNotificationSetting
from notifications.models import BalanceAlert, EventType, WebhookEndpoint
from notifications.selectors import alerts_of, endpoints_of
from notifications.services import (
    balance_alert_create,
    balance_alert_delete,
    webhook_endpoint_create,
    webhook_endpoint_delete,
)


class _InternalApi(APIView):
    authentication_classes = [AdminApiTokenAuthentication]
    permission_classes = [IsInternalService]


class _AccountQuerySerializer(serializers.Serializer):
    account = AccountField()


@extend_schema_serializer(component_name="WebhookEndpoint")
class _EndpointSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    account = serializers.UUIDField(source="account.public_id")

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "account", "url", "events", "is_active", "disabled_reason", "created_at"]


@extend_schema_serializer(component_name="BalanceAlert")
class _AlertSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    account = serializers.UUIDField(source="account.public_id")

    class Meta:
        model = BalanceAlert
        fields = ["id", "account", "threshold_credits", "created_at"]


def _refused(exc: InvalidNotificationSetting) -> Response:
    return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field=exc.field)


class WebhookEndpointListApi(_InternalApi):
    """GET ?account=<uuid>: the account's endpoints. POST {"account", "url", "events"}: a new one, with its
    `whsec_` secret (shown only in this answer)."""

    @extend_schema_serializer(component_name="WebhookEndpointCreateRequest")
    class InputSerializer(serializers.Serializer):
        account = AccountField()
        url = serializers.CharField(max_length=4000, help_text="http(s); loopback/private addresses are refused")
        events = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False)

    @extend_schema_serializer(component_name="WebhookEndpointCreated")
    class OutputSerializer(_EndpointSerializer):
        class Meta(_EndpointSerializer.Meta):
            fields = [*_EndpointSerializer.Meta.fields, "secret"]

    @extend_schema(
        parameters=[_AccountQuerySerializer],
        responses={200: _EndpointSerializer(many=True), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        query = _AccountQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(_EndpointSerializer(endpoints_of(account=query.validated_data["account"]), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **error_responses(400, 401)})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            endpoint = webhook_endpoint_create(**data.validated_data)
        except InvalidNotificationSetting as exc:
            return _refused(exc)
        return Response(self.OutputSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookEndpointDetailApi(_InternalApi):
    """DELETE: stop sending to the endpoint (its delivery log stays)."""

    @extend_schema(responses={204: None, **error_responses(401, 404)})
    def delete(self, request: Request, endpoint_id: UUID) -> Response:
        endpoint = WebhookEndpoint.objects.filter(public_id=endpoint_id, deleted_at=None).first()
        if endpoint is None:
            return error_response("no such webhook endpoint", http_status=status.HTTP_404_NOT_FOUND, field="id")
        webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BalanceAlertListApi(_InternalApi):
    """GET ?account=<uuid>: the account's thresholds. POST {"account", "threshold_credits"}: a new one."""

    @extend_schema_serializer(component_name="BalanceAlertCreateRequest")
    class InputSerializer(serializers.Serializer):
        account = AccountField()
        # Judged by the service (a positive JSON integer: not "5", not 5.0).
        threshold_credits = serializers.JSONField(help_text="a positive integer")

    @extend_schema(
        parameters=[_AccountQuerySerializer], responses={200: _AlertSerializer(many=True), **error_responses(400, 401)}
    )
    def get(self, request: Request) -> Response:
        query = _AccountQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(_AlertSerializer(alerts_of(account=query.validated_data["account"]), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: _AlertSerializer, **error_responses(400, 401)})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            alert = balance_alert_create(**data.validated_data)
        except InvalidNotificationSetting as exc:
            return _refused(exc)
        return Response(_AlertSerializer(alert).data, status=status.HTTP_201_CREATED)


class BalanceAlertDetailApi(_InternalApi):
    @extend_schema(responses={204: None, **error_responses(401, 404)})
    def delete(self, request: Request, alert_id: UUID) -> Response:
        alert = BalanceAlert.objects.filter(public_id=alert_id).first()
        if alert is None:
            return error_response("no such balance alert", http_status=status.HTTP_404_NOT_FOUND, field="id")
        balance_alert_delete(alert=alert)
        return Response(status=status.HTTP_204_NO_CONTENT)


@method_decorator(never_cache, name="dispatch")
class NotificationSettingsPageView(LoginRequiredMixin, View):
    """GET/POST /billing/settings/notifications[?account=<uuid>]: the owner's endpoints and alerts."""

    template_name = "notifications/settings.html"

    def _account(self, request: HttpRequest) -> Any:
        account = account_for_user(user=request.user, public_id=request.GET.get("account") or None)
        if account is None:
            raise Http404("no such billing account")
        return account

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._page(request, self._account(request))

    def post(self, request: HttpRequest) -> HttpResponse:
        account = self._account(request)
        action = request.POST.get("action", "")
        try:
            if action == "add_endpoint":
                endpoint = webhook_endpoint_create(
                    account=account, url=request.POST.get("url", "").strip(), events=request.POST.getlist("events")
                )
                messages.success(request, f"Endpoint added. Its signing secret (shown once): {endpoint.secret}")
            elif action == "add_alert":
                text = request.POST.get("threshold_credits", "").strip()
                threshold: object = int(text) if text.isascii() and text.isdigit() else text
                balance_alert_create(account=account, threshold_credits=threshold)  # type: ignore[arg-type]
                messages.success(request, f"Alert added below {threshold:,} credits.")
            elif action == "delete_endpoint":
                endpoint = endpoints_of(account=account).filter(public_id=request.POST.get("id")).first()
                if endpoint is None:
                    raise Http404("no such webhook endpoint")
                webhook_endpoint_delete(endpoint=endpoint)
                messages.success(request, "Endpoint deleted.")
            elif action == "delete_alert":
                alert = alerts_of(account=account).filter(public_id=request.POST.get("id")).first()
                if alert is None:
                    raise Http404("no such balance alert")
                balance_alert_delete(alert=alert)
                messages.success(request, "Alert deleted.")
            else:
                return self._page(request, account, error=("action", f"unknown action {action!r}"), status_code=400)
        except (InvalidNotificationSetting, ValueError) as exc:
            field = getattr(exc, "field", "form")
            return self._page(request, account, error=(field, str(exc)), status_code=400)
        url = reverse("billing-notification-settings")
        return HttpResponseRedirect(f"{url}?account={account.public_id}")

    def _page(
        self, request: HttpRequest, account: Any, *, error: tuple[str, str] | None = None, status_code: int = 200
    ) -> HttpResponse:
        accounts = list(accounts_for_user(user=request.user))
        context = {
            "account": account,
            "accounts": accounts,
            "many_accounts": len(accounts) > 1,
            "endpoints": endpoints_of(account=account),
            "alerts": alerts_of(account=account),
            "event_types": EventType.choices,
            "error": error,
            "form": request.POST if error else {},
        }
        return render(request, self.template_name, context, status=status_code)
