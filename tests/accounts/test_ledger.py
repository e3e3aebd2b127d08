"""The credit ledger: balance = Σ ledger, balance_after chain, append-only, idempotent grants."""

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, connections, transaction

from accounts.exceptions import IdempotencyConflict, InvalidLedgerOperation
from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from integrations.litellm.records import parse_usage_record
from receipts.facts import UsageFact
from receipts.models import ChargeReceipt
from receipts.services import commit_usage_fact
from tests.books import ledger_total
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record


def _fact(end_user: str, cost: str) -> UsageFact:
    fact = parse_usage_record(litellm_record(end_user=end_user, cost=Decimal(cost)))
    assert isinstance(fact, UsageFact)
    return fact


def assert_books_balance(account: BillingAccount) -> list[CreditLedgerEntry]:
    """Balance equals the ledger sum and balance_after forms one unbroken chain in id order."""
    account.refresh_from_db()
    entries = list(CreditLedgerEntry.objects.filter(account=account).order_by("id"))
    running = 0
    for entry in entries:
        running += entry.amount_credits
        assert entry.balance_after == running, f"chain broken at entry {entry.pk}"
    assert account.balance_credits == running == ledger_total(account=account)
    return entries


@pytest.mark.django_db
def test_grants_refunds_adjustments_and_debits_keep_balance_equal_to_ledger() -> None:
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="u1")
    grant_credits(account=account, amount_credits=100, reason="top_up")
    grant_credits(account=account, amount_credits=50, reason="grant")
    commit_usage_fact(fact=_fact("u1", "0.000120"))  # 120 credits
    grant_credits(account=account, amount_credits=20, reason="refund")
    grant_credits(account=account, amount_credits=-7, reason="adjustment")
    commit_usage_fact(fact=_fact("u1", "0.0001001"))  # 100.1 -> 101 credits: below zero is allowed
    entries = assert_books_balance(account)
    assert [e.amount_credits for e in entries] == [100, 50, -120, 20, -7, -101]
    assert account.balance_credits == -58


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "reason"),
    [(0, "top_up"), (-5, "grant"), (-1, "refund"), (0, "adjustment"), (10, "usage"), (10, "bonus")],
)
def test_invalid_grants_are_refused(amount: int, reason: str) -> None:
    account = BillingAccountFactory()
    with pytest.raises(InvalidLedgerOperation):
        grant_credits(account=account, amount_credits=amount, reason=reason)
    assert not CreditLedgerEntry.objects.exists()


@pytest.mark.django_db
def test_idempotency_key_replay_returns_original_and_conflict_raises() -> None:
    account = BillingAccountFactory()
    first = grant_credits(account=account, amount_credits=500, reason="top_up", idempotency_key="pay-1")
    again = grant_credits(account=account, amount_credits=500, reason="top_up", idempotency_key="pay-1")
    assert first.created and not again.created
    assert again.entry.pk == first.entry.pk
    with pytest.raises(IdempotencyConflict):
        grant_credits(account=account, amount_credits=501, reason="top_up", idempotency_key="pay-1")
    with pytest.raises(IdempotencyConflict):
        grant_credits(account=BillingAccountFactory(), amount_credits=500, reason="top_up", idempotency_key="pay-1")
    account.refresh_from_db()
    assert account.balance_credits == 500
    assert CreditLedgerEntry.objects.count() == 1


def _run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run `target(i)` in `count` threads, each with its own database connection, released together."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_debits_and_credits_lose_no_update() -> None:
    """8 threads, own connections, 1,200 operations on one account at once."""
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="busy")
    threads, per_thread = 8, 150

    def work(i: int) -> None:
        for n in range(per_thread):
            if n % 3 == 0:
                grant_credits(account=account, amount_credits=7 + i, reason="top_up")
            elif n % 3 == 1:
                commit_usage_fact(fact=_fact("busy", "0.0000135"))  # 14 credits
            else:
                grant_credits(account=account, amount_credits=-3, reason="adjustment")

    assert _run_threads(threads, work) == []
    close_old_connections()
    entries = assert_books_balance(account)
    assert len(entries) == threads * per_thread
    expected = sum(
        (7 + i) if n % 3 == 0 else (-14 if n % 3 == 1 else -3) for i in range(threads) for n in range(per_thread)
    )
    assert account.balance_credits == expected
    assert ChargeReceipt.objects.filter(account=account).count() == threads * per_thread // 3


@pytest.mark.django_db(transaction=True)
def test_racing_grants_with_one_idempotency_key_grant_once() -> None:
    account = BillingAccountFactory()
    results = []

    def work(i: int) -> None:
        results.append(grant_credits(account=account, amount_credits=1000, reason="top_up", idempotency_key="race"))

    assert _run_threads(8, work) == []
    assert len(results) == 8
    assert sum(r.created for r in results) == 1
    assert len({r.entry.pk for r in results}) == 1
    account.refresh_from_db()
    assert account.balance_credits == 1000
    assert CreditLedgerEntry.objects.filter(idempotency_key="race").count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE accounts_creditledgerentry SET amount_credits = 1000000",
        "DELETE FROM accounts_creditledgerentry",
        "UPDATE receipts_chargereceipt SET charged_credits = 0",
        "DELETE FROM receipts_chargereceipt",
        "UPDATE accounts_billingaccount SET balance_credits = balance_credits + 1",
        "INSERT INTO accounts_billingaccount (public_id, name, balance_credits, created_at)"
        " VALUES (gen_random_uuid(), 'x', 5, now())",
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at)"
        " SELECT id, -5, 'usage', 0, '', now() FROM accounts_billingaccount",
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at)"
        " SELECT id, -5, 'top_up', 0, '', now() FROM accounts_billingaccount",
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at,"
        " receipt_id) SELECT account_id, -1, 'usage', 0, '', now(), id FROM receipts_chargereceipt",
    ],
    ids=[
        "update-ledger",
        "delete-ledger",
        "update-receipt",
        "delete-receipt",
        "move-balance-directly",
        "account-born-with-balance",
        "usage-without-receipt",
        "negative-top-up",
        "usage-amount-differs-from-receipt",
    ],
)
def test_database_refuses_changes_that_break_the_books(sql: str) -> None:
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="u1")
    grant_credits(account=account, amount_credits=100, reason="grant")
    commit_usage_fact(fact=_fact("u1", "0.000010"))
    with pytest.raises((DatabaseError, IntegrityError)), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert_books_balance(account)
    assert account.balance_credits == 90
