"""GET /api/internal/billing/receipts/<call id>: executors confirm a call was billed (long-poll)."""

import threading
import time

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from receipts.notify import waiter
from tests.books import ingest_records
from tests.factories import litellm_record

URL = "/api/internal/billing/receipts/{}"


@pytest.mark.django_db
def test_billed_call_is_found(internal_client, account) -> None:
    record = litellm_record()
    ingest_records(records=[record])
    response = internal_client.get(URL.format(record["litellm_call_id"]))
    assert response.status_code == 200
    body = response.json()
    assert body["cost_usd"] == "0.0000135" and body["charged_credits"] == 14
    assert body["account"] == str(account.public_id)


@pytest.mark.django_db
def test_unknown_and_deferred_calls_are_404_with_status(internal_client, account) -> None:
    response = internal_client.get(URL.format("no-such-call"))
    assert response.status_code == 404 and response.json()["status"] == "unknown"
    record = litellm_record(cost=None)
    ingest_records(records=[record])
    response = internal_client.get(URL.format(record["litellm_call_id"]))
    assert response.status_code == 404
    assert response.json() | {"litellm_call_id": None} == {
        "error": "not billed yet: the record is deferred",
        "status": "deferred",
        "reason": "unknown_cost",
        "litellm_call_id": None,
    }


@pytest.mark.django_db
def test_bad_wait_ms_names_the_parameter(internal_client) -> None:
    response = internal_client.get(URL.format("x") + "?wait_ms=soon")
    assert response.status_code == 400
    assert "wait_ms" in response.json()["fields"]


@pytest.mark.django_db
def test_requires_the_internal_token(client) -> None:
    assert client.get(URL.format("x")).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_long_poll_wakes_when_the_receipt_lands(account, ingest_token: str) -> None:
    record = litellm_record()
    call_id = record["litellm_call_id"]
    outcome: dict = {}

    def wait_for_receipt() -> None:
        try:
            client = Client(HTTP_AUTHORIZATION=f"Bearer {settings.BILLING_AUTHORIZE_TOKEN}")
            started = time.monotonic()
            response = client.get(URL.format(call_id) + "?wait_ms=20000")
            outcome.update(status=response.status_code, body=response.json(), seconds=time.monotonic() - started)
        finally:
            connections.close_all()

    thread = threading.Thread(target=wait_for_receipt)
    thread.start()
    # Bill it once the request is subscribed (a condition, bounded), not after a fixed sleep.
    deadline = time.monotonic() + 10
    while call_id not in waiter._events and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert call_id in waiter._events, "the long-poll never subscribed"
    ingest_records(records=[record])
    thread.join(timeout=30)
    assert outcome["status"] == 200 and outcome["body"]["litellm_call_id"] == call_id
    assert outcome["seconds"] < 15  # woken by NOTIFY, not by the 20 s timeout


@pytest.mark.django_db(transaction=True)
def test_wait_is_bounded_by_the_setting(internal_client, settings) -> None:
    settings.BILLING_RECEIPT_MAX_WAIT_MS = 300
    started = time.monotonic()
    response = internal_client.get(URL.format("never-billed") + "?wait_ms=600000")
    assert response.status_code == 404
    assert time.monotonic() - started < 10
