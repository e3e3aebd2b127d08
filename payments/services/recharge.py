"""Auto-recharge: an owner's standing order to buy credits with a saved card when available credit runs low.

The card is saved at a Checkout (its "save this card" box: setup_future_usage=off_session). The sweep (Celery
beat, or manage.py billing_worker) charges it off-session when available credit (balance − open holds) is
below the threshold; the database refuses a second recharge of an account while one is in flight (a partial
unique index). A declined card disables the order and the owner is told by e-mail; an unreachable Stripe only
fails that attempt (the next sweep tries again).
"""

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import IntegrityError, transaction

from accounts.models import BillingAccount
from accounts.money import credits_per_usd, purchased_credits
from integrations.stripe.client import CardDeclined, SavedCard, StripeUnavailable, charge_saved_card, usd_cents
from payments.exceptions import InvalidPurchase
from payments.models import AttemptStatus, AutoRecharge, PaymentAttempt, Provider
from payments.services.attempts import purchase_amount, transition, usd_amount
from payments.services.stripe import credit_paid_attempt


def _threshold(value: object) -> Decimal:
    amount = usd_amount(value, field="below_usd")
    if amount < 0:
        raise InvalidPurchase("below_usd must be 0 or more", field="below_usd")
    return amount


@transaction.atomic
def auto_recharge_set(*, account: BillingAccount, below_usd: object, amount_usd: object) -> AutoRecharge:
    """Turn auto-recharge on (or change it): when available credit falls below `below_usd`, buy `amount_usd`."""
    below, amount = _threshold(below_usd), purchase_amount(amount_usd)
    order, _ = AutoRecharge.objects.select_for_update().get_or_create(
        account=account, defaults={"below_usd": below, "amount_usd": amount}
    )
    order.below_usd, order.amount_usd, order.enabled, order.disabled_reason = below, amount, True, ""
    order.save()
    return order


@transaction.atomic
def auto_recharge_disable(*, account: BillingAccount, reason: str = "turned off by the owner") -> None:
    AutoRecharge.objects.filter(account=account).update(enabled=False, disabled_reason=reason[:2000])


def run_auto_recharges() -> dict[str, int]:
    """The sweep: charge every enabled order with a saved card whose account is below its threshold."""
    counts = {"charged": 0, "declined": 0, "failed": 0}
    orders = AutoRecharge.objects.filter(enabled=True).exclude(stripe_payment_method="").select_related("account")
    for order in orders:
        account = order.account  # balance and held total as of this sweep's one query
        if account.balance_credits - account.held_credits >= purchased_credits(order.below_usd):
            continue
        result = _recharge(order=order, account=account)
        if result:
            counts[result] += 1
    return counts


def _recharge(*, order: AutoRecharge, account: BillingAccount) -> str:
    try:
        with transaction.atomic():
            attempt = PaymentAttempt.objects.create(
                account=account,
                provider=Provider.STRIPE,
                kind=PaymentAttempt.Kind.AUTO_RECHARGE,
                amount_usd=order.amount_usd,
                credits=purchased_credits(order.amount_usd),
                credits_per_usd=credits_per_usd(),
            )
    except IntegrityError:
        return ""  # one is in flight already (payment_one_auto_recharge_in_flight)
    reference = str(attempt.public_id)
    card = SavedCard(customer=order.stripe_customer, payment_method=order.stripe_payment_method)
    try:
        intent = charge_saved_card(
            card=card,
            amount_cents=usd_cents(order.amount_usd),
            reference=reference,
            idempotency_key=f"recharge-{reference}",
        )
    except CardDeclined as exc:
        _failed(attempt, f"card declined: {exc}")
        auto_recharge_disable(account=account, reason=f"the saved card was declined: {exc}")
        _tell_owner(account=account, problem=str(exc))
        return "declined"
    except StripeUnavailable as exc:
        _failed(attempt, str(exc))
        return "failed"
    with transaction.atomic():
        locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
        locked.provider_reference = intent
        locked.save(update_fields=["provider_reference", "updated_at"])
        transition(locked, AttemptStatus.PENDING)
        credit_paid_attempt(attempt=locked, amount_cents=locked.amount_cents, currency="usd", payment_intent=intent)
    return "charged"


def _failed(attempt: PaymentAttempt, reason: str) -> None:
    with transaction.atomic():
        locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
        locked.failure_reason = reason[:2000]
        locked.save(update_fields=["failure_reason", "updated_at"])
        transition(locked, AttemptStatus.FAILED)


def _tell_owner(*, account: BillingAccount, problem: str) -> None:
    owner: AbstractBaseUser | None = account.owner
    email = getattr(owner, "email", "")
    if not email:
        return
    transaction.on_commit(
        lambda: send_mail(
            subject=f"Auto-recharge of {account.name} is off: the card was declined",
            message=(
                f"Your saved card was declined ({problem}), so auto-recharge of {account.name} is now off.\n"
                "Buy credits with another card and turn auto-recharge on again from the credits page."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[email],
            fail_silently=True,
        )
    )
