"""HOLDS_NEVER_OVERSPEND under real concurrency: 50 authorizations at once for one account.

Each thread has its own PostgreSQL connection (Django opens one per thread) and they all start
together at a barrier; the balance covers exactly 5 worst-case estimates.
"""

import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from accounts.services import grant_credits
from holds.models import CreditHold
from holds.services import authorize_call
from tests.books import charge_of
from tests.factories import ApiKeyBindingFactory

CALLS = 50
FITS = 5
ESTIMATE = Decimal("0.0012345")


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_authorizations_never_hold_more_than_the_balance() -> None:
    binding = ApiKeyBindingFactory()
    per_call = charge_of(ESTIMATE)
    grant_credits(account=binding.account, amount_credits=FITS * per_call, reason="grant", idempotency_key="five")

    barrier = threading.Barrier(CALLS)
    results: list[tuple[bool, str, int | None]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    backends: set[int] = set()

    def worker() -> None:
        try:
            with connection.cursor() as cursor:  # its own connection, opened before the start line
                cursor.execute("SELECT pg_backend_pid()")
                pid = cursor.fetchone()[0]
            barrier.wait(timeout=60)
            decision = authorize_call(
                litellm_call_id=str(uuid.uuid4()), estimated_cost_usd=ESTIMATE, key_hash=binding.key_hash
            )
            with lock:
                backends.add(pid)
                results.append((decision.allowed, decision.reason, decision.available_credits))
        except Exception as exc:  # noqa: BLE001 - reported below, never swallowed
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors

    assert len(backends) == CALLS  # 50 separate database sessions
    allowed = [r for r in results if r[0]]
    refused = [r for r in results if not r[0]]
    assert len(allowed) == FITS
    assert len(refused) == CALLS - FITS
    assert {r[1] for r in refused} == {"insufficient_credits"}
    assert {r[2] for r in refused} == {0}  # every refusal saw the holds of all five
    binding.account.refresh_from_db()
    held = CreditHold.objects.filter(account=binding.account, status="held").aggregate(s=Sum("held_credits"))["s"]
    assert CreditHold.objects.count() == FITS
    assert held == FITS * per_call == binding.account.balance_credits


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("room_for", [1, 100])
def test_one_call_authorized_twenty_times_at_once_holds_once(room_for: int) -> None:
    """A retry racing its original (the plugin's timeout, a proxy retry) gets the original's hold, never a second."""
    binding = ApiKeyBindingFactory()
    per_call = charge_of(ESTIMATE)
    grant_credits(account=binding.account, amount_credits=room_for * per_call, reason="grant", idempotency_key="room")
    call_id = str(uuid.uuid4())
    racers = 20
    barrier = threading.Barrier(racers)
    holds: list[int | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait(timeout=60)
            decision = authorize_call(litellm_call_id=call_id, estimated_cost_usd=ESTIMATE, key_hash=binding.key_hash)
            with lock:
                holds.append(decision.hold.pk if decision.allowed and decision.hold else None)
        except Exception as exc:  # noqa: BLE001 - reported below, never swallowed
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    (hold,) = CreditHold.objects.filter(litellm_call_id=call_id)
    assert holds == [hold.pk] * racers  # every caller was allowed, all with the one hold
    assert hold.held_credits == per_call
