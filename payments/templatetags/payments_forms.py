"""`{% buy_credits_form account %}`: the Buy credits form wherever an owner sees an account (invoice, credits)."""

from typing import Any

from django import template
from django.conf import settings

from accounts.models import BillingAccount
from integrations.stripe.client import is_configured

register = template.Library()


@register.inclusion_tag("payments/buy_form.html", takes_context=True)
def buy_credits_form(context: Any, account: BillingAccount) -> dict[str, Any]:
    return {
        "account": account,
        "csrf_token": context.get("csrf_token"),
        "stripe_configured": is_configured(),
        "purchase_min_usd": settings.BILLING_PURCHASE_MIN_USD,
        "purchase_max_usd": settings.BILLING_PURCHASE_MAX_USD,
        # A refused purchase's message, named field and what was typed (the credits page's 400).
        "error": context.get("error"),
        "error_field": context.get("error_field"),
        "amount": context.get("amount"),
    }
