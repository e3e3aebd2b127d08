"""Reads of credit holds: what is reserved, and what is left to spend (available = balance − open holds)."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet, Sum
from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry
from holds.models import CreditHold


def open_holds(*, account: BillingAccount | None = None, now: datetime | None = None) -> QuerySet[CreditHold]:
    """Holds that still reserve credits: status held and not past their expiry (the sweep may not have run yet)."""
    holds = CreditHold.objects.reserving(now=now or timezone.now())
    if account is not None:
        holds = holds.filter(account=account)
    return holds.order_by("expires_at", "id")


def held_credits(*, account: BillingAccount, now: datetime | None = None) -> int:
    total = open_holds(account=account, now=now).aggregate(s=Sum("held_credits"))["s"]
    return int(total or 0)


@dataclass(frozen=True)
class Availability:
    balance_credits: int
    held_credits: int

    @property
    def available_credits(self) -> int:
        return self.balance_credits - self.held_credits


def credit_availability(*, account: BillingAccount, now: datetime | None = None) -> Availability:
    """Balance (as last read into `account`), held and available, for display.

    Authorization re-reads both under the account's row lock (holds.services).
    """
    return Availability(balance_credits=account.balance_credits, held_credits=held_credits(account=account, now=now))


def unpriced_hold_estimates(*, litellm_call_ids: Iterable[str]) -> dict[str, Decimal]:
    """The estimate each call was held at, for calls whose record came without a cost and whose hold has
    no receipt yet (held, or expired while the call ran): what BILLING_UNPRICED_CALLS=charge_hold charges."""
    ids = sorted(set(litellm_call_ids))
    if not ids:
        return {}
    holds = CreditHold.objects.filter(
        litellm_call_id__in=ids,
        status__in=[CreditHold.Status.HELD, CreditHold.Status.EXPIRED],
        receipt__isnull=True,
    )
    return dict(holds.values_list("litellm_call_id", "estimated_cost_usd"))


def recent_completion_tokens(*, account_id: int, key_hash: str, model_group: str, limit: int) -> list[int]:
    """Completion tokens of the account's latest `limit` charges by this key and model group (newest first):
    what a call without max_tokens is likely to use (README, "A hold that fits the call")."""
    entries = CreditLedgerEntry.objects.filter(
        account_id=account_id,
        reason=CreditLedgerEntry.Reason.USAGE,
        receipt__api_key_hash=key_hash,
        receipt__model_group=model_group,
    )
    return list(entries.order_by("-created_at").values_list("receipt__completion_tokens", flat=True)[:limit])
