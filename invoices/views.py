"""What a signed-in user sees: the invoice page (HTML and CSV) and its JSON twin (the balance: accounts.views).

A user sees only accounts they own. Another user's account, a malformed
account id or a bad period is a 404 on the pages (400 naming `period` on the
JSON API), never someone else's numbers. All numbers come from
invoices.selectors.invoice_for_account (the ledger's daily summary).
"""

from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import BillingAccount
from accounts.selectors import account_for_user, account_for_user_or_404, accounts_for_user, open_promotions
from holds.selectors import credit_availability
from invoices.charts import daily_usage_chart
from invoices.exports import invoice_csv
from invoices.selectors import (
    InvalidPeriod,
    Invoice,
    Period,
    call_day_lines,
    current_period,
    invoice_for_account,
    parse_period,
)

USD_FIELD: dict[str, Any] = {"max_digits": 40, "decimal_places": 6}


class _UsageSumsSerializer(serializers.Serializer):
    """The usage sums every invoice line carries (one definition for all its breakdowns)."""

    calls = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    credits = serializers.IntegerField()
    usd = serializers.DecimalField(**USD_FIELD)


def _invoice_url(period: Period, account: BillingAccount, *, many_accounts: bool, **extra: str) -> str:
    url = reverse("invoice", kwargs={"period": period.label})
    query = {**({"account": str(account.public_id)} if many_accounts else {}), **extra}
    return f"{url}?{urlencode(query)}" if query else url


@method_decorator(never_cache, name="dispatch")  # private numbers: never kept by a shared cache
class InvoicePageView(LoginRequiredMixin, View):
    """GET /billing/invoice/ (current month) and /billing/invoice/YYYY-MM/; ?format=csv; ?account=<uuid>."""

    def get(self, request: HttpRequest, period: str | None = None) -> HttpResponse:
        try:
            invoice_period = parse_period(period)
        except InvalidPeriod as exc:
            raise Http404(str(exc)) from exc
        wanted = request.GET.get("account")
        account = account_for_user(user=request.user, public_id=wanted)
        if account is None:
            if not wanted:
                return render(request, "invoices/no_account.html", status=404)
            raise Http404("no such billing account")
        output = request.GET.get("format", "html")
        if output not in ("html", "csv"):
            raise Http404("format must be html or csv")

        invoice = invoice_for_account(account=account, period=invoice_period)
        if output == "csv":
            response = HttpResponse(invoice_csv(invoice), content_type="text/csv; charset=utf-8")
            filename = f"invoice-{invoice_period.label}-{account.public_id}.csv"
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
            return response
        return render(request, "invoices/invoice.html", self._context(request, invoice))

    def _context(self, request: HttpRequest, invoice: Invoice) -> dict[str, Any]:
        accounts = list(accounts_for_user(user=request.user))
        many = len(accounts) > 1
        period = invoice.period
        this_month = current_period()
        by_call_day = request.GET.get("days") == "call"
        days = (
            call_day_lines(account_id=invoice.account.pk, start=period.start, end=period.end)
            if by_call_day
            else invoice.by_day
        )
        return {
            "invoice": invoice,
            "chart": daily_usage_chart(days),
            "by_call_day": by_call_day,
            "booked_days_url": _invoice_url(period, invoice.account, many_accounts=many),
            "call_days_url": _invoice_url(period, invoice.account, many_accounts=many, days="call"),
            "breakdowns": [
                ("Usage by API key", "api_key", invoice.by_api_key),
                ("Usage by end user", "end_user", invoice.by_end_user),
            ],
            "accounts": accounts,
            "many_accounts": many,
            "csv_url": _invoice_url(period, invoice.account, many_accounts=many, format="csv"),
            "json_url": reverse("billing-invoice-api")
            + "?"
            + urlencode({"period": period.label, "account": str(invoice.account.public_id)}),
            "previous_url": _invoice_url(period.previous, invoice.account, many_accounts=many),
            "next_url": _invoice_url(period.next, invoice.account, many_accounts=many)
            if period.next <= this_month
            else None,
            "availability": credit_availability(account=invoice.account),
            "promotions": list(open_promotions(account=invoice.account)),
            "ties_out": invoice.ties_out,
        }


