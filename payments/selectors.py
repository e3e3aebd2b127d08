"""Reads of purchases."""

from datetime import datetime
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.selectors import accounts_for_user
from payments.models import AttemptStatus, PaymentAttempt

HISTORY_LENGTH = 20


def oldest_pending_attempt_age(*, now: datetime) -> float:
    """Seconds since the oldest attempt still waiting (created or pending) was opened; 0 when none waits."""
    oldest = (
        PaymentAttempt.objects.filter(status__in=(AttemptStatus.CREATED, AttemptStatus.PENDING))
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def purchase_history(*, account: BillingAccount) -> QuerySet[PaymentAttempt]:
    return PaymentAttempt.objects.filter(account=account).order_by("-created_at", "-id")[:HISTORY_LENGTH]


def attempt_for_owner(*, user: AbstractBaseUser, public_id: str) -> PaymentAttempt | None:
    """The attempt if it belongs to one of the user's accounts (None for anyone else's, or a malformed id)."""
    try:
        wanted = UUID(str(public_id))
    except ValueError:
        return None
    return PaymentAttempt.objects.filter(public_id=wanted, account__in=accounts_for_user(user=user)).first()


def ledger_entries_of_attempt(*, attempt: PaymentAttempt) -> QuerySet[CreditLedgerEntry]:
    """Every ledger entry a payment made (their idempotency keys are derived from its provider reference)."""
    if not attempt.provider_reference:
        return CreditLedgerEntry.objects.none()
    prefix = f"{attempt.provider}:{attempt.provider_reference}:"
    return CreditLedgerEntry.objects.filter(account=attempt.account, idempotency_key__startswith=prefix).order_by("id")
