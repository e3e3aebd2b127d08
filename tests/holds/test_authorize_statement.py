"""A new call's authorization is one SQL statement, billing_authorize_hold() (holds migration 0002, issue 19).

The function locks the account row, expires its overdue holds, decides against balance − held_credits and
inserts the hold; outside a transaction that statement is its own transaction (no BEGIN or COMMIT of ours).
It leaves no session state behind (PgBouncer's transaction pooling), and called with raw SQL it keeps the
money rule: what does not fit is refused and nothing is held.
"""

import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import BillingAccount
from accounts.services import grant_credits
from holds.models import CreditHold
from holds.services import authorize_call
from tests.factories import ApiKeyBindingFactory


def fund(account: BillingAccount, credits: int) -> None:
    grant_credits(account=account, amount_credits=credits, reason="grant", idempotency_key=f"fund-{uuid.uuid4()}")


def decide(account_id: int, call_id: str, required: int, *, now: datetime | None = None) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT outcome, available, hold_pk FROM billing_authorize_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [account_id, call_id, required, Decimal("0.001"), "m", "key", now or timezone.now(), 600, None],
        )
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
def test_a_new_calls_decision_is_one_statement_outside_a_transaction() -> None:
    key = ApiKeyBindingFactory()
    fund(key.account, 10_000)
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        decision = authorize_call(
            litellm_call_id="one-statement", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash
        )
    assert decision.allowed and decision.hold is not None
    statements = [q["sql"] for q in queries.captured_queries]
    # The payer's binding, then the decision: no BEGIN, no COMMIT, no separate lock or INSERT.
    assert len(statements) == 2, statements
    assert "billing_authorize_hold" in statements[1]
    hold = CreditHold.objects.get(litellm_call_id="one-statement")
    assert (hold.pk, hold.hold_id, hold.expires_at) == (
        decision.hold.pk,
        decision.hold.hold_id,
        decision.hold.expires_at,
    )
    assert BillingAccount.objects.get(pk=key.account_id).held_credits == 1_000 == decision.hold.held_credits


@pytest.mark.django_db
def test_the_deadline_leaves_no_lock_timeout_behind() -> None:
    key = ApiKeyBindingFactory()
    fund(key.account, 10_000)
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        before = cursor.fetchone()[0]
    with transaction.atomic():
        decision = authorize_call(
            litellm_call_id="with-deadline",
            estimated_cost_usd=Decimal("0.001"),
            key_hash=key.key_hash,
            deadline=time.monotonic() + 5,
        )
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            # The bound applied to the wait for the row lock only: the rest of the transaction is as it was.
            assert cursor.fetchone()[0] == before
    assert decision.allowed


@pytest.mark.django_db
def test_raw_sql_cannot_hold_more_than_is_available() -> None:
    key = ApiKeyBindingFactory()
    fund(key.account, 1_500)
    assert decide(key.account_id, "fits", 1_000)[:2] == ("held", 500)
    assert decide(key.account_id, "does-not-fit", 501)[:2] == ("refused", 500)
    assert decide(key.account_id, "fits", 1_000)[0] == "exists"  # the same call id holds once
    assert not CreditHold.objects.filter(litellm_call_id="does-not-fit").exists()
    assert BillingAccount.objects.get(pk=key.account_id).held_credits == 1_000


@pytest.mark.django_db
def test_overdue_holds_stop_counting_before_the_decision() -> None:
    key = ApiKeyBindingFactory()
    fund(key.account, 1_000)
    assert decide(key.account_id, "old", 1_000)[0] == "held"
    CreditHold.objects.filter(litellm_call_id="old").update(expires_at=timezone.now() - timedelta(seconds=1))
    outcome, available, _ = decide(key.account_id, "new", 1_000)
    assert (outcome, available) == ("held", 0)
    assert CreditHold.objects.get(litellm_call_id="old").status == CreditHold.Status.EXPIRED
    assert BillingAccount.objects.get(pk=key.account_id).held_credits == 1_000
