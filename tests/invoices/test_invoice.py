"""The invoice and balance surfaces tie out to the ledger (SPEC sections 6 and 7, issue 5).

The scenario month (February 2025) has a top-up, usage in two model groups on
several days (one call at 00:00:00 on the 1st, one at the last microsecond of
the 28th), a zero-cost call, a charge that takes the balance below zero, a
refund and a negative adjustment; January and March have entries that must
stay out of February.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import credits_to_usd
from accounts.services import grant_credits
from integrations.litellm.records import parse_usage_record
from invoices.charts import daily_usage_chart, nice_ceiling
from invoices.formatting import format_credits, format_usd
from invoices.selectors import DayLine, Period, current_period, invoice_for_account, parse_period
from receipts.facts import UsageFact
from receipts.services import commit_usage_facts
from tests.clock import frozen_now
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory, litellm_record, to_body
from tests.reconciliation.test_reconcile import trigger_disabled

FEB = Period(2025, 2)


def at(day: date | str, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    day = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=UTC)


def bill(
    moment: datetime,
    *,
    cost: str,
    model_group: str = "gpt-4o",
    end_user: str = "acct-alice",
    prompt: int = 10,
    completion: int = 20,
) -> None:
    record = litellm_record(
        end_user=end_user,
        cost=Decimal(cost),
        model_group=model_group,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )
    fact = parse_usage_record(record)
    assert isinstance(fact, UsageFact), fact
    with frozen_now(moment):
        [outcome] = commit_usage_facts(facts=[fact])
    assert outcome.outcome == "processed"


def add(moment: datetime, account: BillingAccount, amount: int, reason: str, key: str | None = None) -> None:
    with frozen_now(moment):
        result = grant_credits(account=account, amount_credits=amount, reason=reason, idempotency_key=key)
    assert result.created


@pytest.fixture
def february(account: BillingAccount, internal_client: Any) -> BillingAccount:
    """The scenario; returns the account. Expected February numbers are in EXPECTED."""
    add(at("2025-01-15"), account, 2_000, "grant", "jan-grant")
    bill(at("2025-01-20"), cost="0.0004")  # 400 credits → opening 1,600
    bill(at("2025-02-01", 0, 0, 0), cost="0.0001", model_group="claude-3-5")  # 100, first instant of February
    add(at("2025-02-03", 9), account, 500, "top_up", "feb-top-up")
    bill(at("2025-02-03", 10), cost="0.0000135", prompt=7, completion=3)  # 13.5 → 14 credits, rounded up
    bill(at("2025-02-03", 11), cost="0")  # a zero-cost call: 0 credits, still a call
    # A charge that takes the balance below zero (POST_CALL_NEVER_BLOCKS), through the ingest endpoint.
    big = litellm_record(
        cost=Decimal("0.005"),
        model_group="claude-3-5",
        prompt_tokens=4000,
        completion_tokens=1000,
        total_tokens=5000,
    )
    with frozen_now(at("2025-02-10")):
        response = internal_client.post(
            "/api/internal/billing/ingest", data=to_body([big]), content_type="application/json"
        )
    assert response.status_code == 200 and response.json()["processed"] == 1, response.content
    add(at("2025-02-11"), account, 300, "refund", "feb-refund")
    add(at("2025-02-11", 13), account, -50, "adjustment", "feb-adjustment")
    bill(at("2025-02-28", 23, 59, 59, 999_999), cost="0.000001")  # 1 credit, last instant of February
    bill(at("2025-03-01", 0, 0, 0), cost="0.0002")  # 200, first instant of March
    add(at("2025-03-02"), account, 10_000, "grant", "mar-grant")
    return account


EXPECTED = {
    "opening": 1_600,
    "added": {"top_up": 500, "grant": 0, "refund": 300, "adjustment": -50},
    "added_total": 750,
    "used": 100 + 14 + 0 + 5_000 + 1,
    "closing": 1_600 + 750 - 5_115,
    "by_model_group": {"claude-3-5": (2, 5_100, 30 + 5_000), "gpt-4o": (3, 15, 10 + 30 + 30)},
    "days_with_usage": {"2025-02-01": 100, "2025-02-03": 14, "2025-02-10": 5_000, "2025-02-28": 1},
}


@dataclass
class LedgerTruth:
    """The period's numbers computed straight from the raw ledger rows (not the summary)."""

    opening: int
    added: dict[str, int]
    used: int
    by_model_group: dict[str, tuple[int, int, int]]
    by_day: dict[str, tuple[int, int]]
    balance_before: int
    balance_after: int
    lowest_balance: int


