"""The open holds' total on the account row (issue 19): authorize reads it, O(1) in the calls in flight.

held_credits is moved only by the holds' trigger (accounts/migrations/sql/0006_held_total.sql), so it equals the
sum of the open holds (status held) after every transition: taken, replayed, settled, released, renewed,
expired by authorize or by the sweep, and under concurrent authorizes, releases, charges and sweeps on real
connections. The database refuses any other change; reconcile reports drift (held_drift).
"""

import random
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import BillingAccount
from accounts.services import grant_credits
from holds.models import CreditHold
from holds.services import authorize_call, expire_holds, release_hold, renew_hold
from reconciliation.services import reconcile
from reconciliation.window import Window
from tests.books import ingest_records
from tests.factories import ApiKeyBindingFactory, litellm_record
from tests.reconciliation.test_reconcile import trigger_disabled


def open_sum(account: BillingAccount) -> int:
    return int(CreditHold.objects.filter(account=account, status="held").aggregate(s=Sum("held_credits"))["s"] or 0)


def held_on_row(account: BillingAccount) -> int:
    return BillingAccount.objects.values_list("held_credits", flat=True).get(pk=account.pk)


def authorize(key_hash: str, call_id: str, usd: str = "0.001") -> bool:
    return authorize_call(litellm_call_id=call_id, estimated_cost_usd=Decimal(usd), key_hash=key_hash).allowed


def charge(key_hash: str, call_id: str, cost: str = "0.0005") -> None:
    record = litellm_record(call_id=call_id, cost=Decimal(cost), end_user="")
    record["metadata"]["user_api_key_hash"] = key_hash
    ingest_records(records=[record])


@pytest.mark.django_db
def test_every_transition_keeps_the_total_equal_to_the_open_holds() -> None:
    key = ApiKeyBindingFactory()
    account = key.account
    grant_credits(account=account, amount_credits=10_000, reason="grant", idempotency_key="fund")
    calls = [str(uuid.uuid4()) for _ in range(5)]
    for call in calls:
        assert authorize(key.key_hash, call)
    assert held_on_row(account) == 5_000 == open_sum(account)
    assert authorize(key.key_hash, calls[0])  # a replay holds nothing more
    charge(key.key_hash, calls[0])  # settled
    release_hold(litellm_call_id=calls[1])
    renew_hold(litellm_call_id=calls[2])
    assert held_on_row(account) == 3_000 == open_sum(account)
    # Past its expiry a hold stops counting at once: authorize takes it off before deciding.
    CreditHold.objects.filter(litellm_call_id=calls[3]).update(expires_at=timezone.now() - timedelta(seconds=1))
    decision = authorize_call(litellm_call_id="next", estimated_cost_usd=Decimal("0.001"), key_hash=key.key_hash)
    assert decision.allowed and decision.available_credits == 10_000 - 500 - 2_000 - 1_000
    assert CreditHold.objects.get(litellm_call_id=calls[3]).status == "expired"
    assert held_on_row(account) == 3_000 == open_sum(account)
    CreditHold.objects.filter(status="held").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_holds(now=timezone.now()) == 3
    assert held_on_row(account) == 0 == open_sum(account)


@pytest.mark.django_db
def test_the_database_refuses_any_other_change_of_the_total() -> None:
    key = ApiKeyBindingFactory()
    with pytest.raises(IntegrityError, match="changes only with its credit holds"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE accounts_billingaccount SET held_credits = 5 WHERE id = %s", [key.account_id])
    with pytest.raises(IntegrityError), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO accounts_billingaccount (public_id, name, balance_credits, held_credits, created_at) "
                "VALUES (gen_random_uuid(), 'x', 0, 7, now())"
            )


@pytest.mark.django_db
def test_reconcile_reports_a_drifted_total() -> None:
    key = ApiKeyBindingFactory()
    grant_credits(account=key.account, amount_credits=10_000, reason="grant", idempotency_key="fund")
    assert authorize(key.key_hash, "drift-1")
    with trigger_disabled("accounts_credithold", "credithold_held_total") as cursor:
        cursor.execute("UPDATE accounts_credithold SET held_credits = 400 WHERE litellm_call_id = 'drift-1'")
    now = timezone.now()
    report = reconcile(window=Window(since=now - timedelta(days=1), until=now), include_litellm=False)
    assert report.found["held_drift"] == 1
    assert report.items["held_drift"][0]["difference"] == 600


@pytest.mark.django_db(transaction=True)
def test_the_total_stays_exact_under_concurrent_authorizes_releases_charges_and_sweeps() -> None:
    key = ApiKeyBindingFactory()
    account = key.account
    grant_credits(account=account, amount_credits=50_000, reason="grant", idempotency_key="fund")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait(timeout=30)
            for _ in range(40):
                call = str(uuid.uuid4())
                if not authorize(key.key_hash, call):
                    continue
                roll = rng.random()
                if roll < 0.35:
                    # within the hold
                    charge(key.key_hash, call, cost=str(Decimal(rng.randint(1, 1000)) / 1_000_000))
                elif roll < 0.6:
                    release_hold(litellm_call_id=call)
                elif roll < 0.8:
                    CreditHold.objects.filter(litellm_call_id=call).update(expires_at=timezone.now())
                    expire_holds(now=timezone.now())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert held_on_row(account) == open_sum(account) > 0
    account.refresh_from_db()
    # Charges within their holds: what is reserved never exceeds what there is (HOLDS_NEVER_OVERSPEND).
    assert account.held_credits <= account.balance_credits
