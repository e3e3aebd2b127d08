"""Reads of the reconcile command's options."""

from accounts.models import BillingAccount
from accounts.selectors import account_lookup
from reconciliation.window import ReconcileInputError


def resolve_account(value: str) -> BillingAccount:
    """--account: the account's public UUID or its database id."""
    account = account_lookup(reference=value, by_database_id=True)
    if account is None:
        raise ReconcileInputError(f"no billing account {value.strip()!r} (give its public UUID or its database id)")
    return account
