"""Writes to billing accounts and the credit ledger.

The balance moves only inside the database trigger that appends a ledger
entry (migration 0003), so no Python path can move one without the other.
Usage debits are appended by receipts.services.commit_usage_fact(), the one
writer of charges; everything else (top-ups, grants, refunds, adjustments)
comes through grant_credits().
"""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from accounts.exceptions import FieldError, IdempotencyConflict, InvalidLedgerOperation
from accounts.models import DEBIT_ONLY_REASONS, BillingAccount, CreditLedgerEntry, PromotionalCredit
from accounts.money import BIGINT_MAX, BIGINT_MIN, fits_bigint

Reason = CreditLedgerEntry.Reason
# What staff and the credits API may append; payments append only their own reasons (payments.services).
GRANT_REASONS = frozenset({Reason.TOP_UP, Reason.GRANT, Reason.REFUND, Reason.ADJUSTMENT})
PAYMENT_REASONS = frozenset(
    {Reason.PURCHASE, Reason.ONCHAIN_DEPOSIT, Reason.PURCHASE_REFUND, Reason.DISPUTE, Reason.DISPUTE_REVERSAL}
)
NUMERIC_VALUE_OUT_OF_RANGE = "22003"  # PostgreSQL's SQLSTATE


@dataclass(frozen=True)
class GrantResult:
    entry: CreditLedgerEntry
    created: bool


class InvalidGrant(FieldError, InvalidLedgerOperation):
    """A grant the ledger refuses; `field` names the input at fault (API and admin form show it there)."""


def validate_grant(*, amount_credits: int, reason: str, reasons: frozenset[str] = GRANT_REASONS) -> None:
    """The one definition of a valid grant (the credits API and the admin form map its InvalidGrant).

    The signs are the ledger's CHECKs (accounts.models): credit-only reasons add, debit-only reasons take,
    an adjustment is anything but 0.
    """
    if reason not in reasons:
        raise InvalidGrant(f"reason must be one of {sorted(reasons)}, got {reason!r}", field="reason")
    if not isinstance(amount_credits, int) or isinstance(amount_credits, bool):
        raise InvalidGrant("amount_credits must be an integer", field="amount_credits")
    if not fits_bigint(amount_credits):
        raise InvalidGrant(f"amount_credits must be between {BIGINT_MIN} and {BIGINT_MAX}", field="amount_credits")
    if reason == Reason.ADJUSTMENT:
        if amount_credits == 0:
            raise InvalidGrant("an adjustment must not be 0", field="amount_credits")
    elif reason in DEBIT_ONLY_REASONS:
        if amount_credits >= 0:
            raise InvalidGrant(f"amount_credits must be negative for {reason}", field="amount_credits")
    elif amount_credits <= 0:
        raise InvalidGrant(f"amount_credits must be positive for {reason}", field="amount_credits")


def _same_grant(
    entry: CreditLedgerEntry,
    *,
    account: BillingAccount,
    amount_credits: int,
    reason: str,
    promotional_credit: PromotionalCredit | None = None,
) -> bool:
    return (
        entry.account_id == account.pk
        and entry.amount_credits == amount_credits
        and entry.reason == reason
        and (promotional_credit is None or entry.promotional_credit_id == promotional_credit.pk)
    )


@transaction.atomic
def grant_credits(
    *,
    account: BillingAccount,
    amount_credits: int,
    reason: str,
    idempotency_key: str | None = None,
    memo: str = "",
    created_by: AbstractBaseUser | None = None,
    reasons: frozenset[str] = GRANT_REASONS,
    promotional_credit: PromotionalCredit | None = None,
    now: datetime | None = None,
) -> GrantResult:
    """Append a top-up, grant, refund or adjustment. Idempotent by `idempotency_key`.

    A replay of the same key with the same account, amount and reason returns
    the original entry (created=False); the same key with other content raises
    IdempotencyConflict. Two concurrent calls with one key grant once: the
    second waits on the unique index and then finds the first. `promotional_credit`:
    the promotional grant this entry funds or expires (accounts.services.promotions).
    """
    validate_grant(amount_credits=amount_credits, reason=reason, reasons=reasons)
    key = idempotency_key or None
    if key is not None:
        existing = CreditLedgerEntry.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return replayed_grant(existing, account=account, amount_credits=amount_credits, reason=reason)
    try:
        with transaction.atomic():
            entry = CreditLedgerEntry.objects.create(
                account=account,
                amount_credits=amount_credits,
                reason=reason,
                idempotency_key=key,
                promotional_credit=promotional_credit,
                memo=memo,
                created_by=created_by if created_by and created_by.is_authenticated else None,
                created_at=now or timezone.now(),
            )
    except DataError as exc:
        # The ledger trigger adds the amount to the bigint balance: past its range PostgreSQL refuses.
        if getattr(exc.__cause__, "sqlstate", None) == NUMERIC_VALUE_OUT_OF_RANGE:
            raise InvalidGrant(
                f"amount_credits of {amount_credits} would take the balance of account {account.pk} "
                f"past the range of {BIGINT_MIN}..{BIGINT_MAX} credits",
                field="amount_credits",
            ) from exc
        raise
    except IntegrityError:
        if key is None:
            raise
        existing = CreditLedgerEntry.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        return replayed_grant(existing, account=account, amount_credits=amount_credits, reason=reason)
    return GrantResult(entry=entry, created=True)


def replayed_grant(
    existing: CreditLedgerEntry, *, account: BillingAccount, amount_credits: int, reason: str
) -> GrantResult:
    if not _same_grant(existing, account=account, amount_credits=amount_credits, reason=reason):
        raise IdempotencyConflict(
            f"idempotency_key {existing.idempotency_key!r} was already used for "
            f"{existing.reason} of {existing.amount_credits} credits on another request"
        )
    return GrantResult(entry=existing, created=False)


@transaction.atomic
def billing_account_create(*, name: str, owner: AbstractBaseUser | None = None) -> BillingAccount:
    return BillingAccount.objects.create(name=name, owner=owner)
