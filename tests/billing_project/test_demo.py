"""bin/run's demo (manage.py billing_demo): a month of usage through the real ingest endpoint, idempotent."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import charged_credits
from integrations.litellm.demo import DAYS, END_USERS, UNBOUND_END_USER, demo_calls
from invoices.selectors import current_period, invoice_for_account
from payers.services import end_user_alias_create
from payments.models import PaymentAttempt
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from reconciliation.services import reconcile
from reconciliation.window import Window
from tests.books import ledger_total

pytestmark = pytest.mark.django_db(transaction=True)

GRANT = 10_000_000


@pytest.fixture(autouse=True)
def _passwords_in_tmp(settings, tmp_path):
    settings.BASE_DIR = tmp_path  # the demo keeps its generated passwords under BASE_DIR/.data


def _run(*args: str) -> str:
    out = StringIO()
    call_command("billing_demo", *args, stdout=out)
    return out.getvalue()


def _state() -> dict[str, object]:
    return {
        "receipts": ChargeReceipt.objects.count(),
        "ledger": CreditLedgerEntry.objects.count(),
        "deferred": sorted(DeferredUsage.objects.values_list("reason", "status", "litellm_call_id")),
        "deliveries": IngestBatch.objects.count(),
        "balances": sorted(BillingAccount.objects.values_list("name", "balance_credits")),
    }


def _expected() -> tuple[list, list]:
    calls = [call for day in demo_calls() for call in day]
    billable = [c for c in calls if c.cost_usd is not None and c.end_user != UNBOUND_END_USER]
    return calls, billable


def _owner_client(account: BillingAccount) -> Client:
    client = Client()
    client.force_login(account.owner)
    return client


def test_demo_posts_a_month_that_bills_and_ties(settings):
    output = _run()
    calls, billable = _expected()
    account = BillingAccount.objects.get(owner__username="demo")

    receipts = list(ChargeReceipt.objects.all())
    assert sorted(r.litellm_call_id for r in receipts) == sorted(c.litellm_call_id for c in billable)
    assert {r.account_id for r in receipts} == {account.pk}
    assert {r.payer_source for r in receipts} == {"end_user"}  # decided by alias, through the gateway key
    assert {r.end_user for r in receipts} == set(END_USERS)
    assert {"gpt-4o-mini", "gpt-4o", "claude-haiku", "embed-small"} <= {r.model_group for r in receipts}
    assert any(r.stream for r in receipts)
    assert any(r.call_type == "aembedding" for r in receipts)
    # Every receipt came through a stored delivery, at its position.
    assert all(r.ingest_batch_id is not None and r.batch_position is not None for r in receipts)
    assert IngestBatch.objects.filter(status=IngestBatch.Status.PROCESSED).count() == DAYS

    # Spread over the month, none in the future.
    starts = [r.started_at for r in receipts]
    now = datetime.now(UTC)
    assert max(starts) <= now
    assert max(starts) - min(starts) >= timedelta(days=DAYS - 2)

    # Exact money: the receipts hold the records' costs digit for digit, charged at the receipt's own rate.
    by_id = {c.litellm_call_id: c for c in billable}
    for r in receipts:
        assert r.cost_usd == by_id[r.litellm_call_id].cost_usd
        assert r.charged_credits == charged_credits(r.cost_usd, credits_per_usd=r.credits_per_usd, markup=r.markup)
    used = sum(r.charged_credits for r in receipts)
    assert used > 0

    # The two waiting records, each linked to the delivery that holds its bytes.
    deferred = {d.reason: d for d in DeferredUsage.objects.all()}
    assert set(deferred) == {"unknown_cost", "unknown_payer"}
    assert all(d.status == "pending" and d.ingest_batch_id is not None for d in deferred.values())
    assert deferred["unknown_payer"].end_user == UNBOUND_END_USER

    # One paid card purchase of 20 USD and a refund of 5 of them, in the history and the ledger.
    [purchase] = PaymentAttempt.objects.filter(account=account)
    assert (purchase.amount_usd, purchase.status, purchase.refunded_cents) == (20, "partially_refunded", 500)
    moved = dict(
        account.ledger_entries.filter(reason__in=["purchase", "purchase_refund"]).values_list(
            "reason", "amount_credits"
        )
    )
    assert moved == {"purchase": 20_000_000, "purchase_refund": -5_000_000}
    assert "demo purchase: 20 USD by card (credited 20,000,000 credits)" in output
    page = _owner_client(account).get("/billing/credits/").content.decode()
    assert 'data-form="buy-credits"' in page and 'data-field="stripe-not-configured"' in page
    assert "Partially refunded" in page
    invoice_page = _owner_client(account).get("/billing/invoice/").content.decode()
    assert 'data-form="buy-credits"' in invoice_page and "Purchase (card)" in invoice_page
    assert "Purchase refunded to the card" in invoice_page

    # Books tie: balance = grant + purchase − refund − usage = the ledger's sum; the in-book reconcile is clean.
    account.refresh_from_db()
    assert account.balance_credits == GRANT + 15_000_000 - used == ledger_total(account=account)
    report = reconcile(window=Window(now - timedelta(days=DAYS + 1), now + timedelta(days=1)), include_litellm=False)
    assert report.exit_code == 0, report.summary()
    # The invoice reads the same usage (booked today: invoices date a charge by its ledger entry).
    invoice = invoice_for_account(account=account, period=current_period())
    assert invoice.used_credits == used
    assert invoice.totals.calls == len(billable)
    assert f"{len(calls)} LiteLLM calls over {DAYS} days" in output
    assert f"{len(billable)} billed, 0 already billed, 2 deferred" in output


def test_second_run_adds_nothing_and_a_repost_bills_nothing_twice():
    _run()
    first = _state()
    output = _run()
    assert _state() == first
    assert "posted before" in output

    output = _run("--repost")
    _, billable = _expected()
    after = _state()
    assert after["deliveries"] == first["deliveries"] + DAYS  # stored again, as every delivery is
    assert {k: v for k, v in after.items() if k != "deliveries"} == {
        k: v for k, v in first.items() if k != "deliveries"
    }
    assert f"0 billed, {len(billable)} already billed, 2 deferred" in output


def test_binding_the_waiting_end_user_bills_its_record():
    _run()
    account = BillingAccount.objects.get(owner__username="demo")
    before = account.balance_credits
    end_user_alias_create(account=account, end_user=UNBOUND_END_USER)
    waiting = DeferredUsage.objects.get(reason="unknown_payer")
    assert waiting.status == "billed"
    account.refresh_from_db()
    assert account.balance_credits == before - waiting.receipt.charged_credits
    assert waiting.receipt.cost_usd > Decimal(0)
