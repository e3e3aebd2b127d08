"""The ingest endpoint: formats, bad requests, poison records, idempotency, concurrency."""

import threading
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from payers.services import end_user_alias_create
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.selectors import delivered_record
from tests.factories import litellm_record, to_body, to_ndjson

INGEST = "/api/internal/billing/ingest"


def post(client, body: bytes, content_type: str = "application/json"):
    return client.post(INGEST, body, content_type=content_type)


def assert_nothing_billed() -> None:
    assert not ChargeReceipt.objects.exists()
    assert not CreditLedgerEntry.objects.exists()
    assert not DeferredUsage.objects.exists()


@pytest.mark.django_db
class TestBadRequests:
    def test_no_token(self, client: Client, account) -> None:
        response = post(client, to_body([litellm_record()]))
        assert response.status_code == 401
        assert "Authorization" in response.json()["error"]
        assert_nothing_billed()

    def test_wrong_token(self, client: Client, account) -> None:
        response = client.post(
            INGEST, to_body([litellm_record()]), content_type="application/json", HTTP_AUTHORIZATION="Bearer nope"
        )
        assert response.status_code == 401
        assert response.json() == {"error": "Invalid bearer token for this endpoint: it takes BILLING_INGEST_TOKEN."}
        assert_nothing_billed()

    def test_not_json(self, internal_client, account) -> None:
        response = post(internal_client, b"<html>hello</html>")
        assert response.status_code == 400
        body = response.json()
        assert body["field"] == "body" and "not valid JSON" in body["error"]
        assert_nothing_billed()
        assert IngestBatch.objects.get().error.startswith("body is not valid JSON")

    def test_empty_list(self, internal_client, account) -> None:
        response = post(internal_client, b"[]")
        assert response.status_code == 400
        assert response.json()["error"].startswith("empty batch")
        assert_nothing_billed()

    def test_empty_body(self, internal_client, account) -> None:
        response = post(internal_client, b"")
        assert response.status_code == 400
        assert "body is empty" in response.json()["error"]

    def test_json_scalar(self, internal_client, account) -> None:
        response = post(internal_client, b"42")
        assert response.status_code == 400
        assert "got a JSON int" in response.json()["error"]

    def test_oversized_body(self, internal_client, account, settings) -> None:
        settings.BILLING_INGEST_MAX_BODY_BYTES = 1000
        response = post(internal_client, to_body([litellm_record()]))
        assert response.status_code == 413
        assert response.json()["field"] == "body" and "BILLING_INGEST_MAX_BODY_BYTES" in response.json()["error"]
        assert_nothing_billed()

    def test_wrong_content_type(self, internal_client, account) -> None:
        response = post(internal_client, b"a=1", content_type="application/x-www-form-urlencoded")
        assert response.status_code == 415
        assert response.json()["field"] == "Content-Type"
        assert_nothing_billed()

    def test_default_body_limit_fits_a_512_record_batch(self, settings) -> None:
        record_size = len(to_body([litellm_record()]))  # ~13 KB, like LiteLLM's with short prompts
        assert settings.BILLING_INGEST_MAX_BODY_BYTES > 4 * 512 * record_size


@pytest.mark.django_db
def test_ndjson_and_single_object_formats(internal_client, account: BillingAccount) -> None:
    records = [litellm_record() for _ in range(3)]
    response = post(internal_client, to_ndjson(records), content_type="application/x-ndjson")
    assert response.status_code == 200 and response.json()["processed"] == 3
    single = litellm_record()
    response = post(internal_client, to_body(single))
    assert response.status_code == 200 and response.json()["processed"] == 1
    # LiteLLM labels NDJSON as application/json too.
    response = post(internal_client, to_ndjson([litellm_record(), litellm_record()]))
    assert response.json()["processed"] == 2
    assert ChargeReceipt.objects.count() == 6


@pytest.mark.django_db
def test_an_unparseable_ndjson_line_is_kept_not_dropped(internal_client, account) -> None:
    good = [litellm_record(), litellm_record()]
    body = to_ndjson(good[:1]) + b'\n{"litellm_call_id": "broken", \n' + to_ndjson(good[1:])
    response = post(internal_client, body, content_type="application/x-ndjson")
    assert response.status_code == 200
    result = response.json()
    assert (result["processed"], result["skipped"]) == (2, 1)
    kept = DeferredUsage.objects.get(reason="invalid")
    assert "unparseable" in kept.detail and kept.batch_position == 1 and kept.fact is None
    # Its place in the stored delivery says only that it could not be read (no byte of it is kept: privacy).
    assert (
        delivered_record(ingest_batch_id=kept.ingest_batch_id, position=1) == b'{"unreadable_record":true,"bytes":29}'
    )


@pytest.mark.django_db
def test_same_batch_twice_and_repeats_within_a_batch(internal_client, account: BillingAccount) -> None:
    records = [litellm_record() for _ in range(4)]
    first = post(internal_client, to_body(records + records[:1])).json()
    assert (first["processed"], first["duplicates"]) == (4, 1)
    second = post(internal_client, to_body(records)).json()
    assert (second["processed"], second["duplicates"]) == (0, 4)
    assert ChargeReceipt.objects.count() == 4
    account.refresh_from_db()
    assert account.balance_credits == -4 * 14


@pytest.mark.django_db
def test_a_retry_attempt_is_its_own_charge(internal_client, account) -> None:
    call = "7e0f0b8e-0000-4000-8000-000000000001"
    records = [litellm_record(call_id=call, run_id="run-9", attempt=a) for a in (0, 1)]
    assert post(internal_client, to_body(records)).json()["processed"] == 2
    assert set(ChargeReceipt.objects.values_list("source_reference", flat=True)) == {
        f"run-9/0/{call}",
        f"run-9/1/{call}",
    }


