"""Reads of accounts and the ledger. Balances come from the ledger's own rows."""

from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from accounts.models import BillingAccount, PromotionalCredit


def accounts_for_user(*, user: AbstractBaseUser) -> QuerySet[BillingAccount]:
    if not user.is_authenticated:
        return BillingAccount.objects.none()
    return BillingAccount.objects.filter(owner=user).order_by("id")


def account_lookup(
    *, reference: object, owner: AbstractBaseUser | None = None, by_database_id: bool = False
) -> BillingAccount | None:
    """The one account lookup: by its public UUID (staff tools also by database id), or None.

    With `owner`, only that user's accounts: someone else's is None too, so pages answer 404 and
    never reveal that it exists. A malformed reference is None, never an error.
    """
    query = BillingAccount.objects.all() if owner is None else accounts_for_user(user=owner)
    text = str(reference).strip()
    if by_database_id and text.isascii() and text.isdigit():
        return query.filter(pk=int(text)).first() if len(text) <= 18 else None
    try:
        public_id = reference if isinstance(reference, UUID) else UUID(text)
    except ValueError:
        return None
    return query.filter(public_id=public_id).first()


def account_for_user(*, user: AbstractBaseUser, public_id: str | UUID | None = None) -> BillingAccount | None:
    """The user's account named by `public_id` (their first account when None), or None."""
    if public_id in (None, ""):
        return accounts_for_user(user=user).first()
    return account_lookup(reference=public_id, owner=user)


def account_for_user_or_404(*, user: AbstractBaseUser, public_id: str | UUID | None = None) -> BillingAccount:
    """account_for_user(), or Http404 (the same answer whether the account is someone else's or none)."""
    account = account_for_user(user=user, public_id=public_id)
    if account is None:
        raise Http404("no such billing account")
    return account


def open_promotions(*, account: BillingAccount) -> QuerySet[PromotionalCredit]:
    """The account's promotional grants with credit left, in the order usage burns them (none expired)."""
    return PromotionalCredit.objects.filter(account=account, expired_at=None, remaining_credits__gt=0).order_by(
        "priority", "expires_at", "id"
    )
