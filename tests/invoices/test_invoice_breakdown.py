"""Who spent an account's credits: the invoice's breakdown by API key and by end user (issue 10 item 5).

Read from invoices.LedgerPayerSummary, which the ledger's statement-level
trigger keeps from each usage entry's receipt (invoices/0003). The page, the
CSV and the JSON must agree, each breakdown must sum to the credits used, the
top N (BILLING_INVOICE_TOP_N) must be followed by one "others" line, the
summary must refuse direct writes, and `reconcile` must catch a drift in it.
"""

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Sum
from django.test import Client

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.services import grant_credits
from integrations.litellm.records import parse_usage_record
from invoices.models import LedgerDailySummary, LedgerPayerSummary
from invoices.selectors import Period, api_key_label, invoice_for_account
from receipts.facts import UsageFact
from receipts.services import commit_usage_facts
from tests.clock import frozen_now
from tests.factories import MASTER_KEY_HASH, ApiKeyBindingFactory, BillingAccountFactory, litellm_record

FEB = Period(2025, 2)
PROD = "a1" * 32  # sha256-shaped hashes, as LiteLLM logs `sk-` keys
CI = "c2" * 32
SPARE = "e3" * 32
STRANGER = "f4" * 32


def at(day: str, hour: int = 12) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC).replace(hour=hour)


def fact(*, key: str, alias: str = "", end_user: str, cost: str) -> UsageFact:
    record = litellm_record(end_user=end_user, cost=Decimal(cost))
    record["metadata"]["user_api_key_hash"] = key
    record["metadata"]["user_api_key_alias"] = alias or None
    parsed = parse_usage_record(record)
    assert isinstance(parsed, UsageFact), parsed
    return parsed


def bill(moment: datetime, *facts: UsageFact) -> None:
    """One commit_usage_facts() call: its debits are one INSERT, so one run of the statement trigger."""
    with frozen_now(moment):
        outcomes = commit_usage_facts(facts=list(facts))
    assert [o.outcome for o in outcomes] == ["processed"] * len(facts), outcomes


@pytest.fixture
def february(account: BillingAccount) -> BillingAccount:
    """Four keys and six end users on one account in February 2025 (credits: 1 per µUSD).

    By key:      PROD 1,600 (4 calls) · gateway 450 (3) · CI 400 (2) · SPARE 20 (1)   = 2,470
    By end user: svc-a 1,520 · ci-runner 400 · acct-alice 300 · acct-bob 100 · svc-b 100 · acct-carol 50
    """
    ApiKeyBindingFactory(account=account, key_hash=PROD)
    ApiKeyBindingFactory(account=account, key_hash=CI)
    ApiKeyBindingFactory(account=account, key_hash=SPARE)
    ApiKeyBindingFactory(key_hash=STRANGER)  # another account's key: never on this invoice
    bill(
        at("2025-02-03"),
        *(fact(key=PROD, alias="prod", end_user="svc-a", cost="0.0005") for _ in range(3)),
        fact(key=CI, end_user="ci-runner", cost="0.0002"),
        fact(key=CI, end_user="ci-runner", cost="0.0002"),
        fact(key=MASTER_KEY_HASH, end_user="acct-alice", cost="0.0003"),
        fact(key=MASTER_KEY_HASH, end_user="acct-bob", cost="0.0001"),
        fact(key=SPARE, alias="spare", end_user="svc-a", cost="0.00002"),
        fact(key=STRANGER, end_user="svc-a", cost="0.0009"),
    )
    bill(at("2025-02-03", 15), fact(key=MASTER_KEY_HASH, end_user="acct-carol", cost="0.00005"))
    bill(at("2025-02-20"), fact(key=PROD, alias="prod", end_user="svc-b", cost="0.0001"))
    with frozen_now(at("2025-02-21")):
        grant_credits(account=account, amount_credits=10_000, reason="grant")  # not usage: in no breakdown
    bill(at("2025-01-31", 23), fact(key=CI, end_user="ci-runner", cost="0.007"))  # January
    bill(at("2025-03-01", 0), fact(key=CI, end_user="ci-runner", cost="0.009"))  # March
    return account


