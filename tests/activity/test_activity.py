"""The activity API and CSV: one row per call (billed or waiting), dated by call time, the owner's only."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from accounts.models import BillingAccount
from integrations.litellm.records import parse_usage_record
from receipts.facts import UsageFact
from receipts.services import commit_usage_facts
from tests.books import ingest_records
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record

pytestmark = pytest.mark.django_db
API = "/api/billing/activity"
START = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def _record(n: int, *, model: str = "gpt-4o-mini", cost: object = None, **extra: object) -> dict:
    started = START + timedelta(hours=n)
    return litellm_record(
        end_user="act-user",
        cost=Decimal("0.000100") if cost is None else cost,
        model_group=model,
        startTime=started.timestamp(),
        endTime=(started + timedelta(seconds=2)).timestamp(),
        **extra,
    )


@pytest.fixture
def owner_account(db) -> BillingAccount:
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="act-user")
    return account


@pytest.fixture
def owner_client(owner_account: BillingAccount) -> Client:
    client = Client()
    client.force_login(owner_account.owner)
    return client


def _bill(records: list[dict]) -> None:
    facts = [parse_usage_record(r) for r in records]
    assert all(isinstance(f, UsageFact) for f in facts)
    commit_usage_facts(facts=facts)


def test_pages_walk_every_call_newest_call_time_first(owner_client: Client, owner_account: BillingAccount) -> None:
    records = [_record(n, model="gpt-4o" if n % 3 == 0 else "gpt-4o-mini") for n in range(7)]
    _bill(list(reversed(records)))  # billed in the opposite order of their call times
    ingest_records(records=[_record(7, cost="missing")])  # LiteLLM did not know its cost: waiting
    seen, cursor = [], ""
    while True:
        body = owner_client.get(API, {"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += body["results"]
        cursor = body["next"]
        if cursor is None:
            break
    expected = [r["litellm_call_id"] for r in reversed(records)]
    assert [r["litellm_call_id"] for r in seen[1:]] == expected
    assert len(seen) == 8
    called = [datetime.fromisoformat(r["called_at"]) for r in seen]
    assert called == sorted(called, reverse=True) and called[0] == START + timedelta(hours=7)
    waiting = seen[0]
    assert (waiting["status"], waiting["credits"], waiting["cost_usd"]) == ("waiting", None, None)
    assert waiting["waiting_reason"] == "Unknown cost"
    billed = seen[1]
    assert (billed["status"], billed["credits"], billed["cost_usd"]) == ("billed", 100, "0.0001")
    assert billed["key"] and len(billed["key"]) < 20  # a label, never the full hash


def test_filters_by_model_status_and_call_time(owner_client: Client) -> None:
    _bill([_record(n, model="gpt-4o" if n % 2 else "claude") for n in range(6)])
    ingest_records(records=[_record(10, cost="missing", model="gpt-4o")])
    by_model = owner_client.get(API, {"model": "gpt-4o"}).json()["results"]
    assert [r["model_group"] for r in by_model] == ["gpt-4o"] * 4
    assert [r["status"] for r in owner_client.get(API, {"status": "waiting"}).json()["results"]] == ["waiting"]
    window = owner_client.get(
        API, {"since": (START + timedelta(hours=2)).isoformat(), "until": (START + timedelta(hours=4)).isoformat()}
    ).json()["results"]
    assert [datetime.fromisoformat(r["called_at"]) for r in window] == [
        START + timedelta(hours=3),
        START + timedelta(hours=2),
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"status": "paid"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"account": "nope"}, "account"),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "until"),
    ],
)
def test_filters_that_do_not_parse_are_a_400_naming_the_field(owner_client: Client, query: dict, field: str) -> None:
    answer = owner_client.get(API, query)
    assert answer.status_code == 400
    assert answer.json()["field"] == field
    assert owner_client.get("/billing/activity/", query).status_code == 400


def test_another_owners_account_is_a_404(owner_client: Client) -> None:
    other = BillingAccountFactory()
    assert owner_client.get(API, {"account": str(other.public_id)}).status_code == 404
    assert owner_client.get("/billing/activity/", {"account": str(other.public_id)}).status_code == 404
    assert Client().get(API).status_code in (401, 403)


def test_csv_streams_every_matching_row_with_a_header(owner_client: Client) -> None:
    _bill([_record(n) for n in range(5)])
    answer = owner_client.get("/billing/activity/", {"format": "csv"})
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(answer.streaming_content).decode())))
    assert len(rows) == 5
    assert set(rows[0]) >= {"litellm_call_id", "called_at", "model_group", "cost_usd", "credits", "status"}
    assert {r["credits"] for r in rows} == {"100"}


def test_the_page_charts_usage_by_day_of_call(owner_client: Client) -> None:
    _bill([_record(n) for n in range(3)])
    page = owner_client.get(
        "/billing/activity/", {"since": "2026-11-01T00:00:00Z", "until": "2026-11-08T00:00:00Z"}
    ).content.decode()
    assert 'data-day="2026-11-03" data-credits="300"' in page
    assert page.count('data-row="billed"') == 3


def test_the_invoice_shows_usage_by_call_day_beside_the_booking_date(owner_client: Client) -> None:
    _bill([_record(n) for n in range(3)])  # called on 2026-11-03, billed today
    booked = owner_client.get("/billing/invoice/2026-11/").content.decode()
    assert 'data-value="booked"' in booked and 'data-day="2026-11-03" data-credits="0"' in booked
    by_call = owner_client.get("/billing/invoice/2026-11/", {"days": "call"}).content.decode()
    assert 'data-value="call"' in by_call and 'data-day="2026-11-03" data-credits="300"' in by_call


def test_keyset_pages_neither_skip_nor_repeat_calls_of_one_instant(owner_client: Client) -> None:
    _bill([_record(0) for _ in range(5)])  # five calls, one start time
    ingest_records(records=[_record(0, cost="missing") for _ in range(3)])
    seen, cursor = [], None
    while True:
        body = owner_client.get(API, {"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["litellm_call_id"] for r in body["results"]]
        if (cursor := body["next"]) is None:
            break
    assert len(seen) == len(set(seen)) == 8


def test_the_key_filter_takes_the_label_the_rows_show(owner_client: Client) -> None:
    _bill([_record(n) for n in range(3)])
    label = owner_client.get(API).json()["results"][0]["key"]
    assert len(owner_client.get(API, {"key": label}).json()["results"]) == 3
    assert owner_client.get(API, {"key": "no-such-key"}).json()["results"] == []
