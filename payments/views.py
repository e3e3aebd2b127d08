"""Buying credits: the owner's Buy form and purchase history, the return page, and Stripe's webhook.

The pages are for the signed-in owner of the account only (anyone else gets 404). The webhook takes no bearer
token: Stripe signs each delivery, and the view makes one service call that stores the delivery first.
"""

from typing import Any

from django.conf import settings
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from accounts.models import BillingAccount
from accounts.selectors import account_for_user, account_for_user_or_404, accounts_for_user
from billing_project.api import error_body
from payments.exceptions import InvalidPurchase, PaymentsUnavailable
from payments.models import AutoRecharge, Provider
from payments.selectors import attempt_for_owner, purchase_history
from payments.services import (
    auto_recharge_disable,
    auto_recharge_set,
    eip681_link,
    purchase_amount,
    stripe_delivery_receive,
    stripe_purchase_start,
    usdc_purchase_start,
    usdc_transaction_submit,
    verify_usdc_attempt,
)


def _page(request: HttpRequest, account: BillingAccount, *, status: int = 200, **context: Any) -> HttpResponse:
    return render(
        request,
        "payments/credits.html",
        {
            "account": account,
            "accounts": accounts_for_user(user=request.user),
            "history": purchase_history(account=account),
            "auto_recharge": AutoRecharge.objects.filter(account=account).first(),
            "usdc_configured": bool(settings.BILLING_USDC_RPC_URLS and settings.BILLING_USDC_RECEIVER),
            "usdc": {
                "chain_id": settings.BILLING_USDC_CHAIN_ID,
                "token": settings.BILLING_USDC_TOKEN_ADDRESS,
                "receiver": settings.BILLING_USDC_RECEIVER,
                "confirmations": settings.BILLING_USDC_CONFIRMATIONS,
            },
            **context,
        },
        status=status,
    )


@method_decorator(never_cache, name="dispatch")
class CreditsPageView(LoginRequiredMixin, View):
    """GET /billing/credits/[?account=<uuid>]: the Buy credits form and the account's purchase history."""

    def get(self, request: HttpRequest) -> HttpResponse:
        return _page(request, account_for_user_or_404(user=request.user, public_id=request.GET.get("account")))


@method_decorator(never_cache, name="dispatch")
class BuyCreditsView(LoginRequiredMixin, View):
    """POST /billing/credits/buy (amount_usd, account): a Checkout Session, answered 303 to Stripe's page."""

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponseRedirect(reverse("billing-credits-page"))

    def post(self, request: HttpRequest) -> HttpResponse:
        account = account_for_user(user=request.user, public_id=request.POST.get("account") or None)
        if account is None:
            raise Http404("no such billing account")
        try:
            amount = purchase_amount(request.POST.get("amount_usd"))
            attempt = stripe_purchase_start(
                account=account,
                amount_usd=amount,
                created_by=request.user,
                return_url=lambda reference: request.build_absolute_uri(reverse("billing-purchase", args=[reference])),
                save_card=request.POST.get("save_card") == "on",
            )
        except InvalidPurchase as exc:
            return _page(
                request,
                account,
                status=400,
                error=str(exc),
                error_field=exc.field,
                amount=request.POST.get("amount_usd", ""),
            )
        except PaymentsUnavailable as exc:
            return _page(request, account, status=503, error=f"Payments are not available right now: {exc}")
        return HttpResponseRedirect(attempt.checkout_url, status=303)


@method_decorator(never_cache, name="dispatch")
class AutoRechargeView(LoginRequiredMixin, View):
    """POST /billing/credits/auto-recharge (account, below_usd, amount_usd; or disable=1): the standing order."""

    def post(self, request: HttpRequest) -> HttpResponse:
        account = account_for_user(user=request.user, public_id=request.POST.get("account") or None)
        if account is None:
            raise Http404("no such billing account")
        if request.POST.get("disable"):
            auto_recharge_disable(account=account)
        else:
            try:
                auto_recharge_set(
                    account=account,
                    below_usd=request.POST.get("below_usd"),
                    amount_usd=request.POST.get("amount_usd"),
                )
            except InvalidPurchase as exc:
                return _page(request, account, status=400, error=str(exc), error_field=exc.field)
        return HttpResponseRedirect(f"{reverse('billing-credits-page')}?account={account.public_id}", status=303)


@method_decorator(never_cache, name="dispatch")
class BuyWithUsdcView(LoginRequiredMixin, View):
    """POST /billing/credits/usdc (amount_usd, wallet, account): an attempt to pay on-chain, answered 303 to its
    page (chain, token, receiver, amount, an EIP-681 link, and the form for the transaction hash)."""

    def post(self, request: HttpRequest) -> HttpResponse:
        account = account_for_user(user=request.user, public_id=request.POST.get("account") or None)
        if account is None:
            raise Http404("no such billing account")
        try:
            attempt = usdc_purchase_start(
                account=account,
                amount_usd=purchase_amount(request.POST.get("amount_usd")),
                wallet=request.POST.get("wallet", ""),
                created_by=request.user,
            )
        except InvalidPurchase as exc:
            typed = request.POST.get("amount_usd", "")
            return _page(request, account, status=400, error=str(exc), error_field=exc.field, amount=typed)
        return HttpResponseRedirect(reverse("billing-purchase", args=[attempt.public_id]), status=303)


@method_decorator(never_cache, name="dispatch")
class UsdcTransactionView(LoginRequiredMixin, View):
    """POST /billing/credits/purchases/<attempt>/tx (tx_hash): the transaction that pays it; verified at once and
    again by the worker until it has its confirmations."""

    def post(self, request: HttpRequest, attempt_id: str) -> HttpResponse:
        attempt = attempt_for_owner(user=request.user, public_id=attempt_id)
        if attempt is None or attempt.provider != Provider.USDC:
            raise Http404("no such purchase")
        try:
            attempt = usdc_transaction_submit(attempt=attempt, tx_hash=request.POST.get("tx_hash", ""))
        except InvalidPurchase as exc:
            return _page(request, attempt.account, status=400, returned=attempt, error=str(exc), error_field=exc.field)
        verify_usdc_attempt(attempt=attempt)
        return HttpResponseRedirect(reverse("billing-purchase", args=[attempt.public_id]), status=303)


@method_decorator(never_cache, name="dispatch")
class PurchaseView(LoginRequiredMixin, View):
    """GET /billing/credits/purchases/<attempt>/: where Stripe sends the buyer back; shows pending / paid / failed."""

    def get(self, request: HttpRequest, attempt_id: str) -> HttpResponse:
        attempt = attempt_for_owner(user=request.user, public_id=attempt_id)
        if attempt is None:
            raise Http404("no such purchase")
        return _page(
            request,
            attempt.account,
            returned=attempt,
            cancelled=bool(request.GET.get("cancelled")),
            payment_link=eip681_link(attempt) if attempt.provider == Provider.USDC else "",
        )


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """POST /api/payments/stripe/webhook: stored, verified with the stripe library, then processed once."""
    if request.method != "POST":
        return JsonResponse(error_body("only POST", field="method"), status=405)
    event = stripe_delivery_receive(body=request.body, headers=dict(request.headers))
    if not event.signature_valid:
        return JsonResponse(error_body(event.signature_error, field="Stripe-Signature"), status=400)
    return JsonResponse({"received": True, "event": event.event_id, "outcome": event.outcome})
