"""integrations.litellm.client against the loopback stand-in of LiteLLM's spend-log API (tests/litellm_standin.py).

The stand-in filters `/spend/logs/v2?end_user=` the way the pinned LiteLLM's
`ui_view_spend_logs` does: an exact match on the end_user column, inside the
required start/end window, for the page and for its count.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from integrations.litellm.client import LiteLLMClient, LiteLLMError
from tests.litellm_standin import MASTER_KEY, SpendLogStandIn, spend_log_row

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
END = START + timedelta(hours=1)


@pytest.fixture
def standin() -> Iterator[SpendLogStandIn]:
    with SpendLogStandIn() as server:
        yield server


@pytest.fixture
def client(standin: SpendLogStandIn) -> Iterator[LiteLLMClient]:
    with LiteLLMClient(base_url=standin.url, master_key=MASTER_KEY, retries=0, backoff=0) as litellm:
        yield litellm


def _row(end_user: str, minute: int, spend: Decimal = Decimal("0.0000135")) -> dict:
    return spend_log_row(end_user=end_user, start_time=START + timedelta(minutes=minute), spend=spend)


def test_end_user_page_holds_only_that_end_users_rows_of_the_window(standin, client):
    alice = [_row("acct-alice", m, Decimal("0.000012345678901234567")) for m in (5, 10, 15)]
    standin.add(
        *alice,
        _row("acct-bob", 7),
        _row("acct-alice-2", 8),  # a longer name that starts the same: not a prefix match
        _row("acct-alice", 90),  # after the window
        _row("acct-alice", -1),  # before it
    )

    page = client.end_user_spend_log_page(end_user="acct-alice", start=START, end=END)

    assert [row.request_id for row in page.data] == [row["request_id"] for row in alice]
    assert {row.end_user for row in page.data} == {"acct-alice"}
    assert page.total == 3
    assert page.total_pages == 1
    # Money read from the JSON digits, never through a float.
    assert page.data[0].spend == Decimal("0.000012345678901234567")
    path, params = standin.requests[-1]
    assert path == "/spend/logs/v2"
    assert params["end_user"] == "acct-alice"
    assert (params["start_date"], params["end_date"]) == ("2026-03-01 12:00:00", "2026-03-01 13:00:00")


def test_end_user_pages_count_and_page_that_end_user_only(standin, client):
    alice = [_row("acct-alice", m) for m in range(1, 6)]
    standin.add(*alice, *[_row("acct-bob", m) for m in range(1, 30)])

    pages = [
        client.end_user_spend_log_page(end_user="acct-alice", start=START, end=END, page=n, page_size=2)
        for n in (1, 2, 3)
    ]

    assert [p.total for p in pages] == [5, 5, 5]
    assert [p.total_pages for p in pages] == [3, 3, 3]
    assert [len(p.data) for p in pages] == [2, 2, 1]
    assert [row.request_id for p in pages for row in p.data] == [row["request_id"] for row in alice]


def test_an_end_user_without_calls_gets_an_empty_page_and_an_empty_filter_selects_calls_without_one(standin, client):
    standin.add(_row("acct-alice", 5), _row("", 6))

    assert client.end_user_spend_log_page(end_user="acct-nobody", start=START, end=END).total == 0
    anonymous = client.end_user_spend_log_page(end_user="", start=START, end=END)
    assert [row.end_user for row in anonymous.data] == [""]


def test_the_unfiltered_page_still_serves_every_end_user(standin, client):
    standin.add(_row("acct-alice", 5), _row("acct-bob", 6))

    page = client.spend_log_page(start=START, end=END, page=1, page_size=10)

    assert sorted(row.end_user for row in page.data) == ["acct-alice", "acct-bob"]
    assert "end_user" not in standin.requests[-1][1]


def test_cost_of_one_call_is_exact(standin, client):
    row = _row("acct-alice", 5, Decimal("0.00001234567890123456789"))
    whole_dollars = _row("acct-alice", 6, spend=2)
    standin.add(row, whole_dollars)

    cost = client.cost_of_call(request_id=row["request_id"], litellm_call_id=row["litellm_call_id"])
    assert cost is not None
    assert cost.spend == Decimal("0.00001234567890123456789")
    assert cost.request_id == row["request_id"]
    integral = client.cost_of_call(request_id="elsewhere", litellm_call_id=whole_dollars["litellm_call_id"])
    assert integral is not None
    assert integral.spend == Decimal(2)
    assert client.cost_of_call(request_id="nope", litellm_call_id="nope") is None


def test_a_refused_key_is_an_error(standin):
    with LiteLLMClient(base_url=standin.url, master_key="sk-wrong", retries=0, backoff=0) as wrong:
        with pytest.raises(LiteLLMError, match="401"):
            wrong.end_user_spend_log_page(end_user="acct-alice", start=START, end=END)
