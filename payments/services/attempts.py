"""What every purchase shares: the amount rule, the status transitions, the expiry of unpaid attempts."""

from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction

from payments import metrics
from payments.exceptions import InvalidPurchase, InvalidTransition
from payments.models import ALLOWED_TRANSITIONS, AttemptStatus, PaymentAttempt, Provider
from payments.signals import payment_status_changed


def usd_amount(value: object, *, field: str) -> Decimal:
    """A USD amount as typed into a form: a finite number with at most 2 decimals (cents), else InvalidPurchase."""
    text = str(value if value is not None else "").strip()
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise InvalidPurchase(f"{field} must be a number of US dollars, got {text[:40]!r}", field=field) from exc
    if not amount.is_finite():
        raise InvalidPurchase(f"{field} must be a finite number", field=field)
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise InvalidPurchase(f"{field} has at most 2 decimals (cents)", field=field)
    return amount.quantize(Decimal("0.01"))


def purchase_amount(value: object) -> Decimal:
    """The USD amount of a purchase: usd_amount() within BILLING_PURCHASE_MIN_USD..BILLING_PURCHASE_MAX_USD."""
    amount = usd_amount(value, field="amount_usd")
    low, high = Decimal(settings.BILLING_PURCHASE_MIN_USD), Decimal(settings.BILLING_PURCHASE_MAX_USD)
    if not low <= amount <= high:
        raise InvalidPurchase(f"amount_usd must be between {low} and {high} USD", field="amount_usd")
    return amount


def transition(attempt: PaymentAttempt, status: str) -> bool:
    """Move `attempt` (locked by the caller) to `status` if ALLOWED_TRANSITIONS allows it; False if already there."""
    if attempt.status == status:
        return False
    if status not in ALLOWED_TRANSITIONS[attempt.status]:
        raise InvalidTransition(f"a payment attempt cannot go from {attempt.status} to {status}")
    attempt.status = status
    attempt.save(update_fields=["status", "updated_at"])
    payment_status_changed.send(sender=PaymentAttempt, attempt=attempt, status=status)
    provider, reached = attempt.provider, status
    transaction.on_commit(lambda: metrics.payment_attempts_total.labels(provider=provider, status=reached).inc())
    return True


@transaction.atomic
def expire_stale_attempts(*, now: datetime) -> int:
    """Attempts still created/pending after BILLING_PAYMENT_PENDING_TTL_SECONDS: expired (Stripe's own sessions
    expire after 24 h and say so; this clears an attempt whose expiry event never came)."""
    cutoff = now - timedelta(seconds=settings.BILLING_PAYMENT_PENDING_TTL_SECONDS)
    stale = PaymentAttempt.objects.select_for_update(skip_locked=True).filter(
        provider=Provider.STRIPE, status__in=(AttemptStatus.CREATED, AttemptStatus.PENDING), created_at__lt=cutoff
    )
    count = 0
    for attempt in stale:
        transition(attempt, AttemptStatus.EXPIRED)
        count += 1
    return count
