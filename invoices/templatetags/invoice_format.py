from decimal import Decimal

from django import template

from invoices.formatting import format_credits, format_usd

register = template.Library()


@register.filter(name="credits")
def credits_filter(amount: int) -> str:
    return format_credits(amount)


@register.filter(name="usd")
def usd_filter(amount: Decimal) -> str:
    return format_usd(amount)


@register.filter(name="exact_usd")
def exact_usd_filter(amount: Decimal) -> str:
    """A cost with every digit LiteLLM sent, no exponent, no trailing zeros (the activity page's cost)."""
    text = format(amount.normalize(), "f")
    return f"${text}"
