"""Reads of the reconcile command's options."""

from django.db import DatabaseError

from accounts.models import BillingAccount
from reconciliation.window import ReconcileInputError


def resolve_account(value: str) -> BillingAccount:
    """--account: the account's public UUID or its database id."""
    value = value.strip()
    query = BillingAccount.objects.all()
    try:
        account = query.filter(pk=int(value)).first() if value.isdigit() else query.filter(public_id=value).first()
    except (ValueError, DatabaseError) as exc:
        raise ReconcileInputError(f"--account {value!r} is neither an account id nor a public UUID") from exc
    if account is None:
        raise ReconcileInputError(f"no billing account {value!r}")
    return account
