"""Promotional credit: used before paid credit (priority, then soonest expiry), expires once, balance = Σ ledger."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry, PromotionalCredit
from accounts.services import (
    InvalidGrant,
    expire_promotional_credits,
    grant_credits,
    grant_promotional_credits,
    notify_expiring_promotions,
)
from integrations.litellm.records import parse_usage_record
from invoices.selectors import current_period, invoice_for_account
from receipts.facts import UsageFact
from receipts.services import commit_usage_facts
from tests.accounts.test_ledger import assert_books_balance
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record


def _bill(end_user: str, *costs: str) -> None:
    facts = [parse_usage_record(litellm_record(end_user=end_user, cost=Decimal(cost))) for cost in costs]
    assert all(isinstance(f, UsageFact) for f in facts)
    commit_usage_facts(facts=facts)


def _lots(account: BillingAccount) -> list[tuple[int, int]]:
    return list(
        PromotionalCredit.objects.filter(account=account)
        .order_by("id")
        .values_list("granted_credits", "remaining_credits")
    )


@pytest.fixture
def payer(db) -> BillingAccount:
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="promo-user")
    return account


def test_usage_burns_promotional_credit_first_by_priority_then_soonest_expiry(payer: BillingAccount) -> None:
    now = timezone.now()
    grant_credits(account=payer, amount_credits=1000, reason="top_up")
    late = grant_promotional_credits(account=payer, amount_credits=30, expires_at=now + timedelta(days=30))
    soon = grant_promotional_credits(account=payer, amount_credits=20, expires_at=now + timedelta(days=3))
    first = grant_promotional_credits(account=payer, amount_credits=10, expires_at=now + timedelta(days=60), priority=1)
    payer.refresh_from_db()
    assert (payer.balance_credits, payer.promotional_credits) == (1060, 60)
    assert {late.created, soon.created, first.created} == {True}

    _bill("promo-user", "0.000015")  # 15 credits: 10 from priority 1, then 5 from the soonest expiry
    assert _lots(payer) == [(30, 30), (20, 15), (10, 0)]
    _bill("promo-user", "0.000040", "0.000005")  # 45 more: 15 from "soon", 30 from "late"; paid untouched so far
    assert _lots(payer) == [(30, 0), (20, 0), (10, 0)]
    payer.refresh_from_db()
    assert (payer.balance_credits, payer.promotional_credits) == (1000, 0)
    _bill("promo-user", "0.000007")  # paid credit only now
    assert_books_balance(payer)
    assert payer.balance_credits == 993


def test_the_remainder_expires_once_and_the_balance_stays_the_ledger_sum(payer: BillingAccount) -> None:
    now = timezone.now()
    grant_credits(account=payer, amount_credits=100, reason="top_up")
    lot = grant_promotional_credits(
        account=payer, amount_credits=50, expires_at=now + timedelta(days=1), idempotency_key="welcome-1"
    ).entry.promotional_credit
    _bill("promo-user", "0.000020")
    assert _lots(payer) == [(50, 30)]

    assert expire_promotional_credits(now=now) == 0  # not due yet
    later = now + timedelta(days=1, seconds=1)
    assert expire_promotional_credits(now=later) == 1
    assert expire_promotional_credits(now=later) == 0  # the sweep run twice expires once
    entries = assert_books_balance(payer)
    expiries = [e for e in entries if e.reason == CreditLedgerEntry.Reason.EXPIRY]
    assert [(e.amount_credits, e.promotional_credit_id) for e in expiries] == [(-30, lot.pk)]
    lot.refresh_from_db()
    assert (lot.remaining_credits, lot.expired_at) == (0, later)
    # 100 paid + 50 promotional − 20 used (all promotional) − 30 expired: the paid credit is intact.
    assert payer.balance_credits == 100 and payer.promotional_credits == 0
    # An expired lot is never burnt: usage after expiry takes paid credit.
    _bill("promo-user", "0.000001")
    assert_books_balance(payer)


def test_a_lot_past_its_expiry_is_not_burnt_before_the_sweep(payer: BillingAccount) -> None:
    now = timezone.now()
    grant_credits(account=payer, amount_credits=100, reason="top_up")
    grant_promotional_credits(account=payer, amount_credits=50, expires_at=now + timedelta(seconds=1), now=now)
    with transaction.atomic(), connection.cursor() as cursor:
        # The lot's time has passed (the entry is dated after it): usage takes paid credit only.
        cursor.execute("SELECT billing_promotional_burn(%s, 10, %s)", [payer.pk, now + timedelta(seconds=2)])
        assert cursor.fetchone()[0] == 0
    assert _lots(payer) == [(50, 50)]


def test_replayed_key_grants_once_and_expiring_notice_goes_once(payer: BillingAccount) -> None:
    now = timezone.now()
    args = {"account": payer, "amount_credits": 40, "expires_at": now + timedelta(days=5), "idempotency_key": "k1"}
    assert grant_promotional_credits(**args).created
    assert not grant_promotional_credits(**args).created
    assert _lots(payer) == [(40, 40)]
    assert notify_expiring_promotions(now=now) == 1
    assert notify_expiring_promotions(now=now) == 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount_credits": 0}, "amount_credits"),
        ({"amount_credits": -5}, "amount_credits"),
        ({"expires_at": "past"}, "expires_at"),
        ({"priority": 0}, "priority"),
        ({"priority": 101}, "priority"),
    ],
)
def test_bad_promotions_name_the_field_and_save_nothing(payer: BillingAccount, changes: dict, field: str) -> None:
    now = timezone.now()
    args = {"account": payer, "amount_credits": 10, "expires_at": now + timedelta(days=1), **changes}
    if args["expires_at"] == "past":
        args["expires_at"] = now - timedelta(seconds=1)
    with pytest.raises(InvalidGrant) as refused:
        grant_promotional_credits(**args)
    assert refused.value.field == field
    assert not PromotionalCredit.objects.exists() and not CreditLedgerEntry.objects.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE accounts_promotionalcredit SET remaining_credits = granted_credits",
        "UPDATE accounts_promotionalcredit SET expires_at = expires_at + interval '1 year'",
        "DELETE FROM accounts_promotionalcredit",
        "UPDATE accounts_billingaccount SET promotional_credits = promotional_credits + 1",
        # funded twice
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at,"
        " promotional_credit_id) SELECT account_id, granted_credits, 'grant', 0, '', now(), id"
        " FROM accounts_promotionalcredit",
        # expired early
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at,"
        " promotional_credit_id) SELECT account_id, -remaining_credits, 'expiry', 0, '', now(), id"
        " FROM accounts_promotionalcredit",
        # expired for more than is left
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at,"
        " promotional_credit_id) SELECT account_id, -remaining_credits - 1, 'expiry', 0, '', expires_at, id"
        " FROM accounts_promotionalcredit",
        # an expiry that names no grant
        "INSERT INTO accounts_creditledgerentry (account_id, amount_credits, reason, balance_after, memo, created_at)"
        " SELECT id, -1, 'expiry', 0, '', now() FROM accounts_billingaccount",
    ],
    ids=[
        "refill-lot",
        "extend-lot",
        "delete-lot",
        "move-promotional-total",
        "fund-twice",
        "expire-early",
        "expire-more-than-left",
        "expiry-without-grant",
    ],
)
def test_database_refuses_changes_that_break_promotions(payer: BillingAccount, sql: str) -> None:
    grant_promotional_credits(account=payer, amount_credits=50, expires_at=timezone.now() + timedelta(days=1))
    _bill("promo-user", "0.000010")
    with pytest.raises((DatabaseError, IntegrityError)), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert _lots(payer) == [(50, 40)]
    assert_books_balance(payer)


def test_the_invoice_shows_expired_promotional_credit_as_its_own_line(payer: BillingAccount) -> None:
    now = timezone.now()
    grant_credits(account=payer, amount_credits=100, reason="top_up")
    grant_promotional_credits(account=payer, amount_credits=50, expires_at=now + timedelta(seconds=1), now=now)
    _bill("promo-user", "0.000020")
    assert expire_promotional_credits(now=now + timedelta(seconds=2)) == 1
    expiry = CreditLedgerEntry.objects.get(account=payer, reason=CreditLedgerEntry.Reason.EXPIRY)
    invoice = invoice_for_account(account=payer, period=current_period(now=expiry.created_at))
    lines = {line.reason: (line.entries, line.credits) for line in invoice.added_by_reason}
    assert lines[CreditLedgerEntry.Reason.EXPIRY] == (1, -30)
