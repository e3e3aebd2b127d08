from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.money import credits_to_usd
from tests.books import charge_of

costs = st.decimals(min_value=Decimal(0), max_value=Decimal(1000), allow_nan=False, allow_infinity=False, places=18)
rates = st.integers(min_value=1, max_value=10**9)
markups = st.decimals(min_value=Decimal("0.5"), max_value=Decimal(5), places=4, allow_nan=False, allow_infinity=False)


def test_sample_cost_at_default_settings_rounds_up() -> None:
    # 1.35e-05 USD x 1,000,000 credits/USD = 13.5 credits: charged 14, never 13.
    assert charge_of(Decimal("1.35e-05")) == 14


def test_zero_cost_is_zero_credits() -> None:
    assert charge_of(Decimal("0.0")) == 0
    assert charge_of(Decimal(0)) == 0


def test_exact_amounts_are_not_rounded_up() -> None:
    assert charge_of(Decimal("0.000004")) == 4
    assert charge_of(Decimal("2")) == 2_000_000


def test_smallest_positive_cost_charges_one_credit() -> None:
    assert charge_of(Decimal("1e-30")) == 1


@pytest.mark.parametrize("bad", [Decimal("-0.01"), Decimal("NaN"), Decimal("Infinity")])
def test_rejects_negative_and_non_finite(bad: Decimal) -> None:
    with pytest.raises(ValueError):
        charge_of(bad)


def test_rejects_float() -> None:
    with pytest.raises(TypeError):
        charge_of(1.35e-05)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(cost=costs, rate=rates, markup=markups)
def test_never_undercharges_and_never_overcharges_by_a_credit(cost: Decimal, rate: int, markup: Decimal) -> None:
    from django.test import override_settings

    with override_settings(CREDITS_PER_USD=str(rate), BILLING_MARKUP=str(markup)):
        charged = charge_of(cost)
    exact = cost * rate * markup  # Decimal arithmetic at 28+ digits; the inputs are small
    assert isinstance(charged, int)
    assert charged >= exact
    assert charged - exact < 1


def test_markup_applies_once(settings) -> None:
    settings.BILLING_MARKUP = "1.25"
    assert charge_of(Decimal("0.000010")) == 13  # 12.5 -> 13


def test_credits_to_usd_uses_the_same_rate(settings) -> None:
    settings.CREDITS_PER_USD = "1000000"
    assert credits_to_usd(14) == Decimal("0.000014")
    assert credits_to_usd(-2_500_000) == Decimal("-2.500000")
