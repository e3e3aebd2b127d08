"""Per-run reconcile (reconciliation/runs.py): `reconcile --run` and POST .../runs/<run_id>/reconcile.

LiteLLM's spend logs are served by the loopback stand-in (tests/litellm_standin.py), which
filters `/spend/logs/v2` by `end_user` exactly as the pinned LiteLLM does. Missing receipts
must be billed through commit_usage_facts() (to whoever the resolver says pays), the answer
must count the run's receipts and credits, and the metrics must move.
"""

import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from payers.models import PayerSource
from payers.services import api_key_binding_create, run_binding_create
from receipts.models import ChargeReceipt
from reconciliation.runs import reconcile_run
from tests.books import charge_of, ingest_records
from tests.factories import BillingAccountFactory, litellm_record
from tests.litellm_standin import API_KEY_HASH, MASTER_KEY, SpendLogStandIn, spend_log_row
from tests.paths import REPO_ROOT
from tests.processes import free_port

pytestmark = pytest.mark.django_db

NOW = timezone.now().astimezone(UTC)
CALL_TIME = NOW - timedelta(minutes=30)
TENANT_KEY_HASH = "b" * 64


@pytest.fixture
def standin(settings):
    with SpendLogStandIn() as server:
        settings.LITELLM_BASE_URL = server.url
        settings.LITELLM_MASTER_KEY = MASTER_KEY
        settings.LITELLM_RETRIES = 0
        settings.LITELLM_RETRY_BACKOFF_SECONDS = 0
        yield server


@pytest.fixture
def run_account(db) -> BillingAccount:
    """The run's account; the stand-in's rows come from a gateway key (API_KEY_HASH) of the operator."""
    api_key_binding_create(account=BillingAccountFactory(name="Operator"), key_hash=API_KEY_HASH, is_gateway=True)
    account = BillingAccountFactory(name="Run owner")
    run_binding_create(account=account, run_id="run-42")
    return account


def lost(standin: SpendLogStandIn, *, end_user: str, cost: str = "0.0000135", **kwargs: Any) -> dict[str, Any]:
    """A call LiteLLM logged whose callback never reached us."""
    row = spend_log_row(end_user=end_user, spend=Decimal(cost), start_time=kwargs.pop("at", CALL_TIME), **kwargs)
    standin.add(row)
    return row


def delivered(standin: SpendLogStandIn, *, end_user: str, cost: str = "0.00002", run_id: str | None = None) -> str:
    """A call billed through ingest (sent with the gateway key) and logged by LiteLLM; its call id."""
    call_id, request_id = str(uuid.uuid4()), f"chatcmpl-{uuid.uuid4()}"
    record = litellm_record(
        end_user=end_user,
        cost=Decimal(cost),
        call_id=call_id,
        run_id=run_id,
        id=request_id,
        startTime=Decimal(str(CALL_TIME.timestamp())),
        endTime=Decimal(str((CALL_TIME + timedelta(seconds=1)).timestamp())),
    )
    record["metadata"]["user_api_key_hash"] = API_KEY_HASH
    assert ingest_records(records=[record]).processed == 1
    meta = {"run_id": run_id} if run_id else None
    standin.add(
        spend_log_row(
            litellm_call_id=call_id,
            request_id=request_id,
            spend=Decimal(cost),
            end_user=end_user,
            start_time=CALL_TIME,
            spend_logs_meta=meta,
        )
    )
    return call_id


