"""`manage.py reconcile` against a loopback stand-in of LiteLLM's spend-log API (tests/litellm_standin.py).

Every kind of discrepancy is planted and must be reported by kind with the
right exit code; `--apply` must backfill missing receipts through
commit_usage_facts() and nothing else, after which a second run is clean.
"""

import io
import json
import re
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import current_charge_rate
from integrations.litellm.records import parse_usage_record
from integrations.litellm.spendlogs import spend_log_record
from invoices.models import LedgerDailySummary
from receipts.models import ChargeReceipt, DeferredUsage
from reconciliation.report import KINDS
from reconciliation.services import reconcile as run_reconcile
from reconciliation.window import ReconcileInputError, Window, default_window, scheduled_window, window_from_options
from tests.books import charge_of, ingest_records, ledger_total
from tests.factories import BillingAccountFactory, EndUserAliasFactory, bind_trusted_gateway, litellm_record
from tests.litellm_standin import API_KEY_HASH, MASTER_KEY, SpendLogStandIn, spend_log_row
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.django_db

NOW = timezone.now().astimezone(UTC)
CALL_TIME = NOW - timedelta(hours=1)
SINCE = (NOW - timedelta(hours=3)).replace(microsecond=0)
UNTIL = (NOW + timedelta(hours=1)).replace(microsecond=0)
WINDOW_ARGS = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]


@pytest.fixture
def standin(settings, db):
    # The stand-in's rows were made through a trusted gateway's key (logged hashed in `api_key`).
    bind_trusted_gateway(key_hash=API_KEY_HASH)
    with SpendLogStandIn() as server:
        settings.LITELLM_BASE_URL = server.url
        settings.LITELLM_MASTER_KEY = MASTER_KEY
        settings.LITELLM_RETRY_BACKOFF_SECONDS = 0
        settings.BILLING_RECONCILE_REPORT_LIMIT = 1000
        yield server


def _epoch(moment: datetime) -> Decimal:
    return Decimal(str(moment.timestamp()))


