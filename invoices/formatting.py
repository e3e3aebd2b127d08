"""How money reads on the invoice surfaces. Formatting only: the amounts come from the ledger.

Credits are integers shown with thousands separators; USD is the Decimal from
accounts.money.credits_to_usd, shown with 2 to 6 decimals (a 14-credit call
is $0.000014, not $0.00) and never passed through a float.
"""

from decimal import Decimal

MINUS = "\u2212"  # a real minus sign, so negative balances read clearly


def format_credits(amount: int) -> str:
    text = f"{abs(int(amount)):,}"
    return f"{MINUS}{text}" if amount < 0 else text


def usd_plain(amount: Decimal) -> str:
    """Machine-readable USD (CSV): fixed-point, 6 decimals, no separators."""
    return f"{amount:.6f}"


def format_usd(amount: Decimal) -> str:
    if not isinstance(amount, Decimal):
        raise TypeError(f"USD amounts are Decimal, got {type(amount).__name__}")
    magnitude = abs(amount)
    text = f"{magnitude:,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    text = f"{whole}.{decimals.ljust(2, '0')}"
    return f"{MINUS}${text}" if amount < 0 else f"${text}"