def post_reconcile(internal_client, run_id: str, body: dict[str, Any] | None = None):
    return internal_client.post(
        f"/api/internal/billing/runs/{quote(run_id, safe='/')}/reconcile", body or {}, format="json"
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_missing_attempts_are_backfilled_to_the_run_and_a_second_call_finds_nothing(
    standin: SpendLogStandIn, run_account: BillingAccount, internal_client
) -> None:
    kept = delivered(standin, end_user="run-42/0")
    gone = [
        lost(standin, end_user="run-42/0", cost="0.0001"),
        lost(standin, end_user="run-42/1", cost="0.0002"),
        # attempt 2 has no call: one empty attempt does not stop the probing
        lost(standin, end_user="run-42/3", cost="0.0003"),
    ]
    # Not this run: a longer run id with the same prefix, and another end user.
    lost(standin, end_user="run-420/0")
    lost(standin, end_user="someone-else")
    latency_before = sample("billing_run_reconcile_latency_seconds_count")
    clean_before = sample("billing_run_reconciles_total", outcome="clean")

    response = post_reconcile(internal_client, "run-42")

    assert response.status_code == 200, response.content
    body = response.json()
    expected = charge_of(Decimal("0.00002")) + sum(charge_of(r["spend"]) for r in gone)
    assert body["run_id"] == "run-42"
    assert body["account"] == str(run_account.public_id)
    assert (body["receipts"], body["backfilled"], body["charged_credits"]) == (4, 3, expected)
    assert body["discrepancies"] == []
    assert body["end_users"][:5] == [f"run-42/{n}" for n in range(5)]
    assert "run-420/0" not in body["end_users"]
    assert body["spend_log_rows"] == 4
    receipts = ChargeReceipt.objects.filter(account=run_account)
    assert set(receipts.values_list("litellm_call_id", flat=True)) == {kept} | {r["litellm_call_id"] for r in gone}
    assert set(receipts.values_list("payer_source", flat=True)) == {PayerSource.RUN}
    assert receipts.filter(spend_log_request_id="").count() == 1  # only the delivered one came by callback
    assert not ChargeReceipt.objects.filter(end_user__in=["run-420/0", "someone-else"]).exists()
    run_account.refresh_from_db()
    assert run_account.balance_credits == -expected
    assert CreditLedgerEntry.objects.filter(account=run_account).aggregate(s=Sum("amount_credits"))["s"] == -expected

    again = post_reconcile(internal_client, "run-42").json()
    assert (again["receipts"], again["backfilled"], again["charged_credits"]) == (4, 0, expected)
    assert ChargeReceipt.objects.count() == 4
    assert sample("billing_run_reconcile_latency_seconds_count") == latency_before + 2
    assert sample("billing_run_reconciles_total", outcome="clean") == clean_before + 2


def test_a_non_gateway_key_naming_the_run_is_backfilled_to_its_own_account(
    standin: SpendLogStandIn, run_account: BillingAccount, internal_client
) -> None:
    tenant = BillingAccountFactory(name="Tenant")
    api_key_binding_create(account=tenant, key_hash=TENANT_KEY_HASH)
    row = lost(standin, end_user="run-42/0", cost="0.0005", api_key=TENANT_KEY_HASH)

    body = post_reconcile(internal_client, "run-42").json()

    receipt = ChargeReceipt.objects.get(litellm_call_id=row["litellm_call_id"])
    assert (receipt.account_id, receipt.payer_source) == (tenant.pk, PayerSource.KEY)
    assert (body["backfilled"], body["receipts"], body["charged_credits"]) == (1, 0, 0)
    assert body["receipts_billed_elsewhere"] == 1
    run_account.refresh_from_db()
    assert run_account.balance_credits == 0


def test_calls_naming_the_run_in_metadata_are_found_by_their_end_user(
    standin: SpendLogStandIn, run_account: BillingAccount, internal_client
) -> None:
    delivered(standin, end_user="executor-a", run_id="run-42")
    tagged = lost(standin, end_user="executor-a", spend_logs_meta={"run_id": "run-42"})
    untagged = lost(standin, end_user="executor-a")  # the same end user's call for no run: not this run's

    body = post_reconcile(internal_client, "run-42").json()

    assert "executor-a" in body["end_users"]
    assert (body["backfilled"], body["receipts"]) == (1, 2)
    assert ChargeReceipt.objects.get(litellm_call_id=tagged["litellm_call_id"]).account_id == run_account.pk
    assert not ChargeReceipt.objects.filter(litellm_call_id=untagged["litellm_call_id"]).exists()


def test_cost_mismatch_and_receipts_litellm_never_logged_are_reported(
    standin: SpendLogStandIn, run_account: BillingAccount
) -> None:
    call_id = delivered(standin, end_user="run-42/0", cost="0.00002")
    with standin.lock:
        standin.rows[-1]["spend"] = Decimal("0.00003")  # LiteLLM's spend differs from the receipt's cost
    ghost = litellm_record(end_user="run-42/1", cost=Decimal("0.00001"), startTime=Decimal(str(CALL_TIME.timestamp())))
    ghost["metadata"]["user_api_key_hash"] = API_KEY_HASH
    assert ingest_records(records=[ghost]).processed == 1  # billed, but LiteLLM has no row of it

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--run", "run-42", "--json", stdout=out)

    assert exit_info.value.code == 1
    report = json.loads(out.getvalue())
    kinds = {(d["kind"], d["litellm_call_id"]) for d in report["discrepancies"]}
    assert kinds == {("cost_mismatch", call_id), ("unknown_to_litellm", ghost["litellm_call_id"])}
    mismatch = next(d for d in report["discrepancies"] if d["kind"] == "cost_mismatch")
    assert mismatch["litellm_spend"] == "0.00003"  # money as exact text, never a float
    assert Decimal(mismatch["receipt_cost_usd"]) == Decimal("0.00002")
    assert report["backfilled"] == 0


def test_run_ids_with_slashes_work_in_the_path(standin: SpendLogStandIn, internal_client) -> None:
    api_key_binding_create(account=BillingAccountFactory(), key_hash=API_KEY_HASH, is_gateway=True)
    account = BillingAccountFactory()
    run_binding_create(account=account, run_id="team/a/run 7")
    row = lost(standin, end_user="team/a/run 7/0")

    response = post_reconcile(internal_client, "team/a/run 7")

    assert response.status_code == 200, response.content
    assert response.json()["backfilled"] == 1
    assert ChargeReceipt.objects.get(litellm_call_id=row["litellm_call_id"]).account_id == account.pk


def test_unknown_run_is_a_404_naming_it(standin: SpendLogStandIn, internal_client) -> None:
    before = sample("billing_run_reconciles_total", outcome="not_found")

    response = post_reconcile(internal_client, "no-such-run")

    assert response.status_code == 404
    assert response.json() == {"error": "no registered run 'no-such-run'", "field": "run_id"}
    assert standin.requests == []  # LiteLLM is not asked about a run nobody registered
    assert sample("billing_run_reconciles_total", outcome="not_found") == before + 1

    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--run", "no-such-run", stderr=err)
    assert exit_info.value.code == 2
    assert "no-such-run" in err.getvalue()


def test_litellm_unreachable_is_a_503_and_nothing_is_billed(
    settings, run_account: BillingAccount, internal_client
) -> None:
    settings.LITELLM_BASE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.LITELLM_MASTER_KEY = MASTER_KEY
    settings.LITELLM_RETRIES = 0
    before = sample("billing_run_reconciles_total", outcome="source_error")

    response = post_reconcile(internal_client, "run-42")

    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]
    assert sample("billing_run_reconciles_total", outcome="source_error") == before + 1