def billed_call(
    standin: SpendLogStandIn,
    *,
    end_user: str = "acct-alice",
    cost: Decimal = Decimal("0.0000135"),
    spend: Decimal | None = None,
    at: datetime = CALL_TIME,
    in_litellm: bool = True,
    run_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """A call billed through the ingest path and (unless told otherwise) logged by LiteLLM."""
    call_id = str(uuid.uuid4())
    request_id = f"chatcmpl-{uuid.uuid4()}"
    record = litellm_record(
        end_user=end_user,
        cost=cost,
        call_id=call_id,
        run_id=run_id,
        attempt=attempt,
        id=request_id,
        startTime=_epoch(at),
        endTime=_epoch(at + timedelta(milliseconds=250)),
    )
    result = ingest_records(records=[record])
    assert result.processed == 1, result.as_dict()
    if in_litellm:
        meta = {"run_id": run_id, "attempt": attempt} if run_id is not None else None
        standin.add(
            spend_log_row(
                litellm_call_id=call_id,
                request_id=request_id,
                spend=cost if spend is None else spend,
                end_user=end_user,
                start_time=at,
                spend_logs_meta=meta,
            )
        )
    return record


def lost_call(standin: SpendLogStandIn, **kwargs: Any) -> dict[str, Any]:
    """A call LiteLLM logged whose callback never reached us."""
    kwargs.setdefault("start_time", CALL_TIME)
    row = spend_log_row(**kwargs)
    standin.add(row)
    return row


def reconcile(*args: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", *WINDOW_ARGS, "--json", *args, stdout=out, stderr=err)
    return exit_info.value.code, json.loads(out.getvalue()), err.getvalue()


def found(report: dict[str, Any]) -> dict[str, int]:
    return {kind: n for kind, n in report["found"].items() if n}


@contextmanager
def trigger_disabled(table: str, trigger: str):
    """Plant a corruption the database would refuse (tests only)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses pending deferred checks
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        try:
            yield cursor
        finally:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def insert_receipt_without_debit(
    record: dict[str, Any], *, account: BillingAccount, charged_credits: int | None = None
) -> ChargeReceipt:
    """A receipt written behind commit_usage_fact()'s back (what the orphan and credits checks must catch)."""
    fact = parse_usage_record(record)
    rate = current_charge_rate()
    if charged_credits is not None:
        # A receipt charged before the database checked each charge against its rate (the CHECK is NOT VALID
        # for old rows): only such a row can disagree with its rate.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE needs no pending trigger events
            cursor.execute("ALTER TABLE receipts_chargereceipt DROP CONSTRAINT receipt_charged_at_its_rate")
    return ChargeReceipt.objects.create(
        credits_per_usd=rate.credits_per_usd,
        markup=rate.markup,
        account=account,
        source_reference=fact.source_reference,
        litellm_call_id=fact.litellm_call_id,
        request_id=fact.request_id,
        run_id=fact.run_id,
        attempt=fact.attempt,
        model_group=fact.model_group,
        cost_usd=fact.cost_usd,
        charged_credits=charge_of(fact.cost_usd) if charged_credits is None else charged_credits,
        end_user=fact.end_user,
        started_at=fact.started_at,
        ended_at=fact.ended_at,
        created_at=timezone.now(),
    )


def test_clean_books_and_logs_exit_0(standin, account):
    for _ in range(5):
        billed_call(standin)
    billed_call(standin, cost=Decimal("0.0"))  # a cost of 0 is a cost
    billed_call(standin, run_id="run-7", attempt=2)
    # A failed call with no cost has no receipt and is not missing one.
    lost_call(standin, status="failure", spend=Decimal("0.0"))

    code, report, _ = reconcile()

    assert code == 0, report
    assert found(report) == {}
    assert report["spend_log_rows"] == 8
    assert report["errors"] == []


def test_every_planted_discrepancy_is_reported_by_kind(standin, account):
    for _ in range(3):
        billed_call(standin)
    # missing_receipt: a success, a run-tagged success, and a failure the provider still billed.
    lost_call(standin, end_user="acct-alice")
    lost_call(standin, end_user="acct-bob", spend_logs_meta={"run_id": "run-9", "attempt": 1})
    lost_call(standin, end_user="acct-alice", status="failure", spend=Decimal("0.000002"))
    # cost_mismatch: we billed 0.0000135, LiteLLM says 0.00002.
    mismatched = billed_call(standin, spend=Decimal("0.00002"))
    # unknown_to_litellm: a receipt LiteLLM has no log for.
    unknown = billed_call(standin, in_litellm=False)
    # orphan_usage: a receipt without its usage debit (LiteLLM knows the call).
    orphan_record = litellm_record(startTime=_epoch(CALL_TIME), endTime=_epoch(CALL_TIME))
    orphan = insert_receipt_without_debit(orphan_record, account=account)
    standin.add(
        spend_log_row(
            litellm_call_id=orphan.litellm_call_id,
            request_id=orphan.request_id,
            spend=orphan.cost_usd,
            start_time=CALL_TIME,
        )
    )
    # credits_mismatch: charged 1 credit for a 13.5-credit cost, and debited that 1 credit.
    cheap_record = litellm_record(startTime=_epoch(CALL_TIME), endTime=_epoch(CALL_TIME))
    cheap = insert_receipt_without_debit(cheap_record, account=account, charged_credits=1)
    CreditLedgerEntry.objects.create(
        account=account, amount_credits=-1, reason="usage", receipt=cheap, created_at=timezone.now()
    )
    standin.add(
        spend_log_row(
            litellm_call_id=cheap.litellm_call_id,
            request_id=cheap.request_id,
            spend=cheap.cost_usd,
            start_time=CALL_TIME,
        )
    )
    # balance_drift: the balance moved without a ledger entry.
    with trigger_disabled("accounts_billingaccount", "account_balance_guard") as cursor:
        cursor.execute(
            "UPDATE accounts_billingaccount SET balance_credits = balance_credits + 7 WHERE id = %s", [account.pk]
        )
    # summary_drift (and so the invoice identity of this month): the summary lost 5 credits of usage.
    with trigger_disabled("invoices_ledgerdailysummary", "summary_guard") as cursor:
        cursor.execute(
            "UPDATE invoices_ledgerdailysummary SET amount_credits = amount_credits + 5 "
            "WHERE id = (SELECT min(id) FROM invoices_ledgerdailysummary WHERE account_id = %s AND reason = 'usage')",
            [account.pk],
        )

    code, report, _ = reconcile()

    assert code == 1
    assert found(report) == {
        "missing_receipt": 3,
        "cost_mismatch": 1,
        "unknown_to_litellm": 1,
        "orphan_usage": 1,
        "credits_mismatch": 1,
        "balance_drift": 1,
        "summary_drift": 1,
        "invoice_identity": 1,
    }
    items = report["discrepancies"]
    assert {i["end_user"] for i in items["missing_receipt"]} == {"acct-alice", "acct-bob"}
    [cost] = items["cost_mismatch"]
    assert cost["litellm_call_id"] == mismatched["litellm_call_id"]
    assert Decimal(str(cost["litellm_spend"])) == Decimal("0.00002")
    assert Decimal(str(cost["receipt_cost_usd"])) == Decimal("0.0000135")
    assert [i["litellm_call_id"] for i in items["unknown_to_litellm"]] == [unknown["litellm_call_id"]]
    assert items["orphan_usage"][0]["receipt_id"] == orphan.pk
    assert items["credits_mismatch"][0]["expected_credits"] == 14
    assert items["balance_drift"][0]["difference"] == 7
    assert items["invoice_identity"][0]["difference"] == 5
    assert report["remaining"] == report["found"]


def test_dry_run_changes_nothing(standin, account):
    lost_call(standin)
    receipts, entries = ChargeReceipt.objects.count(), CreditLedgerEntry.objects.count()
    balance = BillingAccount.objects.get(pk=account.pk).balance_credits

    code, report, _ = reconcile()

    assert code == 1 and report["found"]["missing_receipt"] == 1
    assert (ChargeReceipt.objects.count(), CreditLedgerEntry.objects.count()) == (receipts, entries)
    assert BillingAccount.objects.get(pk=account.pk).balance_credits == balance


def test_apply_backfills_missing_receipts_and_a_second_run_is_clean(standin, account):
    billed_call(standin)
    plain = lost_call(standin, spend=Decimal("0.000123"))
    tagged = lost_call(standin, end_user="acct-bob", spend_logs_meta={"run_id": "run-9", "attempt": 1})
    partial = lost_call(standin, status="failure", spend=Decimal("0.000002"))
    before = BillingAccount.objects.get(pk=account.pk).balance_credits

    code, report, _ = reconcile("--apply")

    assert code == 0, report  # everything found was healed
    assert report["found"]["missing_receipt"] == 3
    assert report["remaining"]["missing_receipt"] == 0
    assert report["backfill"]["backfilled"] == 3
    receipt = ChargeReceipt.objects.get(litellm_call_id=plain["litellm_call_id"])
    assert receipt.cost_usd == Decimal("0.000123")
    assert receipt.charged_credits == 123
    assert receipt.request_id == plain["request_id"]
    assert receipt.source_reference == f"{plain['litellm_call_id']}/0/{plain['litellm_call_id']}"
    assert receipt.api_key_hash == plain["api_key"]
    assert receipt.started_at == plain["startTime"]
    assert receipt.spend_log_request_id == plain["request_id"] and receipt.ingest_batch_id is None
    tagged_receipt = ChargeReceipt.objects.get(litellm_call_id=tagged["litellm_call_id"])
    assert tagged_receipt.source_reference == f"run-9/1/{tagged['litellm_call_id']}"
    assert ChargeReceipt.objects.get(litellm_call_id=partial["litellm_call_id"]).status == "failure"
    assert BillingAccount.objects.get(pk=account.pk).balance_credits == before - 123 - 14 - 2
    assert BillingAccount.objects.get(pk=account.pk).balance_credits == ledger_total(account=account)

    code, report, _ = reconcile()
    assert code == 0 and found(report) == {}

    # The lost callback finally arrives (with the key and tokens its spend-log row has): a duplicate, never a
    # second debit.
    late = litellm_record(
        call_id=plain["litellm_call_id"],
        cost=Decimal("0.000123"),
        id=plain["request_id"],
        startTime=_epoch(CALL_TIME),
        prompt_tokens=plain["prompt_tokens"],
        completion_tokens=plain["completion_tokens"],
    )
    late["metadata"]["user_api_key_hash"] = plain["api_key"]
    assert ingest_records(records=[late]).duplicates == 1
    assert ChargeReceipt.objects.filter(litellm_call_id=plain["litellm_call_id"]).count() == 1
    assert BillingAccount.objects.get(pk=account.pk).balance_credits == ledger_total(account=account)


def test_apply_heals_only_missing_receipts(standin, account):
    lost_call(standin)
    billed_call(standin, spend=Decimal("0.00002"))  # cost_mismatch stays for staff
    billed_call(standin, in_litellm=False)  # unknown_to_litellm stays
    receipts = set(ChargeReceipt.objects.values_list("id", flat=True))

    code, report, _ = reconcile("--apply")

    assert code == 1
    assert report["remaining"]["missing_receipt"] == 0
    assert report["remaining"]["cost_mismatch"] == 1
    assert report["remaining"]["unknown_to_litellm"] == 1
    assert len(set(ChargeReceipt.objects.values_list("id", flat=True)) - receipts) == 1


def test_apply_defers_a_backfill_whose_end_user_has_no_alias(standin, account):
    row = lost_call(standin, end_user="stranger")

    code, report, _ = reconcile("--apply")

    assert code == 1
    assert report["backfill"]["deferred"] == 1
    assert report["remaining"]["missing_receipt"] == 1
    deferred = DeferredUsage.objects.get(litellm_call_id=row["litellm_call_id"])
    assert deferred.reason == DeferredUsage.Reason.UNKNOWN_PAYER
    assert deferred.status == DeferredUsage.Status.PENDING
    assert not ChargeReceipt.objects.filter(litellm_call_id=row["litellm_call_id"]).exists()


def test_unknown_cost_deferral_is_reported_but_never_backfilled_at_zero(standin, account):
    record = litellm_record(cost=None, startTime=_epoch(CALL_TIME))
    assert ingest_records(records=[record]).deferred == 1
    # LiteLLM could not price it either: its spend log says 0.
    lost_call(standin, litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.0"))

    code, report, _ = reconcile("--apply")

    assert code == 1
    [item] = report["discrepancies"]["missing_receipt"]
    assert item["deferred"]["reason"] == "unknown_cost"
    assert item["backfilled"] is False
    assert not ChargeReceipt.objects.filter(litellm_call_id=record["litellm_call_id"]).exists()


def test_apply_bills_a_deferred_unknown_cost_once_litellm_has_the_cost(standin, account):
    record = litellm_record(cost=None, startTime=_epoch(CALL_TIME))
    ingest_records(records=[record])
    lost_call(
        standin,
        litellm_call_id=record["litellm_call_id"],
        request_id=record["id"],
        spend=Decimal("0.000042"),
        prompt_tokens=record["prompt_tokens"],
        completion_tokens=record["completion_tokens"],
        api_key=record["metadata"]["user_api_key_hash"],
    )

    code, report, _ = reconcile("--apply")

    assert code == 0, report
    receipt = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
    assert receipt.cost_usd == Decimal("0.000042")
    deferred = DeferredUsage.objects.get(litellm_call_id=record["litellm_call_id"])
    assert deferred.status == DeferredUsage.Status.BILLED and deferred.receipt_id == receipt.pk


def test_rows_without_call_id_match_by_request_id(standin, account):
    record = billed_call(standin, in_litellm=False)
    # An older LiteLLM: no litellm_call_id column; a cache hit's request_id carries a suffix.
    lost_call(
        standin,
        litellm_call_id="",
        request_id=f"{record['id']}_cache_hit1795566908.123",
        spend=Decimal("0.0000135"),
    )

    code, report, _ = reconcile()

    assert code == 0, report


def test_a_receipt_far_from_its_spend_log_time_is_still_matched(standin, account):
    # A record without startTime: its receipt's time is when it was billed, hours after LiteLLM's startTime.
    record = litellm_record(startTime=None, endTime=None)
    ingest_records(records=[record])
    lost_call(
        standin,
        litellm_call_id=record["litellm_call_id"],
        request_id=record["id"],
        spend=Decimal("0.0000135"),
        start_time=NOW - timedelta(hours=2, minutes=30),
    )

    code, report, _ = reconcile()

    assert code == 0, report["found"]


def test_repeated_provider_ids_do_not_hide_a_missing_call(standin, account):
    # Two calls with the same provider response id (LiteLLM issues #28376, #39749): matched by call id.
    first = billed_call(standin)
    lost_call(standin, request_id=f"{first['id']}-second-row")
    twin_call = str(uuid.uuid4())
    standin.rows[-1]["litellm_call_id"] = twin_call

    code, report, _ = reconcile()

    assert code == 1
    assert [i["litellm_call_id"] for i in report["discrepancies"]["missing_receipt"]] == [twin_call]


def test_pages_through_a_large_window_in_slices_under_the_count_cap(standin, account, settings):
    settings.BILLING_RECONCILE_PAGE_SIZE = 7
    settings.BILLING_RECONCILE_SLICE_SECONDS = 24 * 3600
    standin.count_cap = 25
    for i in range(120):
        billed_call(standin, at=CALL_TIME - timedelta(seconds=37 * i))
    lost = lost_call(standin, start_time=CALL_TIME - timedelta(seconds=1001))

    code, report, _ = reconcile()

    assert code == 1
    assert report["spend_log_rows"] >= 121
    assert [i["litellm_call_id"] for i in report["discrepancies"]["missing_receipt"]] == [lost["litellm_call_id"]]
    pages = [int(params["page"]) for path, params in standin.requests if path == "/spend/logs/v2"]
    assert max(pages) > 1  # it really paged
    assert all(int(params["page_size"]) == 7 for path, params in standin.requests if path == "/spend/logs/v2")


def test_rows_with_equal_times_moving_between_pages_are_not_lost(standin, account, settings):
    settings.BILLING_RECONCILE_PAGE_SIZE = 10
    standin.unstable_ties = True
    moment = CALL_TIME.replace(microsecond=0)
    for i in range(3):
        for _ in range(25):  # 25 calls in the very same millisecond, three times
            billed_call(standin, at=moment + timedelta(seconds=i))

    code, report, _ = reconcile()

    assert code == 0, report["found"]
    # Rows of one second that moved between its pages were read again as one page.
    assert any(params["page_size"] == "1000" for path, params in standin.requests if path == "/spend/logs/v2")


def test_transient_litellm_errors_are_retried(standin, account):
    billed_call(standin)
    standin.fail_next(2, status=503)

    code, report, _ = reconcile()

    assert code == 0, report


def test_unreadable_litellm_exits_2_with_the_reason(standin, account, settings):
    lost_call(standin)
    settings.LITELLM_MASTER_KEY = "sk-wrong"

    code, report, err = reconcile("--apply")

    assert code == 2
    assert "401" in err  # the reason is logged too
    assert report["errors"][0]["source"] == "litellm"
    assert "401" in report["errors"][0]["reason"]
    assert report["backfill"] == {}  # nothing is backfilled from a source that could not be read
    assert ChargeReceipt.objects.count() == 0


def test_litellm_down_exits_2(standin, account, settings):
    standin.fail_next(10, status=500)
    settings.LITELLM_RETRIES = 2

    code, report, _ = reconcile()

    assert code == 2
    assert "500" in report["errors"][0]["reason"]


def test_litellm_unreachable_exits_2(account, settings):
    with SpendLogStandIn() as gone:
        url = gone.url
    settings.LITELLM_BASE_URL = url
    settings.LITELLM_RETRIES = 0

    code, report, _ = reconcile()

    assert code == 2
    assert "unreachable" in report["errors"][0]["reason"]


def test_account_option_limits_the_report(standin, account):
    other = BillingAccountFactory(name="Other")
    EndUserAliasFactory(account=other, end_user="acct-zed")
    lost_call(standin, end_user="acct-alice")
    lost_call(standin, end_user="acct-zed")
    billed_call(standin, end_user="acct-zed", in_litellm=False)

    code, report, _ = reconcile("--account", str(other.public_id))

    assert code == 1
    assert found(report) == {"missing_receipt": 1, "unknown_to_litellm": 1}
    assert report["account"] == str(other.public_id)
    code, report, _ = reconcile("--account", str(account.pk))
    assert found(report) == {"missing_receipt": 1}


def test_books_only_skips_litellm(account, settings):
    settings.LITELLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens: must not be asked

    code, report, _ = reconcile("--books-only")

    assert code == 0
    assert report["litellm_checked"] is False


def test_invoice_identity_catches_a_drift_outside_the_window(account):
    # A grant earlier this month whose summary row drifted; the window is only today.
    earlier = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if earlier.date() == NOW.date():
        earlier -= timedelta(days=3)  # the 1st: take last month's (the opening balance breaks)
    CreditLedgerEntry.objects.create(account=account, amount_credits=500, reason="grant", created_at=earlier)
    with trigger_disabled("invoices_ledgerdailysummary", "summary_guard") as cursor:
        cursor.execute(
            "UPDATE invoices_ledgerdailysummary SET amount_credits = 400 WHERE account_id = %s AND day = %s",
            [account.pk, earlier.date()],
        )
    today = NOW.date().isoformat()

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--since", today, "--books-only", "--json", stdout=out)

    report = json.loads(out.getvalue())
    assert exit_info.value.code == 1
    assert found(report) == {"invoice_identity": 1}
    [item] = report["discrepancies"]["invoice_identity"]
    assert item["account"] == str(account.public_id)
    assert item["period"] == NOW.strftime("%Y-%m")
    assert LedgerDailySummary.objects.filter(account=account).exists()


def test_text_report(standin, account):
    lost_call(standin)
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", *WINDOW_ARGS, stdout=out)

    assert exit_info.value.code == 1
    text = out.getvalue()
    assert "missing_receipt" in text and "Result: discrepancies found (exit 1)" in text


def test_bad_options_exit_2(account):
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--since", "yesterday-ish", stderr=err)
    assert exit_info.value.code == 2
    assert "not a date" in err.getvalue()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--account", str(uuid.uuid4()), stderr=err)
    assert exit_info.value.code == 2


def test_windows():
    now = datetime(2026, 3, 1, 5, 30, tzinfo=UTC)
    assert default_window(now) == Window(datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert window_from_options(since="2026-02-01", until="2026-02-03T12:00:00", now=now) == Window(
        datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 3, 12, tzinfo=UTC)
    )
    assert window_from_options(since="2026-03-01T02:00:00+02:00", until=None, now=now) == Window(
        datetime(2026, 3, 1, 0, tzinfo=UTC), datetime(2026, 3, 1, 5, 30, tzinfo=UTC)
    )
    with pytest.raises(ReconcileInputError):
        window_from_options(since="2026-03-02", until="2026-03-01", now=now)


def test_scheduled_window(settings):
    settings.BILLING_RECONCILE_LAG_SECONDS = 900
    settings.BILLING_RECONCILE_WINDOW_SECONDS = 7200
    now = datetime(2026, 3, 1, 5, 30, 42, tzinfo=UTC)
    assert scheduled_window(now) == Window(
        datetime(2026, 3, 1, 3, 15, tzinfo=UTC), datetime(2026, 3, 1, 5, 15, tzinfo=UTC)
    )


def test_a_terminal_gets_a_progress_bar(standin, account, capsys):
    billed_call(standin)
    report = run_reconcile(window=Window(SINCE, UNTIL), progress=True)
    assert report.exit_code == 0
    assert "LiteLLM spend logs" in capsys.readouterr().err


def test_spend_log_record_goes_through_the_same_validation():
    row = (
        "chatcmpl-1_cache_hit1795566908.5",
        "call-1",
        Decimal("1.35e-05"),
        None,
        "acct-alice",
        Decimal("1795566908.467"),
        Decimal("1795566908.493"),
        "gpt-4o-mini",
        "openai/gpt-4o-mini",
        "openai",
        "acompletion",
        10,
        20,
        30,
        True,
        "hash",
        None,
        None,
        '{"run_id": "run-1", "attempt": 3}',
        None,
    )
    fact = parse_usage_record(spend_log_record(row))
    assert fact.request_id == "chatcmpl-1"
    assert fact.source_reference == "run-1/3/call-1"
    assert fact.cost_usd == Decimal("0.0000135")
    assert fact.cache_hit is True
    bad = parse_usage_record(spend_log_record((*row[:2], Decimal("-1"), *row[3:])))
    assert bad.kind == "invalid" and bad.reason == "invalid_response_cost"


def test_metrics_of_a_run(standin, account):
    lost_call(standin)
    runs = REGISTRY.get_sample_value("billing_reconcile_runs_total", {"outcome": "discrepancies"}) or 0

    window = Window(SINCE, UNTIL)
    report = run_reconcile(window=window)

    assert report.exit_code == 1
    assert REGISTRY.get_sample_value("billing_reconcile_discrepancies", {"kind": "missing_receipt"}) == 1
    assert REGISTRY.get_sample_value("billing_reconcile_discrepancies", {"kind": "balance_drift"}) == 0
    assert REGISTRY.get_sample_value("billing_reconcile_runs_total", {"outcome": "discrepancies"}) == runs + 1
    assert REGISTRY.get_sample_value("billing_reconcile_last_success_timestamp_seconds") > 0
    assert REGISTRY.get_sample_value("billing_reconcile_duration_seconds") > 0
    assert set(report.found) == set(KINDS)


def test_alert_rules_name_metrics_that_exist():
    path = REPO_ROOT / "deploy/prometheus/billing-alerts.yml"
    rules = yaml.safe_load(path.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = set()
    for metric in REGISTRY.collect():
        names |= {metric.name, f"{metric.name}_total"} | {sample.name for sample in metric.samples}
    used = {token for expr in exprs for token in re.findall(r"billing_[a-z_]+", expr)}
    assert used <= names, used - names
    assert any('kind="missing_receipt"' in expr for expr in exprs)
    assert any('reason="deferred_expired"' in expr for expr in exprs)
    assert any('outcome="source_error"' in expr for expr in exprs)


def test_a_rate_change_does_not_make_old_receipts_look_wrong(account, settings):
    """Each receipt carries the rate it was charged at; credits_mismatch checks it against that rate."""
    at_old_rate = litellm_record(startTime=_epoch(CALL_TIME), endTime=_epoch(CALL_TIME))
    ingest_records(records=[at_old_rate])
    settings.CREDITS_PER_USD = 2_000_000
    settings.BILLING_MARKUP = "1.5"
    at_new_rate = litellm_record(startTime=_epoch(CALL_TIME), endTime=_epoch(CALL_TIME))
    ingest_records(records=[at_new_rate])

    old = ChargeReceipt.objects.get(litellm_call_id=at_old_rate["litellm_call_id"])
    new = ChargeReceipt.objects.get(litellm_call_id=at_new_rate["litellm_call_id"])
    assert (old.credits_per_usd, old.markup, old.charged_credits) == (Decimal(1_000_000), Decimal(1), 14)
    assert (new.credits_per_usd, new.markup, new.charged_credits) == (Decimal(2_000_000), Decimal("1.5"), 41)
    code, report, _ = reconcile("--books-only")
    assert code == 0, report
    assert "credits_mismatch" not in found(report)


def test_the_database_refuses_a_charge_that_disagrees_with_its_rate(account):
    """receipt_charged_at_its_rate: raw SQL cannot store credits other than ceil(cost × rate × markup)."""
    ingest_records(records=[litellm_record()])
    receipt = ChargeReceipt.objects.get()
    columns = [
        f.column for f in ChargeReceipt._meta.concrete_fields if not f.primary_key and f.column != "source_reference"
    ]
    names = ", ".join(columns)
    with pytest.raises(IntegrityError, match="receipt_charged_at_its_rate"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO receipts_chargereceipt (source_reference, {names}) "
                f"SELECT 'another/0/ref', {names.replace('charged_credits', 'charged_credits - 1')} "
                "FROM receipts_chargereceipt WHERE id = %s",
                [receipt.pk],
            )
