"""Test-side reads of the books, each computed apart from the service's own figures it is compared with."""

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.db import connection

from accounts.models import BillingAccount
from accounts.money import current_charge_rate
from billing_project.exactjson import dumps_exact
from holds.selectors import credit_availability
from receipts.services import IngestResult, ingest_delivery


def ledger_total(*, account: BillingAccount) -> int:
    """The sum of the account's ledger entries, by raw SQL (what the balance must equal)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(amount_credits), 0) FROM accounts_creditledgerentry WHERE account_id = %s",
            [account.pk],
        )
        return int(cursor.fetchone()[0])


def charge_of(cost_usd: Decimal) -> int:
    """The credits a cost is charged at today's rate."""
    return current_charge_rate().credits_for(cost_usd)


def available_credits(*, account: BillingAccount) -> int:
    """balance (as last read into `account`) − open holds."""
    return credit_availability(account=account).available_credits


def ingest_records(*, records: Sequence[Any]) -> IngestResult:
    """Deliver records already in Python as one JSON array, as LiteLLM's callback would."""
    body = ("[" + ",".join(dumps_exact(record, for_jsonb=False) for record in records) + "]").encode()
    return ingest_delivery(body=body, content_type="application/json", remote_addr="", headers={})
