"""GET /billing/activity/ (page, ?format=csv) and /api/billing/activity (JSON): the owner's calls, one row each.

Session auth, the owner's accounts only (another account is a 404). Filters that do not parse are a 400
naming the field. The CSV streams every matching row a keyset page at a time.
"""

import csv
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.money import COST_DECIMAL_PLACES, COST_MAX_DIGITS
from accounts.selectors import account_for_user_or_404, accounts_for_user
from activity.selectors import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    STATUSES,
    ActivityFilters,
    ActivityRow,
    Cursor,
    InvalidActivityQuery,
    activity_page,
    all_activity,
)
from billing_project.api import error_response, error_responses
from invoices.charts import daily_usage_chart
from invoices.selectors import DayLine, call_day_lines

CSV_COLUMNS = [
    "litellm_call_id",
    "called_at",
    "model_group",
    "key",
    "end_user",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "credits",
    "status",
    "waiting_reason",
]
CHART_DAYS = 30
CHART_MAX_DAYS = 366


class ActivityQuerySerializer(serializers.Serializer):
    """The filters of the page, the CSV and the API (one definition)."""

    account = serializers.UUIDField(required=False, allow_null=True, default=None)
    since = serializers.DateTimeField(required=False, allow_null=True, default=None, help_text="call time ≥ (ISO 8601)")
    until = serializers.DateTimeField(required=False, allow_null=True, default=None, help_text="call time < (ISO 8601)")
    model = serializers.CharField(required=False, allow_blank=True, default="", max_length=255)
    key = serializers.CharField(required=False, allow_blank=True, default="", max_length=255)
    end_user = serializers.CharField(required=False, allow_blank=True, default="", max_length=255)
    status = serializers.ChoiceField(choices=[("", "any"), *((s, s) for s in STATUSES)], required=False, default="")
    cursor = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=PAGE_SIZE)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["since"] and attrs["until"] and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": "until must be after since"})
        return attrs


def _parse(request: HttpRequest | Request) -> tuple[ActivityFilters, Cursor | None, int]:
    """The filters of a request for its user's account; InvalidActivityQuery names the field; Http404."""
    query = ActivityQuerySerializer(data=request.GET)
    if not query.is_valid():
        field, problems = next(iter(query.errors.items()))
        raise InvalidActivityQuery(f"{field}: {' '.join(str(p) for p in problems)}", field=field)
    params = query.validated_data
    account = account_for_user_or_404(user=request.user, public_id=params["account"])
    filters = ActivityFilters(
        account=account,
        since=params["since"],
        until=params["until"],
        model=params["model"],
        key=params["key"],
        end_user=params["end_user"],
        status=params["status"],
    )
    cursor = Cursor.decode(params["cursor"]) if params["cursor"] else None
    return filters, cursor, params["limit"]


def _csv_lines(rows: Iterator[ActivityRow]) -> Iterator[str]:
    class Line:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Line())
    yield writer.writerow(CSV_COLUMNS)
    for r in rows:
        yield writer.writerow(
            [
                r.litellm_call_id,
                r.called_at.isoformat(),
                r.model_group,
                r.key_label,
                r.end_user,
                r.prompt_tokens,
                r.completion_tokens,
                "" if r.cost_usd is None else str(r.cost_usd),
                "" if r.credits is None else r.credits,
                r.status,
                r.waiting_reason,
            ]
        )


def _call_day_lines(filters: ActivityFilters) -> list[DayLine]:
    """The chart's days: the filter's window by call time, else the last CHART_DAYS days."""
    today = timezone.now().date()
    end = (
        (filters.until - timedelta(microseconds=1)).date() + timedelta(days=1)
        if filters.until
        else today + timedelta(days=1)
    )
    start = filters.since.date() if filters.since else end - timedelta(days=CHART_DAYS)
    start = max(start, end - timedelta(days=CHART_MAX_DAYS))
    return call_day_lines(account_id=filters.account.pk, start=start, end=end)


@method_decorator(never_cache, name="dispatch")
class ActivityPageView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            filters, cursor, limit = _parse(request)
        except InvalidActivityQuery as exc:
            return render(
                request, "activity/activity.html", {"error": (exc.field, str(exc)), "query": request.GET}, status=400
            )
        output = request.GET.get("format", "html")
        if output == "csv":
            response = StreamingHttpResponse(
                _csv_lines(all_activity(filters=filters)), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = f'attachment; filename="activity-{filters.account.public_id}.csv"'
            return response
        if output != "html":
            raise Http404("format must be html or csv")
        page = activity_page(filters=filters, cursor=cursor, size=limit)
        query = {k: v for k, v in request.GET.items() if k not in ("cursor", "format") and v}
        accounts = list(accounts_for_user(user=request.user))
        return render(
            request,
            "activity/activity.html",
            {
                "account": filters.account,
                "accounts": accounts,
                "many_accounts": len(accounts) > 1,
                "filters": filters,
                "page": page,
                "query": request.GET,
                "chart": daily_usage_chart(_call_day_lines(filters)),
                "csv_query": urlencode({**query, "format": "csv"}),
                "next_query": urlencode({**query, "cursor": page.next_cursor}) if page.next_cursor else "",
            },
        )


class ActivityApi(APIView):
    """GET /api/billing/activity: a page of calls (newest call time first) and the `next` cursor."""

    @extend_schema_serializer(component_name="ActivityPage")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="ActivityCall")
        class RowSerializer(serializers.Serializer):
            litellm_call_id = serializers.CharField()
            called_at = serializers.DateTimeField()
            model_group = serializers.CharField()
            key = serializers.CharField(source="key_label", help_text="the key's alias, or its shortened hash")
            end_user = serializers.CharField()
            prompt_tokens = serializers.IntegerField()
            completion_tokens = serializers.IntegerField()
            cost_usd = serializers.DecimalField(
                max_digits=COST_MAX_DIGITS,
                decimal_places=COST_DECIMAL_PLACES,
                coerce_to_string=True,
                normalize_output=True,
                allow_null=True,
            )
            credits = serializers.IntegerField(allow_null=True)
            status = serializers.ChoiceField(choices=STATUSES)
            waiting_reason = serializers.CharField()

        results = RowSerializer(many=True, source="rows")
        next = serializers.CharField(
            source="next_cursor", allow_null=True, help_text="pass as ?cursor= for the next page"
        )

    @extend_schema(parameters=[ActivityQuerySerializer], responses={200: OutputSerializer, **error_responses(400, 404)})
    def get(self, request: Request) -> Response:
        try:
            filters, cursor, limit = _parse(request)
        except InvalidActivityQuery as exc:
            return error_response(str(exc), http_status=status.HTTP_400_BAD_REQUEST, field=exc.field)
        return Response(self.OutputSerializer(activity_page(filters=filters, cursor=cursor, size=limit)).data)