def test_litellm_refusing_is_a_502(standin: SpendLogStandIn, run_account: BillingAccount, internal_client) -> None:
    standin.master_key = "another-key"  # LiteLLM answers 401: not transient
    response = post_reconcile(internal_client, "run-42")

    assert response.status_code == 502
    assert "401" in response.json()["error"]


def test_the_internal_token_is_required(standin: SpendLogStandIn, run_account: BillingAccount, client) -> None:
    response = client.post("/api/internal/billing/runs/run-42/reconcile", {}, content_type="application/json")
    assert response.status_code == 401
    assert standin.requests == []


def test_a_bad_window_is_a_400_naming_the_field(
    standin: SpendLogStandIn, run_account: BillingAccount, internal_client
) -> None:
    response = post_reconcile(internal_client, "run-42", {"since": "yesterday-ish"})
    assert response.status_code == 400
    assert "since" in response.json()["fields"]

    later = (NOW + timedelta(hours=1)).isoformat()
    response = post_reconcile(internal_client, "run-42", {"since": later, "until": NOW.isoformat()})
    assert response.status_code == 400
    assert response.json()["field"] == "since"


def test_the_window_bounds_what_is_read(standin: SpendLogStandIn, run_account: BillingAccount) -> None:
    lost(standin, end_user="run-42/0", at=NOW - timedelta(days=5))  # long before the default window
    inside = lost(standin, end_user="run-42/0")

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--run", "run-42", "--json", stdout=out)
    assert exit_info.value.code == 0
    assert json.loads(out.getvalue())["backfilled"] == 1
    assert list(ChargeReceipt.objects.values_list("litellm_call_id", flat=True)) == [inside["litellm_call_id"]]

    out = io.StringIO()
    with pytest.raises(SystemExit):
        since = (NOW - timedelta(days=6)).isoformat()
        call_command("reconcile", "--run", "run-42", "--since", since, "--json", stdout=out)
    assert json.loads(out.getvalue())["backfilled"] == 1
    assert ChargeReceipt.objects.count() == 2


def test_ingest_lag_is_observed_for_callbacks_when_the_receipt_commits(
    standin: SpendLogStandIn, run_account: BillingAccount, django_capture_on_commit_callbacks
) -> None:
    ended = datetime.now(UTC) - timedelta(seconds=90)
    record = litellm_record(end_user="run-42/0", endTime=Decimal(str(ended.timestamp())))
    record["metadata"]["user_api_key_hash"] = API_KEY_HASH
    count, total = sample("billing_ingest_lag_seconds_count"), sample("billing_ingest_lag_seconds_sum")
    slow_bucket = sample("billing_ingest_lag_seconds_bucket", le="60.0")

    with django_capture_on_commit_callbacks(execute=True):
        assert ingest_records(records=[record]).processed == 1

    assert sample("billing_ingest_lag_seconds_count") == count + 1
    assert 90 <= sample("billing_ingest_lag_seconds_sum") - total < 120
    assert sample("billing_ingest_lag_seconds_bucket", le="60.0") == slow_bucket  # 90 s is over 60 s

    # A backfilled receipt is late by design: it is not ingest lag.
    lost(standin, end_user="run-42/1")
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile_run(run_id="run-42").backfilled == 1
    assert sample("billing_ingest_lag_seconds_count") == count + 1


def test_alert_rules_watch_ingest_lag_and_run_reconciles() -> None:
    path = REPO_ROOT / "deploy/prometheus/billing-alerts.yml"
    (group,) = [g for g in yaml.safe_load(path.read_text())["groups"] if g["name"] == "billing-runs"]
    exprs = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    assert "billing_ingest_lag_seconds_bucket" in exprs["BillingIngestLagHigh"]
    assert "billing_run_reconcile_latency_seconds_bucket" in exprs["BillingRunReconcileSlow"]
    assert 'outcome=~"source_error|error"' in exprs["BillingRunReconcileFailing"]
    names = {sample.name for metric in REGISTRY.collect() for sample in metric.samples}
    used = {token for expr in exprs.values() for token in re.findall(r"billing_[a-z_]+", expr)}
    assert used <= names, used - names
