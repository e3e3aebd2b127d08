"""How notifications reacts to other apps (connected in NotificationsConfig.ready): each event goes to the
outbox in the transaction that caused it."""

from datetime import datetime
from typing import Any

from django.dispatch import receiver

from accounts.models import CreditLedgerEntry, PromotionalCredit
from accounts.signals import promotional_credit_expired, promotional_credit_expiring
from notifications.models import EventType
from notifications.services import record_billing_event
from payments.models import AttemptStatus, PaymentAttempt
from payments.signals import payment_status_changed

PAYMENT_EVENTS = {
    AttemptStatus.SUCCEEDED: EventType.PAYMENT_SUCCEEDED,
    AttemptStatus.FAILED: EventType.PAYMENT_FAILED,
    AttemptStatus.PARTIALLY_REFUNDED: EventType.PAYMENT_REFUNDED,
    AttemptStatus.REFUNDED: EventType.PAYMENT_REFUNDED,
}


def _promotion_data(lot: PromotionalCredit) -> dict[str, Any]:
    return {
        "promotional_grant": lot.pk,
        "granted_credits": lot.granted_credits,
        "remaining_credits": lot.remaining_credits,
        "expires_at": lot.expires_at.isoformat(),
    }


@receiver(payment_status_changed, dispatch_uid="notifications.payment_event")
def payment_event(sender: Any, *, attempt: PaymentAttempt, status: str, **kwargs: Any) -> None:
    event_type = PAYMENT_EVENTS.get(status)
    if event_type is None:
        return
    record_billing_event(
        account=attempt.account,
        type=event_type,
        data={
            "payment": str(attempt.public_id),
            "provider": attempt.provider,
            "status": status,
            "amount_usd": str(attempt.amount_usd),
            "credits": attempt.credits,
        },
    )


@receiver(promotional_credit_expiring, dispatch_uid="notifications.credits_expiring")
def credits_expiring(sender: Any, *, promotional_credit: PromotionalCredit, now: datetime, **kwargs: Any) -> None:
    record_billing_event(
        account=promotional_credit.account,
        type=EventType.CREDITS_EXPIRING,
        data=_promotion_data(promotional_credit),
        now=now,
    )


@receiver(promotional_credit_expired, dispatch_uid="notifications.credits_expired")
def credits_expired(
    sender: Any, *, promotional_credit: PromotionalCredit, entry: CreditLedgerEntry, **kwargs: Any
) -> None:
    record_billing_event(
        account=promotional_credit.account,
        type=EventType.CREDITS_EXPIRED,
        data={**_promotion_data(promotional_credit), "expired_credits": -entry.amount_credits},
        ledger_entry=entry,
        now=entry.created_at,
    )
