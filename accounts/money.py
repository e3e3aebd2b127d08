"""The one place that turns USD into credits (SPEC section 5).

Costs are Decimal parsed from JSON text; credits are integers. Rounding is
always up, so a charge is never below cost.
"""

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal

from django.conf import settings

# Enough digits for any cost LiteLLM sends times any sane rate: the product is
# exact before the single rounding step.
_CONTEXT = Context(prec=60)
USD_QUANTUM = Decimal("0.000001")
# How receipts store cost_usd. Every digit LiteLLM sends (a float's repr has at
# most 17 significant digits) fits; usage.py refuses a cost that would not, so
# the database never rounds a cost.
COST_MAX_DIGITS = 48
COST_DECIMAL_PLACES = 30


def fits_cost_column(cost_usd: Decimal) -> bool:
    """True when cost_usd is stored digit for digit (no rounding by the numeric column)."""
    if cost_usd.is_zero():
        return True
    cost_usd = cost_usd.normalize(_CONTEXT)
    exponent = cost_usd.as_tuple().exponent
    if not isinstance(exponent, int):
        return False
    integer_digits = max(cost_usd.adjusted() + 1, 1)
    return exponent >= -COST_DECIMAL_PLACES and integer_digits <= COST_MAX_DIGITS - COST_DECIMAL_PLACES


def credits_per_usd() -> Decimal:
    return Decimal(settings.CREDITS_PER_USD)


def billing_markup() -> Decimal:
    return Decimal(settings.BILLING_MARKUP)


@dataclass(frozen=True)
class ChargeRate:
    """The rate a charge is made at; stored on each receipt so a later rate change never rewrites history."""

    credits_per_usd: Decimal
    markup: Decimal

    def credits_for(self, cost_usd: Decimal) -> int:
        return charged_credits(cost_usd, credits_per_usd=self.credits_per_usd, markup=self.markup)


def current_charge_rate() -> ChargeRate:
    return ChargeRate(credits_per_usd=credits_per_usd(), markup=billing_markup())


def charged_credits(cost_usd: Decimal, *, credits_per_usd: Decimal, markup: Decimal) -> int:
    """ceil(cost_usd × credits_per_usd × markup): the one rounding of money; 0 stays 0, never rounds down."""
    if not isinstance(cost_usd, Decimal):
        raise TypeError(f"cost_usd must be Decimal, got {type(cost_usd).__name__}")
    if not cost_usd.is_finite() or cost_usd < 0:
        raise ValueError(f"cost_usd must be a finite, non-negative amount, got {cost_usd}")
    exact = _CONTEXT.multiply(_CONTEXT.multiply(cost_usd, credits_per_usd), markup)
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def purchased_credits(amount_usd: Decimal) -> int:
    """The credits `amount_usd` buys: amount × CREDITS_PER_USD, no markup, never more than was paid (floor)."""
    exact = _CONTEXT.multiply(amount_usd, credits_per_usd())
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


def credits_to_usd(amount_credits: int) -> Decimal:
    """USD value of credits at the configured rate (what a credit costs the customer)."""
    return _CONTEXT.divide(Decimal(amount_credits), credits_per_usd()).quantize(USD_QUANTUM)


def usd_text(amount: Decimal, *, rounding: str) -> str:
    """USD for people: "$0.00", "$0.0123" (at least cents, at most 6 decimals, trailing zeros dropped).

    `rounding` is decimal.ROUND_FLOOR for what someone has (never shown as more) and ROUND_CEILING for
    what something costs (never shown as less).
    """
    text = f"{amount.quantize(USD_QUANTUM, rounding=rounding):f}"
    whole, _, cents = text.partition(".")
    cents = cents.rstrip("0").ljust(2, "0")
    return f"-${whole.lstrip('-')}.{cents}" if amount < 0 else f"${whole}.{cents}"


# Credits columns (amounts, balances, charges) are PostgreSQL bigint: every
# amount is checked against this range before it reaches the database.
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1


def fits_bigint(value: int) -> bool:
    return BIGINT_MIN <= value <= BIGINT_MAX
