"""Promotional credit: grants that expire, burnt by usage before paid credit.

The ledger trigger does the burning (sql/0010_promotional_credits.sql); these services fund a lot with its
`grant` entry, warn before it expires and take its unused remainder with one `expiry` entry.
"""

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts.models import (
    PROMOTION_PRIORITY_DEFAULT,
    PROMOTION_PRIORITY_MAX,
    PROMOTION_PRIORITY_MIN,
    BillingAccount,
    CreditLedgerEntry,
    PromotionalCredit,
)
from accounts.services.ledger import GrantResult, InvalidGrant, grant_credits, replayed_grant, validate_grant
from accounts.signals import promotional_credit_expired, promotional_credit_expiring

Reason = CreditLedgerEntry.Reason
EXPIRY_REASONS = frozenset({Reason.EXPIRY})
# credits.expiring goes out this long before a lot expires.
EXPIRING_NOTICE = timedelta(days=7)


class _AlreadyGranted(Exception):
    def __init__(self, result: GrantResult) -> None:
        self.result = result


def validate_promotion(*, amount_credits: int, expires_at: datetime, priority: int, now: datetime) -> None:
    """The one definition of a valid promotional grant (the credits API and the admin form map its InvalidGrant)."""
    validate_grant(amount_credits=amount_credits, reason=Reason.GRANT)
    if timezone.is_naive(expires_at):
        raise InvalidGrant("expires_at must carry a time zone", field="expires_at")
    if expires_at <= now:
        raise InvalidGrant(f"expires_at must be in the future, got {expires_at.isoformat()}", field="expires_at")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidGrant("priority must be an integer", field="priority")
    if not PROMOTION_PRIORITY_MIN <= priority <= PROMOTION_PRIORITY_MAX:
        raise InvalidGrant(
            f"priority must be between {PROMOTION_PRIORITY_MIN} (used first) and {PROMOTION_PRIORITY_MAX}",
            field="priority",
        )


@transaction.atomic
def grant_promotional_credits(
    *,
    account: BillingAccount,
    amount_credits: int,
    expires_at: datetime,
    priority: int = PROMOTION_PRIORITY_DEFAULT,
    idempotency_key: str | None = None,
    memo: str = "",
    created_by: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> GrantResult:
    """A promotional lot and the `grant` entry that funds it, in one transaction; idempotent by key."""
    now = now or timezone.now()
    validate_promotion(amount_credits=amount_credits, expires_at=expires_at, priority=priority, now=now)
    key = idempotency_key or None
    if key is not None:
        existing = CreditLedgerEntry.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return replayed_grant(existing, account=account, amount_credits=amount_credits, reason=Reason.GRANT)
    try:
        # A concurrent grant with the same key wins the unique index: this lot goes with the savepoint.
        with transaction.atomic():
            lot = PromotionalCredit.objects.create(
                account=account,
                granted_credits=amount_credits,
                priority=priority,
                expires_at=expires_at,
                memo=memo,
                created_by=created_by if created_by and created_by.is_authenticated else None,
                created_at=now,
            )
            result = grant_credits(
                account=account,
                amount_credits=amount_credits,
                reason=Reason.GRANT,
                idempotency_key=key,
                memo=memo or f"promotional credit until {expires_at:%Y-%m-%d %H:%M} UTC",
                created_by=created_by,
                promotional_credit=lot,
                now=now,
            )
            if not result.created:
                raise _AlreadyGranted(result)
    except _AlreadyGranted as replay:
        return replay.result
    return result


def notify_expiring_promotions(*, now: datetime | None = None) -> int:
    """Send promotional_credit_expiring once for each unused lot expiring within EXPIRING_NOTICE."""
    now = now or timezone.now()
    due = PromotionalCredit.objects.filter(
        expired_at=None,
        remaining_credits__gt=0,
        expires_at__gt=now,
        expires_at__lte=now + EXPIRING_NOTICE,
        expiring_notice_at=None,
    ).values_list("pk", flat=True)
    sent = 0
    for pk in list(due[:1000]):
        with transaction.atomic():
            lot = PromotionalCredit.objects.select_for_update().get(pk=pk)
            if lot.expiring_notice_at is not None or lot.remaining_credits == 0:
                continue
            PromotionalCredit.objects.filter(pk=pk).update(expiring_notice_at=now)
            promotional_credit_expiring.send(sender=PromotionalCredit, promotional_credit=lot, now=now)
            sent += 1
    return sent


def expire_promotional_credits(*, now: datetime | None = None) -> int:
    """Take the unused remainder of every lot past its expiry with one `expiry` entry; returns how many expired.

    Twice is the same as once: the entry's idempotency key and the trigger (one expiry per lot, exactly the
    remainder) see to it, and the account's row lock orders it against usage burning the same lot.
    """
    now = now or timezone.now()
    due = PromotionalCredit.objects.filter(expired_at=None, remaining_credits__gt=0, expires_at__lte=now).values_list(
        "pk", "account_id"
    )
    expired = 0
    for pk, account_id in list(due.order_by("expires_at", "pk")[:1000]):
        with transaction.atomic():
            account = BillingAccount.objects.select_for_update().get(pk=account_id)
            lot = PromotionalCredit.objects.get(pk=pk)
            if lot.remaining_credits == 0:
                continue
            result = grant_credits(
                account=account,
                amount_credits=-lot.remaining_credits,
                reason=Reason.EXPIRY,
                reasons=EXPIRY_REASONS,
                idempotency_key=f"promotional-expiry:{lot.pk}",
                memo=f"unused promotional credit of {lot.created_at:%Y-%m-%d} expired",
                promotional_credit=lot,
                now=now,
            )
            if result.created:
                expired += 1
                promotional_credit_expired.send(sender=PromotionalCredit, promotional_credit=lot, entry=result.entry)
    return expired