def ledger_truth(account: BillingAccount, period: Period) -> LedgerTruth:
    start = datetime.combine(period.start, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(period.end, datetime.min.time(), tzinfo=UTC)
    entries = CreditLedgerEntry.objects.filter(account=account)
    in_period = entries.filter(created_at__gte=start, created_at__lt=end)
    usage = in_period.filter(reason="usage")
    opening = entries.filter(created_at__lt=start).aggregate(s=Sum("amount_credits"))["s"] or 0
    added = dict(in_period.exclude(reason="usage").values_list("reason").annotate(s=Sum("amount_credits")))
    used = -(usage.aggregate(s=Sum("amount_credits"))["s"] or 0)
    by_group = {
        row["receipt__model_group"]: (row["calls"], -row["credits"], row["tokens"])
        for row in usage.values("receipt__model_group").annotate(
            calls=Count("id"), credits=Sum("amount_credits"), tokens=Sum("receipt__total_tokens")
        )
    }
    by_day = {
        row["day"].isoformat(): (row["calls"], -row["credits"])
        for row in usage.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(calls=Count("id"), credits=Sum("amount_credits"))
    }
    before = entries.filter(created_at__lt=start).order_by("-id").first()
    last = in_period.order_by("-id").first()
    lowest = min(in_period.values_list("balance_after", flat=True), default=0)
    return LedgerTruth(
        opening=opening,
        added=added,
        used=used,
        by_model_group=by_group,
        by_day=by_day,
        balance_before=before.balance_after if before else 0,
        balance_after=last.balance_after if last else (before.balance_after if before else 0),
        lowest_balance=lowest,
    )


class _DataAttributes(HTMLParser):
    """Collects the invoice page's data-field values and data-line rows."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.lines: list[dict[str, str]] = []
        self.bars: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "data-field" in values and "data-value" in values:
            self.fields[values["data-field"]] = values["data-value"]
        if "data-line" in values:
            self.lines.append(values)
        if tag == "rect" and "data-day" in values:
            self.bars.append(values)


def page_numbers(html: str) -> dict[str, Any]:
    parser = _DataAttributes()
    parser.feed(html)
    lines = parser.lines
    return {
        "opening": int(parser.fields["opening_credits"]),
        "added_total": int(parser.fields["added_credits"]),
        "used": int(parser.fields["used_credits"]),
        "closing": int(parser.fields["closing_credits"]),
        "usd": {k: Decimal(parser.fields[f"{k}_usd"]) for k in ("opening", "added", "used", "closing")},
        "added": {ln["data-key"]: int(ln["data-credits"]) for ln in lines if ln["data-line"] == "added"},
        "by_model_group": {
            ln["data-key"]: (int(ln["data-count"]), int(ln["data-credits"]), int(ln["data-total-tokens"]))
            for ln in lines
            if ln["data-line"] == "model_group"
        },
        "by_day": {
            ln["data-key"]: (int(ln["data-count"]), int(ln["data-credits"]), int(ln["data-added"]))
            for ln in lines
            if ln["data-line"] == "day"
        },
        "bars": {bar["data-day"]: int(bar["data-credits"]) for bar in parser.bars},
    }


def csv_numbers(text: str) -> dict[str, Any]:
    rows = list(csv.DictReader(io.StringIO(text)))
    by = {(r["section"], r["item"]): r for r in rows}
    return {
        "rows": rows,
        "opening": int(by["balance", "opening"]["credits"]),
        "added_total": int(by["added", "total"]["credits"]),
        "used": int(by["used", "total"]["credits"]),
        "closing": int(by["balance", "closing"]["credits"]),
        "usd": {
            "opening": Decimal(by["balance", "opening"]["usd"]),
            "added": Decimal(by["added", "total"]["usd"]),
            "used": Decimal(by["used", "total"]["usd"]),
            "closing": Decimal(by["balance", "closing"]["usd"]),
        },
        "added": {r["item"]: int(r["credits"]) for r in rows if r["section"] == "added" and r["item"] != "total"},
        "by_model_group": {
            r["item"]: (int(r["count"]), int(r["credits"]), int(r["total_tokens"]))
            for r in rows
            if r["section"] == "model_group"
        },
        "by_day": {
            r["item"]: (int(r["count"]), int(r["credits"]), int(r["added_credits"]))
            for r in rows
            if r["section"] == "day"
        },
    }


def json_numbers(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "opening": body["opening_balance_credits"],
        "added_total": body["added_credits"],
        "used": body["used_credits"],
        "closing": body["closing_balance_credits"],
        "usd": {
            "opening": Decimal(body["opening_balance_usd"]),
            "added": Decimal(body["added_usd"]),
            "used": Decimal(body["used_usd"]),
            "closing": Decimal(body["closing_balance_usd"]),
        },
        "added": {r["reason"]: r["credits"] for r in body["added_by_reason"]},
        "by_model_group": {
            r["model_group"]: (r["calls"], r["credits"], r["total_tokens"]) for r in body["by_model_group"]
        },
        "by_day": {r["day"]: (r["calls"], r["used_credits"], r["added_credits"]) for r in body["by_day"]},
    }


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- the identity, and the three surfaces against the ledger ---------------------------------


def test_invoice_identity_and_ledger_agreement(february: BillingAccount) -> None:
    invoice = invoice_for_account(account=february, period=FEB)
    truth = ledger_truth(february, FEB)

    # opening + added − used = closing, exactly, and it is the balance delta of the ledger.
    assert invoice.opening_credits + invoice.added_credits - invoice.used_credits == invoice.closing_credits
    assert invoice.opening_credits == EXPECTED["opening"] == truth.opening == truth.balance_before
    assert invoice.closing_credits == EXPECTED["closing"] == truth.balance_after
    assert invoice.closing_credits - invoice.opening_credits == truth.balance_after - truth.balance_before
    assert truth.lowest_balance < 0, "the scenario must take the balance below zero"
    assert invoice.closing_credits < 0

    assert {line.reason: line.credits for line in invoice.added_by_reason} == EXPECTED["added"]
    assert {k: v for k, v in EXPECTED["added"].items() if v} == truth.added
    assert invoice.added_credits == EXPECTED["added_total"] == sum(truth.added.values())
    assert invoice.used_credits == EXPECTED["used"] == truth.used

    # By model group and by day, each summing to the total, each equal to the raw ledger.
    groups = {g.model_group: (g.calls, g.credits, g.total_tokens) for g in invoice.by_model_group}
    assert groups == EXPECTED["by_model_group"] == truth.by_model_group
    assert sum(g.credits for g in invoice.by_model_group) == invoice.used_credits == invoice.totals.credits
    assert sum(g.calls for g in invoice.by_model_group) == invoice.totals.calls == 5
    days = {d.day.isoformat(): (d.calls, d.used_credits) for d in invoice.by_day if d.calls}
    assert days == truth.by_day
    assert {k: v[1] for k, v in days.items()} == EXPECTED["days_with_usage"]
    assert [d.day for d in invoice.by_day] == [date(2025, 2, 1) + timedelta(days=i) for i in range(28)]
    assert sum(d.used_credits for d in invoice.by_day) == invoice.used_credits
    assert sum(d.added_credits for d in invoice.by_day) == invoice.added_credits
    assert invoice.by_day[-1].closing_balance_credits == invoice.closing_credits
    # The end-of-day balance of the day of the big charge is the ledger's balance_after then.
    tenth = next(d for d in invoice.by_day if d.day == date(2025, 2, 10))
    assert tenth.closing_balance_credits == 1_600 - 100 + 500 - 14 - 5_000 < 0

    # USD is credits_to_usd of the same credits (the rate used when charging).
    assert invoice.used_usd == credits_to_usd(5_115) == Decimal("0.005115")
    assert invoice.closing_usd == credits_to_usd(invoice.closing_credits) < 0
    assert not invoice.is_running


def test_html_csv_and_json_agree_with_each_other_and_the_ledger(february: BillingAccount) -> None:
    client = logged_in(february.owner)
    html = client.get("/billing/invoice/2025-02/")
    assert html.status_code == 200
    text = client.get("/billing/invoice/2025-02/", {"format": "csv"})
    assert text.status_code == 200
    assert text["Content-Type"].startswith("text/csv")
    assert "attachment" in text["Content-Disposition"]
    api = client.get("/api/billing/invoice", {"period": "2025-02"})
    assert api.status_code == 200, api.content

    on_page = page_numbers(html.content.decode())
    in_csv = csv_numbers(text.content.decode())
    in_json = json_numbers(api.json())
    truth = ledger_truth(february, FEB)

    for surface in (on_page, in_csv, in_json):
        assert surface["opening"] == truth.opening == truth.balance_before
        assert surface["closing"] == truth.balance_after
        assert surface["opening"] + surface["added_total"] - surface["used"] == surface["closing"]
        assert surface["used"] == truth.used
        assert {k: v for k, v in surface["added"].items() if v} == truth.added
        assert surface["by_model_group"] == truth.by_model_group
        assert {k: v[:2] for k, v in surface["by_day"].items() if v[0]} == truth.by_day
        assert sum(v[1] for v in surface["by_day"].values()) == surface["used"]
        assert sum(v[2] for v in surface["by_day"].values()) == surface["added_total"]
        assert sum(v[1] for v in surface["by_model_group"].values()) == surface["used"]
        assert surface["usd"] == {
            "opening": credits_to_usd(truth.opening),
            "added": credits_to_usd(sum(truth.added.values())),
            "used": credits_to_usd(truth.used),
            "closing": credits_to_usd(truth.balance_after),
        }

    keys = ("opening", "added_total", "used", "closing", "usd", "added", "by_model_group", "by_day")
    assert {k: on_page[k] for k in keys} == {k: in_csv[k] for k in keys} == {k: in_json[k] for k in keys}
    # The chart draws exactly the daily numbers.
    assert on_page["bars"] == {day: values[1] for day, values in on_page["by_day"].items()}

    page = html.content.decode()
    assert "−2,765" in page  # the negative closing balance, with a real minus sign
    assert "$0.005115" in page  # USD of the credits used
    # Self-contained: no script and nothing loaded from elsewhere (the machine may be offline).
    assert "<script" not in page
    assert "https://" not in page and "http://" not in page


def test_csv_lines_are_the_page_lines_in_order(february: BillingAccount) -> None:
    client = logged_in(february.owner)
    rows = csv_numbers(client.get("/billing/invoice/2025-02/?format=csv").content.decode())["rows"]
    sections = [r["section"] for r in rows]
    assert sections[:7] == ["balance", "added", "added", "added", "added", "added", "used"]
    assert sections[7] == "balance" and rows[7]["item"] == "closing"
    assert sections.count("day") == 28
    assert all(r["period"] == "2025-02" and r["account"] == str(february.public_id) for r in rows)


def test_the_tie_out_badge_compares_the_summed_movements_with_the_ledgers_own_balance(
    february: BillingAccount,
) -> None:
    invoice = invoice_for_account(account=february, period=FEB)
    assert (invoice.ledger_opening_credits, invoice.ledger_closing_credits) == (
        invoice.opening_credits,
        invoice.closing_credits,
    )
    assert invoice.ties_out
    page = logged_in(february.owner).get("/billing/invoice/2025-02/").content.decode()
    assert "✓ ties out with the ledger" in page and 'data-field="ledger-mismatch"' not in page

    # A grant the summary never saw (its trigger switched off by hand), the books' last entry: the ledger
    # moved, the summed movements did not.
    with trigger_disabled("accounts_creditledgerentry", "ledger_summarise_statement"):
        add(at("2025-03-03"), february, 77, "grant", key="unsummarised")
    march = invoice_for_account(account=february, period=Period(2025, 3))
    assert march.ledger_closing_credits == march.closing_credits + 77
    assert march.ledger_opening_credits == march.opening_credits  # February's edge is untouched
    assert not march.ties_out
    page = logged_in(february.owner).get("/billing/invoice/2025-03/").content.decode()
    assert "✓ ties out" not in page and 'data-field="ledger-mismatch"' in page
    assert invoice_for_account(account=february, period=FEB).ties_out


def test_invoice_page_shows_every_number_of_the_month(february: BillingAccount) -> None:
    page = logged_in(february.owner).get("/billing/invoice/2025-02/").content.decode()
    for number in ("1,600", "750", "5,115", "−2,765", "5,100", "−50"):
        assert number in page
    assert 'data-chart="daily-usage"' in page
    assert "claude-3-5" in page and "gpt-4o" in page


def test_the_month_after_opens_with_the_closing_balance(february: BillingAccount) -> None:
    march = invoice_for_account(account=february, period=Period(2025, 3))
    assert march.opening_credits == invoice_for_account(account=february, period=FEB).closing_credits
    assert march.used_credits == 200
    assert march.added_credits == 10_000
    february.refresh_from_db()
    # No entries after March: the closing balance of March is today's balance.
    assert march.closing_credits == february.balance_credits


def test_balance_endpoint_reads_the_ledger_balance(february: BillingAccount) -> None:
    response = logged_in(february.owner).get("/billing/balance")
    assert response.status_code == 200
    body = response.json()
    total = CreditLedgerEntry.objects.filter(account=february).aggregate(s=Sum("amount_credits"))["s"]
    assert set(body) == {
        "account",
        "balance_credits",
        "balance_usd",
        "available_credits",
        "held_credits",
        "promotional_credits",
        "promotions",
    }
    assert body["promotional_credits"] == 0 and body["promotions"] == []
    assert body["available_credits"] == body["balance_credits"] and body["held_credits"] == 0  # no call in flight
    assert body["account"] == str(february.public_id)
    assert body["balance_credits"] == total == -2_765 - 200 + 10_000
    assert Decimal(body["balance_usd"]) == credits_to_usd(total)


def test_invoice_reads_a_constant_number_of_queries(
    february: BillingAccount, django_assert_max_num_queries: Any
) -> None:
    # The summaries keep the invoice independent of the number of ledger entries: two queries over the
    # daily summary, one over the payer summary (both breakdowns), and one index probe of the ledger at
    # each edge of the period (the tie-out figures).
    with django_assert_max_num_queries(5):
        invoice_for_account(account=february, period=FEB)
    client = logged_in(february.owner)
    with django_assert_max_num_queries(11):
        assert client.get("/billing/invoice/2025-02/").status_code == 200


# --- who may see what ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/billing/invoice/",
        "/billing/invoice/2025-02/",
        "/billing/invoice/2025-02/?format=csv",
    ],
)
def test_anonymous_users_are_sent_to_log_in(db: None, url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("url", ["/api/billing/invoice?period=2025-02", "/billing/balance"])
def test_anonymous_api_calls_are_refused(db: None, url: str) -> None:
    response = Client().get(url)
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_another_users_account_is_a_404_everywhere(february: BillingAccount) -> None:
    stranger = UserFactory()
    BillingAccountFactory(owner=stranger, name="Stranger's own account")
    client = logged_in(stranger)
    other = str(february.public_id)
    for url, params in [
        ("/billing/invoice/", {"account": other}),
        ("/billing/invoice/2025-02/", {"account": other}),
        ("/billing/invoice/2025-02/", {"account": other, "format": "csv"}),
        ("/api/billing/invoice", {"period": "2025-02", "account": other}),
        ("/billing/balance", {"account": other}),
    ]:
        response = client.get(url, params)
        assert response.status_code == 404, (url, params)
        assert b"1,600" not in response.content and b"2765" not in response.content
        assert str(february.name).encode() not in response.content
    # A malformed account id is a 404 too, not a 500.
    assert client.get("/billing/invoice/2025-02/", {"account": "not-a-uuid"}).status_code == 404
    assert client.get("/billing/balance", {"account": "not-a-uuid"}).status_code in (400, 404)


def test_a_user_without_an_account_gets_a_plain_404(db: None) -> None:
    response = logged_in(UserFactory()).get("/billing/invoice/")
    assert response.status_code == 404
    assert b"No billing account" in response.content


def test_a_user_with_two_accounts_picks_one(db: None) -> None:
    owner = UserFactory()
    first = BillingAccountFactory(owner=owner, name="First")
    second = BillingAccountFactory(owner=owner, name="Second")
    grant_credits(account=second, amount_credits=777, reason="grant")
    client = logged_in(owner)
    default = client.get("/billing/invoice/")
    assert default.status_code == 200
    assert page_numbers(default.content.decode())["closing"] == 0
    assert str(first.public_id) in default.content.decode()
    assert str(second.public_id) in default.content.decode()  # offered in the account switcher
    chosen = client.get("/billing/invoice/", {"account": str(second.public_id)})
    assert page_numbers(chosen.content.decode())["closing"] == 777
    assert client.get("/billing/balance", {"account": str(second.public_id)}).json()["balance_credits"] == 777
    api = client.get("/api/billing/invoice", {"account": str(second.public_id)}).json()
    assert api["closing_balance_credits"] == 777
    assert api["period"] == current_period().label


@pytest.mark.parametrize("period", ["2025-13", "2025-00", "2025-2", "25-02", "2025-02-01", "abcd-ef", "2999-01"])
def test_a_bad_period_is_a_404_on_the_page_and_a_400_on_the_api(account: BillingAccount, period: str) -> None:
    client = logged_in(account.owner)
    assert client.get(f"/billing/invoice/{period}/").status_code == 404
    response = client.get("/api/billing/invoice", {"period": period})
    assert response.status_code == 400
    body = response.json()
    assert "period" in body["fields"], body


def test_the_current_month_is_the_default(account: BillingAccount) -> None:
    grant_credits(account=account, amount_credits=1_234, reason="top_up")
    bill(datetime.now(UTC), cost="0.000034")
    client = logged_in(account.owner)
    numbers = page_numbers(client.get("/billing/invoice/").content.decode())
    assert numbers == page_numbers(client.get(f"/billing/invoice/{current_period().label}/").content.decode())
    assert numbers["used"] == 34 and numbers["added_total"] == 1_234 and numbers["closing"] == 1_200
    api = client.get("/api/billing/invoice").json()
    assert api["is_running"] is True
    assert api["through"] == datetime.now(UTC).date().isoformat()


# --- login and logout -----------------------------------------------------------------------------


def test_login_page_logs_in_and_lands_on_the_invoice(account: BillingAccount) -> None:
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post(
        "/accounts/login/", {"username": account.owner.username, "password": "correct-horse-battery"}
    )
    assert response.status_code == 302 and response["Location"] == "/billing/invoice/"
    assert client.get("/billing/invoice/").status_code == 200
    bad = Client().post("/accounts/login/", {"username": account.owner.username, "password": "wrong"})
    assert bad.status_code == 200 and b"errorlist" in bad.content
    out = client.post("/accounts/logout/")
    assert out.status_code == 302
    assert client.get("/billing/invoice/").status_code == 302


# --- pieces -------------------------------------------------------------------------------------------


def test_parse_period() -> None:
    now = datetime(2026, 3, 15, tzinfo=UTC)
    assert parse_period("2026-03", now=now) == Period(2026, 3)
    assert parse_period(None, now=now) == Period(2026, 3)
    assert Period(2025, 12).end == date(2026, 1, 1)
    assert Period(2025, 1).previous == Period(2024, 12)
    with pytest.raises(ValueError):
        parse_period("2026-04", now=now)


def test_money_formatting() -> None:
    assert format_credits(-2765) == "−2,765"
    assert format_credits(1_000_000) == "1,000,000"
    assert format_usd(Decimal("0.000014")) == "$0.000014"
    assert format_usd(Decimal("1500.000000")) == "$1,500.00"
    assert format_usd(Decimal("-2.765000")) == "−$2.765"
    with pytest.raises(TypeError):
        format_usd(1.5)  # type: ignore[arg-type]


def test_chart_layout_is_proportional() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 5_000, 5_001)] == [1, 1, 5, 10, 20, 5_000, 10_000]
    days = [
        DayLine(date(2025, 2, 1), 1, 0, 0, 0, 5_000, 0, 0),
        DayLine(date(2025, 2, 2), 1, 0, 0, 0, 2_500, 0, 0),
        DayLine(date(2025, 2, 3), 0, 0, 0, 0, 0, 0, 0),
    ]
    chart = daily_usage_chart(days)
    tall, half, empty = chart.bars
    assert tall.height == chart.plot_bottom - chart.plot_top
    assert half.height == tall.height // 2
    assert empty.height == 0
    assert "5,000 credits" in tall.title


# --- property: any month of activity ties out ---------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["usage", "top_up", "grant", "refund", "adjustment"]),
        st.integers(min_value=1, max_value=5_000),
        st.integers(min_value=0, max_value=89),  # day offset from 2025-01-01: Jan, Feb, Mar
        st.sampled_from(["alpha", "beta"]),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_any_sequence_of_entries_ties_out(db: None, ops: list[tuple[str, int, int, str, bool]]) -> None:
    account = BillingAccountFactory()
    end_user = f"prop-{account.pk}"
    EndUserAliasFactory(account=account, end_user=end_user)
    # In time order, as the ledger receives them (entries are stamped with now()).
    for reason, amount, offset, group, negative in sorted(ops, key=lambda op: op[2]):
        moment = at(date(2025, 1, 1) + timedelta(days=offset), hour=offset % 24)
        if reason == "usage":
            bill(moment, cost=str(Decimal(amount) / 1_000_000), model_group=group, end_user=end_user)
        else:
            signed = -amount if reason == "adjustment" and negative else amount
            add(moment, account, signed, reason)
    for period in (Period(2025, 1), FEB, Period(2025, 3)):
        invoice = invoice_for_account(account=account, period=period)
        truth = ledger_truth(account, period)
        assert invoice.opening_credits == truth.opening
        assert invoice.opening_credits + invoice.added_credits - invoice.used_credits == invoice.closing_credits
        assert invoice.closing_credits == truth.balance_after
        assert invoice.used_credits == truth.used
        assert {g.model_group: (g.calls, g.credits, g.total_tokens) for g in invoice.by_model_group} == (
            truth.by_model_group
        )
        assert {d.day.isoformat(): (d.calls, d.used_credits) for d in invoice.by_day if d.calls} == truth.by_day
