"""The outbox: events recorded in the transaction that caused them (the ledger's own are written by its trigger)."""

from datetime import datetime
from typing import Any

from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry
from notifications.models import BillingEvent, EventType


def record_billing_event(
    *,
    account: BillingAccount,
    type: EventType | str,
    data: dict[str, Any],
    ledger_entry: CreditLedgerEntry | None = None,
    now: datetime | None = None,
) -> BillingEvent:
    """Append an event to the outbox; it is dispatched after this transaction commits."""
    return BillingEvent.objects.create(
        account=account,
        type=EventType(type),
        data={"account": str(account.public_id), **data},
        ledger_entry=ledger_entry,
        created_at=now or timezone.now(),
    )