@pytest.mark.django_db
def test_512_record_batch_with_poison_bills_every_good_record(internal_client, account: BillingAccount) -> None:
    records = [litellm_record() for _ in range(512)]
    poison = {
        3: ("prompt_tokens", "ten", "invalid_prompt_tokens"),
        77: ("response_cost", Decimal("-0.5"), "invalid_response_cost"),
        150: ("response_cost", Decimal("NaN"), "invalid_response_cost"),
        300: ("litellm_call_id", None, "missing_litellm_call_id"),
        420: ("response_cost", "0.01", "invalid_response_cost"),
    }
    for index, (key, value, _) in poison.items():
        records[index][key] = value
    records[500] = ["not", "an", "object"]
    response = post(internal_client, to_body(records))
    assert response.status_code == 200
    result = response.json()
    assert (result["processed"], result["skipped"], result["deferred"]) == (506, 6, 0)
    skipped = {item["index"]: item["reason"] for item in result["skipped_records"]}
    assert skipped == {i: reason for i, (_, _, reason) in poison.items()} | {500: "not_an_object"}
    assert ChargeReceipt.objects.count() == 506
    kept = DeferredUsage.objects.filter(reason="invalid", status="failed")
    assert kept.count() == 6  # every bad record kept, with why, for staff to see
    assert kept.filter(detail__startswith="invalid_response_cost").count() == 3
    account.refresh_from_db()
    assert account.balance_credits == -506 * 14
    batch = IngestBatch.objects.get()
    assert (batch.record_count, batch.processed, batch.skipped) == (512, 506, 6)


@pytest.mark.django_db
def test_a_record_the_database_refuses_costs_only_itself(internal_client, account) -> None:
    """BILLING_NEVER_THROWS: one record failing at the database is kept for replay; the rest bill."""
    with connection.cursor() as cursor:  # a real database error for one call id (rolled back with the test)
        cursor.execute(
            """
            CREATE FUNCTION test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.litellm_call_id = 'db-poison' THEN RAISE EXCEPTION 'refused by test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_poison BEFORE INSERT ON receipts_chargereceipt
                FOR EACH ROW EXECUTE FUNCTION test_refuse_poison();
            """
        )
    before = REGISTRY.get_sample_value("billing_invariant_violation_total", {"reason": "commit_error"}) or 0
    records = [litellm_record(), litellm_record(call_id="db-poison"), litellm_record()]
    result = post(internal_client, to_body(records)).json()
    assert (result["processed"], result["deferred"]) == (2, 1)
    kept = DeferredUsage.objects.get(litellm_call_id="db-poison")
    assert (kept.reason, kept.status) == ("error", "pending") and "refused by test" in kept.detail
    assert REGISTRY.get_sample_value("billing_invariant_violation_total", {"reason": "commit_error"}) == before + 1


@pytest.mark.django_db
def test_unknown_end_user_is_deferred_then_billed_when_alias_is_added(
    internal_client, account, django_capture_on_commit_callbacks
) -> None:
    record = litellm_record(end_user="newcomer")
    result = post(internal_client, to_body([record])).json()
    assert result["deferred"] == 1 and result["deferred_records"][0]["reason"] == "unknown_payer"
    assert not ChargeReceipt.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        end_user_alias_create(account=account, end_user="newcomer")
    billed = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
    assert billed.account == account and billed.charged_credits == 14
    deferred = DeferredUsage.objects.get(litellm_call_id=record["litellm_call_id"])
    assert (deferred.status, deferred.receipt_id) == ("billed", billed.pk)


@pytest.mark.django_db(transaction=True)
def test_same_records_from_8_concurrent_clients_bill_once(account: BillingAccount, ingest_token: str) -> None:
    records = [litellm_record(end_user=("acct-alice", "acct-bob")[i % 2]) for i in range(60)]
    body = to_body(records)
    barrier = threading.Barrier(8)
    results: list[dict] = []
    errors: list[BaseException] = []

    def deliver(i: int) -> None:
        try:
            client = Client(HTTP_AUTHORIZATION=f"Bearer {ingest_token}")
            barrier.wait(timeout=30)
            # Different orders per client: contention on the same keys from every side.
            ordered = body if i % 2 == 0 else to_body(list(reversed(records)))
            response = client.post(INGEST, ordered, content_type="application/json")
            assert response.status_code == 200, response.content
            results.append(response.json())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sum(r["processed"] for r in results) == 60
    assert sum(r["duplicates"] for r in results) == 7 * 60
    assert ChargeReceipt.objects.count() == 60
    assert CreditLedgerEntry.objects.filter(reason="usage").count() == 60
    account.refresh_from_db()
    assert account.balance_credits == -60 * 14


@pytest.mark.django_db
def test_openapi_schema_lists_the_internal_endpoints(client: Client) -> None:
    response = client.get(
        "/api/schema/", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION=f"Bearer {settings.BILLING_METRICS_TOKEN}"
    )
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (INGEST, "/api/internal/billing/receipts/{litellm_call_id}", "/api/internal/billing/credits"):
        assert path in paths


def test_openapi_schema_is_valid_and_complete() -> None:
    """Every internal view is documented, with its auth, and the schema validates with no warning."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    for scheme in ("ingestToken", "authorizeToken", "adminApiToken"):
        assert scheme in out.getvalue()


@pytest.mark.django_db
def test_an_unknown_api_path_answers_json(internal_client) -> None:
    """Found by schemathesis: a run id with a newline matches no route, and the 404 was Django's HTML page."""
    response = internal_client.post("/api/internal/billing/runs/a%0Ab/reconcile")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["field"] == "path"
