"""Reads of accounts and the ledger. Balances come from the ledger's own rows."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet, Sum

from accounts.models import BillingAccount, CreditLedgerEntry


def ledger_sum(*, account: BillingAccount) -> int:
    total = CreditLedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount_credits"))["s"]
    return int(total or 0)


def accounts_for_user(*, user: AbstractBaseUser) -> QuerySet[BillingAccount]:
    if not user.is_authenticated:
        return BillingAccount.objects.none()
    return BillingAccount.objects.filter(owner=user).order_by("id")


def ledger_entries(*, account: BillingAccount) -> QuerySet[CreditLedgerEntry]:
    return CreditLedgerEntry.objects.filter(account=account).order_by("id")