def ledger_truth(account: BillingAccount, period: Period, field: str) -> dict[str, tuple[int, int]]:
    """(calls, credits used) per receipt `field` for the period, straight from the ledger rows."""
    start = datetime.combine(period.start, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(period.end, datetime.min.time(), tzinfo=UTC)
    usage = CreditLedgerEntry.objects.filter(account=account, reason="usage", created_at__gte=start, created_at__lt=end)
    rows = usage.values(f"receipt__{field}").annotate(calls=Count("id"), credits=Sum("amount_credits"))
    return {row[f"receipt__{field}"]: (row["calls"], -row["credits"]) for row in rows}


def expected_lines(truth: dict[str, tuple[int, int]], top_n: int) -> list[tuple[str | None, int, int, int]]:
    """(key or None for others, calls, credits, others_count): the top N by credits, then the rest in one line."""
    ranked = sorted(truth.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    lines: list[tuple[str | None, int, int, int]] = [(k, c, cr, 0) for k, (c, cr) in ranked[:top_n]]
    rest = ranked[top_n:]
    if rest:
        lines.append((None, sum(c for _, (c, _) in rest), sum(cr for _, (_, cr) in rest), len(rest)))
    return lines


class _Lines(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, str]] = []
        self.used = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if values.get("data-line") in ("api_key", "end_user"):
            self.lines.append(values)
        if values.get("data-field") == "used_credits":
            self.used = int(values["data-value"])


def page_breakdown(html: str) -> dict[str, Any]:
    parser = _Lines()
    parser.feed(html)

    def lines(kind: str) -> list[tuple[str | None, int, int, int]]:
        return [
            (
                None if int(ln["data-others"]) else ln["data-key"],
                int(ln["data-count"]),
                int(ln["data-credits"]),
                int(ln["data-others"]),
            )
            for ln in parser.lines
            if ln["data-line"] == kind
        ]

    return {"used": parser.used, "api_key": lines("api_key"), "end_user": lines("end_user")}


def csv_breakdown(text: str) -> dict[str, Any]:
    rows = list(csv.DictReader(io.StringIO(text)))

    def lines(section: str) -> list[tuple[str | None, int, int, int]]:
        return [
            (
                None if r["others_count"] else r["item"],
                int(r["count"]),
                int(r["credits"]),
                int(r["others_count"] or 0),
            )
            for r in rows
            if r["section"] == section
        ]

    used = next(int(r["credits"]) for r in rows if (r["section"], r["item"]) == ("used", "total"))
    return {"used": used, "api_key": lines("api_key"), "end_user": lines("end_user")}


def json_breakdown(body: dict[str, Any]) -> dict[str, Any]:
    def lines(field: str, key: str) -> list[tuple[str | None, int, int, int]]:
        return [(r[key], r["calls"], r["credits"], r["others_count"]) for r in body[field]]

    return {
        "used": body["used_credits"],
        "api_key": lines("by_api_key", "api_key_hash"),
        "end_user": lines("by_end_user", "end_user"),
    }


def logged_in(account: BillingAccount) -> Client:
    client = Client()
    client.force_login(account.owner)
    return client


# --- the breakdown -----------------------------------------------------------------------------------


def test_breakdown_is_top_n_plus_others_and_sums_to_the_credits_used(february: BillingAccount, settings) -> None:
    settings.BILLING_INVOICE_TOP_N = 2
    invoice = invoice_for_account(account=february, period=FEB)
    assert invoice.used_credits == 2_470
    assert invoice.breakdown_top_n == 2

    keys = [(line.key, line.calls, line.credits, line.others_count) for line in invoice.by_api_key]
    assert keys == [(PROD, 4, 1_600, 0), (MASTER_KEY_HASH, 3, 450, 0), (None, 3, 420, 2)]
    assert keys == expected_lines(ledger_truth(february, FEB, "api_key_hash"), 2)
    users = [(line.key, line.calls, line.credits, line.others_count) for line in invoice.by_end_user]
    assert users == [("svc-a", 4, 1_520, 0), ("ci-runner", 2, 400, 0), (None, 4, 550, 4)]
    assert users == expected_lines(ledger_truth(february, FEB, "end_user"), 2)

    for lines in (invoice.by_api_key, invoice.by_end_user):
        assert sum(line.credits for line in lines) == invoice.used_credits == invoice.totals.credits
        assert sum(line.calls for line in lines) == invoice.totals.calls
        assert sum(line.total_tokens for line in lines) == invoice.totals.total_tokens
        assert sum(line.usd for line in lines) == invoice.used_usd

    # The alias when LiteLLM logged one, else the hash shortened; the others line says how many it folds.
    assert [line.label for line in invoice.by_api_key] == ["prod", "litellm_prox…", "others (2)"]
    assert invoice.by_end_user[-1].label == "others (4)" and invoice.by_end_user[-1].is_others
    assert api_key_label(CI, "") == "c2c2c2c2c2c2…"


def test_with_room_for_everyone_there_is_no_others_line(february: BillingAccount, settings) -> None:
    settings.BILLING_INVOICE_TOP_N = 10
    invoice = invoice_for_account(account=february, period=FEB)
    truth = ledger_truth(february, FEB, "api_key_hash")
    assert [(line.key, line.calls, line.credits) for line in invoice.by_api_key] == [
        (PROD, 4, 1_600),
        (MASTER_KEY_HASH, 3, 450),
        (CI, 2, 400),
        (SPARE, 1, 20),
    ]
    assert {line.key: (line.calls, line.credits) for line in invoice.by_api_key} == truth
    assert STRANGER not in truth
    # Ties on credits and calls are ordered by name: acct-bob before svc-b.
    assert [line.key for line in invoice.by_end_user] == [
        "svc-a",
        "ci-runner",
        "acct-alice",
        "acct-bob",
        "svc-b",
        "acct-carol",
    ]
    assert not any(line.is_others for line in invoice.by_api_key + invoice.by_end_user)
    # January's invoice has its own breakdown: the one CI call of the 31st.
    january = invoice_for_account(account=february, period=Period(2025, 1))
    assert [(line.key, line.credits) for line in january.by_api_key] == [(CI, 7_000)]
    assert january.used_credits == 7_000


def test_top_zero_folds_everything_into_others(february: BillingAccount, settings) -> None:
    settings.BILLING_INVOICE_TOP_N = 0
    invoice = invoice_for_account(account=february, period=FEB)
    assert [(line.key, line.calls, line.credits, line.others_count) for line in invoice.by_api_key] == [
        (None, 10, 2_470, 4)
    ]
    assert [(line.key, line.credits, line.others_count) for line in invoice.by_end_user] == [(None, 2_470, 6)]


def test_page_csv_and_json_agree_and_sum_to_the_total(february: BillingAccount, settings) -> None:
    settings.BILLING_INVOICE_TOP_N = 2
    client = logged_in(february)
    html = client.get("/billing/invoice/2025-02/")
    text = client.get("/billing/invoice/2025-02/", {"format": "csv"})
    api = client.get("/api/billing/invoice", {"period": "2025-02"})
    assert html.status_code == text.status_code == api.status_code == 200

    on_page = page_breakdown(html.content.decode())
    in_csv = csv_breakdown(text.content.decode())
    in_json = json_breakdown(api.json())
    assert on_page == in_csv == in_json
    for surface in (on_page, in_csv, in_json):
        assert surface["api_key"] == expected_lines(ledger_truth(february, FEB, "api_key_hash"), 2)
        assert surface["end_user"] == expected_lines(ledger_truth(february, FEB, "end_user"), 2)
        for kind in ("api_key", "end_user"):
            assert sum(line[2] for line in surface[kind]) == surface["used"] == 2_470

    body = api.json()
    assert body["breakdown_top_n"] == 2
    assert body["by_api_key"][0]["api_key_alias"] == "prod" and body["by_api_key"][0]["label"] == "prod"
    assert body["by_api_key"][-1]["is_others"] is True and body["by_api_key"][-1]["label"] == "others (2)"
    assert Decimal(body["by_end_user"][0]["usd"]) == Decimal("0.001520")
    page = html.content.decode()
    assert "Usage by API key" in page and "Usage by end user" in page and "others (4)" in page
    assert STRANGER not in page and STRANGER not in text.content.decode()


# --- the summary behind it ---------------------------------------------------------------------------


def test_one_statement_is_one_upsert_per_group(account: BillingAccount) -> None:
    ApiKeyBindingFactory(account=account, key_hash=PROD)
    moment = at("2025-02-03")
    bill(moment, *(fact(key=PROD, alias="prod", end_user="svc-a", cost="0.000001") for _ in range(5)))
    bill(moment, fact(key=PROD, alias="", end_user="svc-a", cost="0.000002"))  # the ON CONFLICT path
    [payer] = LedgerPayerSummary.objects.filter(account=account)
    assert (payer.day, payer.api_key_hash, payer.end_user, payer.api_key_alias) == (
        moment.date(),
        PROD,
        "svc-a",
        "prod",
    )
    assert (payer.entries, payer.amount_credits) == (6, -7)
    assert payer.total_tokens == 6 * parse_total_tokens()
    [daily] = LedgerDailySummary.objects.filter(account=account, reason="usage")
    assert (daily.entries, daily.amount_credits, daily.total_tokens) == (6, -7, payer.total_tokens)
    assert daily.cost_usd == payer.cost_usd == Decimal("0.000007")


def parse_total_tokens() -> int:
    parsed = parse_usage_record(litellm_record())
    assert isinstance(parsed, UsageFact)
    return parsed.total_tokens


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO invoices_ledgerpayersummary (account_id, day, api_key_hash, end_user, api_key_alias, entries,"
        " amount_credits, prompt_tokens, completion_tokens, total_tokens, cost_usd)"
        " SELECT id, '2025-02-04', 'x', 'y', '', 1, -5, 0, 0, 0, 0 FROM accounts_billingaccount",
        "UPDATE invoices_ledgerpayersummary SET amount_credits = 0",
        "DELETE FROM invoices_ledgerpayersummary",
        "UPDATE invoices_ledgerdailysummary SET amount_credits = 0",
    ],
    ids=["insert-payer", "update-payer", "delete-payer", "update-daily"],
)
def test_summaries_refuse_direct_writes(account: BillingAccount, sql: str) -> None:
    ApiKeyBindingFactory(account=account, key_hash=PROD)
    bill(at("2025-02-03"), fact(key=PROD, end_user="svc-a", cost="0.00001"))
    before = list(LedgerPayerSummary.objects.values_list("entries", "amount_credits"))
    with pytest.raises(DatabaseError, match="written only by the ledger trigger"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert list(LedgerPayerSummary.objects.values_list("entries", "amount_credits")) == before == [(1, -10)]


@contextmanager
def guard_disabled() -> Iterator[Any]:
    """Plant a corruption the database would refuse (tests only)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses pending deferred checks
        cursor.execute("ALTER TABLE invoices_ledgerpayersummary DISABLE TRIGGER payer_summary_guard")
        try:
            yield cursor
        finally:
            cursor.execute("ALTER TABLE invoices_ledgerpayersummary ENABLE TRIGGER payer_summary_guard")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def books_only_reconcile() -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    today = datetime.now(UTC).date().isoformat()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--since", today, "--books-only", "--json", stdout=out)
    return int(exit_info.value.code), json.loads(out.getvalue())


@pytest.mark.parametrize(
    ("plant", "ledger_has_it", "summary_has_it"),
    [
        ("UPDATE invoices_ledgerpayersummary SET amount_credits = amount_credits + 5 WHERE end_user = 'svc-b'", 1, 1),
        ("UPDATE invoices_ledgerpayersummary SET api_key_alias = 'renamed' WHERE end_user = 'svc-b'", 1, 1),
        ("DELETE FROM invoices_ledgerpayersummary WHERE end_user = 'svc-b'", 1, 0),
        (
            "INSERT INTO invoices_ledgerpayersummary (account_id, day, api_key_hash, end_user, api_key_alias, entries,"
            " amount_credits, prompt_tokens, completion_tokens, total_tokens, cost_usd)"
            " SELECT account_id, day, api_key_hash, 'svc-b', '', 1, -1, 0, 0, 0, 0"
            " FROM invoices_ledgerpayersummary WHERE end_user = 'svc-a'",
            0,
            1,
        ),
    ],
    ids=["amount", "alias", "row-lost", "row-invented"],
)
def test_summary_drift_catches_a_planted_drift_in_the_payer_summary(
    account: BillingAccount, plant: str, ledger_has_it: int, summary_has_it: int
) -> None:
    ApiKeyBindingFactory(account=account, key_hash=PROD)
    now = datetime.now(UTC)
    bill(now, fact(key=PROD, alias="prod", end_user="svc-a", cost="0.00001"))
    if ledger_has_it:
        bill(now, fact(key=PROD, alias="prod", end_user="svc-b", cost="0.00002"))
    assert books_only_reconcile()[0] == 0, "clean before the plant"

    with guard_disabled() as cursor:
        cursor.execute(plant)
    code, report = books_only_reconcile()

    assert code == 1
    assert {kind: n for kind, n in report["found"].items() if n} == {"summary_drift": 1}
    [item] = report["discrepancies"]["summary_drift"]
    assert item["table"] == "invoices_ledgerpayersummary"
    assert (item["account"], item["api_key_hash"], item["end_user"]) == (str(account.public_id), PROD, "svc-b")
    assert (item.get("ledger") is not None, item.get("summary") is not None) == (
        bool(ledger_has_it),
        bool(summary_has_it),
    )


# --- the migration, both ways ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_backfills_the_payer_summary_and_reverses_to_the_row_trigger() -> None:
    account = BillingAccountFactory()
    ApiKeyBindingFactory(account=account, key_hash=PROD)
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("invoices")
    try:
        executor.migrate([("invoices", "0002_summary_trigger")])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'accounts_creditledgerentry'::regclass"
                " AND tgname LIKE 'ledger_summarise%'"
            )
            assert [name for (name,) in cursor.fetchall()] == ["ledger_summarise"]
            cursor.execute("SELECT to_regclass('invoices_ledgerpayersummary')")
            assert cursor.fetchone() == (None,)
        # Usage billed under the row-level trigger of 0002.
        bill(datetime.now(UTC), *(fact(key=PROD, end_user=f"u{i % 2}", cost="0.00001") for i in range(3)))
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)

    rows = dict(LedgerPayerSummary.objects.filter(account=account).values_list("end_user", "amount_credits"))
    assert rows == {"u0": -20, "u1": -10}
    assert books_only_reconcile()[0] == 0
    # Back on the statement trigger: new usage lands in both summaries.
    bill(datetime.now(UTC) + timedelta(microseconds=1), fact(key=PROD, end_user="u1", cost="0.00001"))
    assert LedgerPayerSummary.objects.get(account=account, end_user="u1").amount_credits == -20
    assert books_only_reconcile()[0] == 0