class InvoiceApi(APIView):
    """GET /api/billing/invoice?period=YYYY-MM[&account=<uuid>]: the invoice page's numbers as JSON."""

    class InputSerializer(serializers.Serializer):
        period = serializers.CharField(required=False, allow_blank=True, default="")
        account = serializers.UUIDField(required=False, allow_null=True, default=None)

        def validate_period(self, value: str) -> Period:
            try:
                return parse_period(value)
            except InvalidPeriod as exc:
                raise serializers.ValidationError(str(exc)) from exc

    @extend_schema_serializer(component_name="Invoice")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="InvoiceAddedLine")
        class ReasonSerializer(serializers.Serializer):
            reason = serializers.CharField()
            entries = serializers.IntegerField()
            credits = serializers.IntegerField()
            usd = serializers.DecimalField(**USD_FIELD)

        @extend_schema_serializer(component_name="InvoiceModelGroupLine")
        class ModelGroupSerializer(_UsageSumsSerializer):
            model_group = serializers.CharField()

        @extend_schema_serializer(component_name="InvoiceDayLine")
        class DaySerializer(serializers.Serializer):
            day = serializers.DateField()
            calls = serializers.IntegerField()
            prompt_tokens = serializers.IntegerField()
            completion_tokens = serializers.IntegerField()
            total_tokens = serializers.IntegerField()
            used_credits = serializers.IntegerField()
            used_usd = serializers.DecimalField(**USD_FIELD)
            added_credits = serializers.IntegerField()
            closing_balance_credits = serializers.IntegerField()

        @extend_schema_serializer(component_name="InvoiceUsageTotals")
        class TotalsSerializer(_UsageSumsSerializer):
            """The period's usage, summed."""

        @extend_schema_serializer(component_name="InvoiceApiKeyLine")
        class ApiKeyLineSerializer(_UsageSumsSerializer):
            api_key_hash = serializers.CharField(source="key", allow_null=True, help_text="null on the others line")
            api_key_alias = serializers.CharField(source="alias")
            label = serializers.CharField(help_text="the alias if known, else the hash shortened")
            is_others = serializers.BooleanField()
            others_count = serializers.IntegerField(help_text="keys folded into the others line (0 otherwise)")

        @extend_schema_serializer(component_name="InvoiceEndUserLine")
        class EndUserLineSerializer(_UsageSumsSerializer):
            end_user = serializers.CharField(source="key", allow_null=True, help_text="null on the others line")
            label = serializers.CharField()
            is_others = serializers.BooleanField()
            others_count = serializers.IntegerField(help_text="end users folded into the others line (0 otherwise)")

        account = serializers.UUIDField(source="account.public_id")
        account_name = serializers.CharField(source="account.name")
        period = serializers.CharField(source="period.label")
        start = serializers.DateField(source="period.start")
        end = serializers.DateField(source="period.end")
        through = serializers.DateField()
        is_running = serializers.BooleanField()
        credits_per_usd = serializers.DecimalField(max_digits=40, decimal_places=6)
        opening_balance_credits = serializers.IntegerField(source="opening_credits")
        opening_balance_usd = serializers.DecimalField(source="opening_usd", **USD_FIELD)
        added_credits = serializers.IntegerField()
        added_usd = serializers.DecimalField(**USD_FIELD)
        added_by_reason = ReasonSerializer(many=True)
        used_credits = serializers.IntegerField()
        used_usd = serializers.DecimalField(**USD_FIELD)
        closing_balance_credits = serializers.IntegerField(source="closing_credits")
        closing_balance_usd = serializers.DecimalField(source="closing_usd", **USD_FIELD)
        by_model_group = ModelGroupSerializer(many=True)
        by_day = DaySerializer(many=True)
        totals = TotalsSerializer()
        breakdown_top_n = serializers.IntegerField()
        by_api_key = ApiKeyLineSerializer(many=True)
        by_end_user = EndUserLineSerializer(many=True)

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        account = account_for_user_or_404(user=request.user, public_id=params.validated_data["account"])
        invoice = invoice_for_account(account=account, period=params.validated_data["period"])
        return Response(self.OutputSerializer(invoice).data)
