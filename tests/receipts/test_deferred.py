"""Deferred usage records: backoff, the LiteLLM cost lookup, replays, the sweep, and never billing twice.

Task bodies run eagerly here (Task.apply); tests/receipts/test_celery_worker.py runs
them on a real worker with a real Redis broker.
"""

import statistics
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import BillingAccount, CreditLedgerEntry
from integrations.litellm.records import parse_usage_record
from payers.models import EndUserAlias
from payers.services import end_user_alias_create
from receipts import services, tasks
from receipts.models import ChargeReceipt, DeferredUsage
from receipts.services import (
    claim_due_deferred_usage,
    commit_usage_fact,
    next_attempt_delay,
    retry_deferred_usage,
)
from receipts.tasks import retry_deferred, sweep_deferred_usage
from tests.books import ingest_records, ledger_total
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record
from tests.litellm_standin import MASTER_KEY, SpendLogStandIn, spend_log_row

DEADLINE_SECONDS = 20


@pytest.fixture
def standin(settings):
    with SpendLogStandIn() as server:
        settings.LITELLM_BASE_URL = server.url
        settings.LITELLM_MASTER_KEY = MASTER_KEY
        settings.LITELLM_RETRY_BACKOFF_SECONDS = 0
        yield server


def defer(record: dict[str, Any]) -> DeferredUsage:
    result = ingest_records(records=[record])
    assert result.deferred == 1, result.as_dict()
    return DeferredUsage.objects.get(litellm_call_id=record["litellm_call_id"])


def expired_count() -> float:
    return REGISTRY.get_sample_value("billing_invariant_violation_total", {"reason": "deferred_expired"}) or 0


def test_backoff_is_exponential_with_jitter_and_capped(settings):
    settings.BILLING_DEFERRED_BASE_DELAY_SECONDS = 30
    settings.BILLING_DEFERRED_MAX_DELAY_SECONDS = 3600
    means = []
    for attempts in range(10):
        delays = [next_attempt_delay(attempts).total_seconds() for _ in range(300)]
        ceiling = min(3600, 30 * 2**attempts)
        assert all(15 <= d <= 15 + ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter spreads the retries
        means.append(statistics.fmean(delays))
    assert means[0] < means[3] < means[6]  # exponential …
    assert max(means) < 15 + 3600  # … up to the cap


@pytest.mark.django_db
class TestUnknownCost:
    def test_billed_once_litellm_knows_the_cost(self, standin, account):
        record = litellm_record(cost=None)
        deferred = defer(record)
        assert deferred.reason == DeferredUsage.Reason.UNKNOWN_COST

        assert retry_deferred.apply(args=[deferred.pk]).get() == "pending"
        deferred.refresh_from_db()
        assert deferred.attempts == 1
        assert deferred.next_attempt_at > timezone.now()
        assert "no row for this call yet" in deferred.last_error
        assert not ChargeReceipt.objects.exists()

        standin.add(
            spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.000042"))
        )
        assert retry_deferred.apply(args=[deferred.pk]).get() == "billed"

        receipt = ChargeReceipt.objects.get(litellm_call_id=record["litellm_call_id"])
        assert receipt.cost_usd == Decimal("0.000042")
        assert receipt.charged_credits == 42
        assert receipt.spend_log_request_id == record["id"]  # where the cost came from
        assert CreditLedgerEntry.objects.get(receipt=receipt).amount_credits == -42
        deferred.refresh_from_db()
        assert (deferred.status, deferred.receipt_id, deferred.attempts) == ("billed", receipt.pk, 2)
        assert deferred.next_attempt_at is None
        assert deferred.learnt_cost_usd == Decimal("0.000042")
        # Looked up by the record's id, the request_id of LiteLLM's spend logs.
        assert ("/spend/logs", {"request_id": record["id"]}) in standin.requests

    def test_the_cost_is_exact_from_the_json_text(self, standin, account):
        record = litellm_record(cost=None)
        deferred = defer(record)
        standin.add(
            spend_log_row(
                litellm_call_id=record["litellm_call_id"],
                request_id=record["id"],
                spend=Decimal("0.10000000000000001"),  # a float would make this 0.1
            )
        )
        retry_deferred_usage(deferred=deferred)
        assert ChargeReceipt.objects.get().cost_usd == Decimal("0.10000000000000001")

    def test_a_row_of_another_call_with_the_same_response_id_is_ignored(self, standin, account):
        record = litellm_record(cost=None)
        deferred = defer(record)
        # Provider response ids repeat: same request_id, another litellm_call_id.
        standin.add(spend_log_row(litellm_call_id=str(uuid.uuid4()), request_id=record["id"], spend=Decimal("0.5")))

        assert retry_deferred_usage(deferred=deferred) is None
        assert not ChargeReceipt.objects.exists()
        deferred.refresh_from_db()
        assert deferred.status == "pending" and deferred.attempts == 1

    def test_a_zero_spend_is_no_cost(self, standin, account):
        record = litellm_record(cost=None)
        deferred = defer(record)
        standin.add(spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=0))

        assert retry_deferred_usage(deferred=deferred) is None
        deferred.refresh_from_db()
        assert "no cost for it either" in deferred.last_error
        assert not ChargeReceipt.objects.exists()

    def test_a_cache_hit_row_is_found_by_its_call_id(self, standin, account):
        record = litellm_record(cost=None)
        deferred = defer(record)
        standin.add(
            spend_log_row(
                litellm_call_id=record["litellm_call_id"],
                request_id=f"{record['id']}_cache_hit1795566908.25",
                spend=Decimal("0.000007"),
            )
        )
        outcome = retry_deferred_usage(deferred=deferred)
        assert outcome is not None and outcome.outcome == "processed"
        assert ChargeReceipt.objects.get().request_id == record["id"]

    def test_litellm_down_is_retried_with_backoff_then_shown_to_staff(
        self, standin, account, settings, django_capture_on_commit_callbacks
    ):
        settings.BILLING_DEFERRED_MAX_ATTEMPTS = 3
        settings.LITELLM_RETRIES = 1
        record = litellm_record(cost=None)
        deferred = defer(record)
        standin.fail_next(100, status=503)
        before = expired_count()
        schedule = []
        with django_capture_on_commit_callbacks(execute=True):
            for _ in range(3):
                assert retry_deferred_usage(deferred=deferred) is None
                deferred.refresh_from_db()
                schedule.append(deferred.next_attempt_at)
        assert deferred.status == DeferredUsage.Status.FAILED
        assert deferred.attempts == 3
        assert "503" in deferred.last_error
        assert all(moment > timezone.now() for moment in schedule[:2]) and schedule[2] is None
        assert expired_count() == before + 1
        assert not ChargeReceipt.objects.exists()

        # LiteLLM recovers and learns the cost: staff replay the failed record (the admin's action).
        standin.failures.clear()
        standin.add(
            spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("1"))
        )
        outcome = retry_deferred_usage(deferred=deferred)
        assert outcome is not None and outcome.outcome == "processed"
        deferred.refresh_from_db()
        assert deferred.status == DeferredUsage.Status.BILLED
        assert expired_count() == before + 1

    def test_a_cost_learnt_for_an_unknown_end_user_is_kept_until_the_alias_comes(
        self, standin, account, django_capture_on_commit_callbacks
    ):
        record = litellm_record(cost=None, end_user="stranger")
        deferred = defer(record)
        standin.add(
            spend_log_row(litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.00003"))
        )
        assert retry_deferred_usage(deferred=deferred) is None
        deferred.refresh_from_db()
        assert deferred.reason == DeferredUsage.Reason.UNKNOWN_PAYER
        assert deferred.learnt_cost_usd == Decimal("0.00003")
        asked = len(standin.requests)

        with django_capture_on_commit_callbacks(execute=True):
            end_user_alias_create(account=account, end_user="stranger")

        assert ChargeReceipt.objects.get(end_user="stranger").cost_usd == Decimal("0.00003")
        assert len(standin.requests) == asked  # the replay did not need LiteLLM again

    def test_without_a_master_key_litellm_is_not_asked(self, account, settings):
        settings.LITELLM_MASTER_KEY = ""
        deferred = defer(litellm_record(cost=None))

        assert retry_deferred_usage(deferred=deferred) is None
        deferred.refresh_from_db()
        assert deferred.attempts == 1 and "LITELLM_MASTER_KEY is not set" in deferred.last_error

    def test_unreachable_litellm_counts_an_attempt(self, account, settings):
        with SpendLogStandIn() as gone:
            settings.LITELLM_BASE_URL = gone.url
        settings.LITELLM_MASTER_KEY = MASTER_KEY
        deferred = defer(litellm_record(cost=None))

        assert retry_deferred_usage(deferred=deferred) is None
        deferred.refresh_from_db()
        assert deferred.attempts == 1 and "unreachable" in deferred.last_error
        assert deferred.status == DeferredUsage.Status.PENDING


@pytest.mark.django_db
class TestReplays:
    def test_adding_the_alias_replays_waiting_records(self, account, django_capture_on_commit_callbacks):
        records = [litellm_record(end_user="newcomer") for _ in range(2)]
        ingest_records(records=records)
        assert DeferredUsage.objects.filter(reason="unknown_payer", status="pending").count() == 2

        with django_capture_on_commit_callbacks(execute=True):
            end_user_alias_create(account=account, end_user="newcomer")

        assert ChargeReceipt.objects.filter(end_user="newcomer").count() == 2
        assert set(DeferredUsage.objects.values_list("status", flat=True)) == {"billed"}
        assert BillingAccount.objects.get(pk=account.pk).balance_credits == ledger_total(account=account) == -28

    def test_a_failed_record_waiting_for_an_alias_is_revived_by_it(
        self, account, settings, django_capture_on_commit_callbacks
    ):
        settings.BILLING_DEFERRED_MAX_ATTEMPTS = 1
        record = litellm_record(end_user="latecomer")
        deferred = defer(record)
        retry_deferred_usage(deferred=deferred)
        deferred.refresh_from_db()
        assert deferred.status == "failed"

        with django_capture_on_commit_callbacks(execute=True):
            end_user_alias_create(account=account, end_user="latecomer")

        deferred.refresh_from_db()
        assert deferred.status == "billed"

    def test_the_sweep_retries_only_due_pending_records_and_claims_them(self, account, standin, settings):
        due = defer(litellm_record(end_user="swept"))
        later = defer(litellm_record(end_user="swept"))
        failed = defer(litellm_record(end_user="swept"))
        no_cost = defer(litellm_record(cost=None))
        now = timezone.now()
        DeferredUsage.objects.filter(pk__in=[due.pk, no_cost.pk]).update(next_attempt_at=now - timedelta(seconds=1))
        DeferredUsage.objects.filter(pk=later.pk).update(next_attempt_at=now + timedelta(hours=1))
        DeferredUsage.objects.filter(pk=failed.pk).update(status="failed", next_attempt_at=None)
        EndUserAlias.objects.create(account=account, end_user="swept")  # no replay: only the sweep bills it

        assert sweep_deferred_usage.apply().get() == 2

        assert DeferredUsage.objects.get(pk=due.pk).status == "billed"
        assert DeferredUsage.objects.get(pk=later.pk).status == "pending"
        assert DeferredUsage.objects.get(pk=failed.pk).status == "failed"
        no_cost.refresh_from_db()
        assert no_cost.status == "pending" and no_cost.attempts == 1 and no_cost.next_attempt_at > now
        assert ChargeReceipt.objects.count() == 1
        assert REGISTRY.get_sample_value("billing_deferred_pending", {"reason": "unknown_payer"}) == 1
        assert REGISTRY.get_sample_value("billing_deferred_pending", {"reason": "unknown_cost"}) == 1
        assert REGISTRY.get_sample_value("billing_deferred_failed", {"reason": "unknown_payer"}) == 1

    def test_a_claimed_record_is_not_handed_out_twice(self, account, settings):
        settings.BILLING_DEFERRED_CLAIM_SECONDS = 600
        deferred = defer(litellm_record(end_user="nobody"))
        DeferredUsage.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now())

        assert claim_due_deferred_usage(limit=10) == [deferred.pk]
        assert claim_due_deferred_usage(limit=10) == []
        deferred.refresh_from_db()
        assert deferred.next_attempt_at > timezone.now() + timedelta(seconds=590)

    def test_the_retry_task_retries_when_the_database_blips(self, account, monkeypatch):
        deferred = defer(litellm_record(end_user="blip"))
        EndUserAlias.objects.create(account=account, end_user="blip")
        real = services.retry_deferred_usage
        calls = []

        def flaky(**kwargs: Any) -> Any:
            calls.append(kwargs)
            if len(calls) == 1:
                raise OperationalError("server closed the connection unexpectedly")
            return real(**kwargs)

        monkeypatch.setattr(tasks, "retry_deferred_usage", flaky)
        assert retry_deferred.apply(args=[deferred.pk]).get() == "billed"
        assert len(calls) == 2

    def test_billed_invalid_and_missing_records(self, account):
        deferred = defer(litellm_record(end_user="twice"))
        EndUserAlias.objects.create(account=account, end_user="twice")
        assert retry_deferred_usage(deferred=deferred).outcome == "processed"
        # Already billed: left alone.
        assert retry_deferred_usage(deferred=deferred) is None
        assert ChargeReceipt.objects.count() == 1
        # An invalid record stays with staff: retrying cannot make it valid.
        ingest_records(records=[litellm_record(cost="not a number")])
        invalid = DeferredUsage.objects.get(reason="invalid")
        assert retry_deferred_usage(deferred=invalid) is None
        invalid.refresh_from_db()
        assert invalid.status == "failed" and invalid.attempts == 1
        assert retry_deferred.apply(args=[10**9]).get() == "missing"


# --- concurrency: never billed twice ------------------------------------------------------------


def _in_thread(target: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            target(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
class TestNeverBilledTwice:
    @pytest.fixture
    def alice(self) -> BillingAccount:
        account = BillingAccountFactory(name="Alice")
        EndUserAliasFactory(account=account, end_user="acct-alice")
        return account

    def test_two_concurrent_commits_of_one_call_make_one_receipt(self, alice):
        """The receipt's UNIQUE(source_system, source_reference) is the guarantee, with no other lock."""
        fact = parse_usage_record(litellm_record())
        first_inserted, release = threading.Event(), threading.Event()
        outcomes: dict[str, str] = {}

        def first() -> None:
            from django.db import transaction

            with transaction.atomic():
                outcomes["first"] = commit_usage_fact(fact=fact).outcome
                first_inserted.set()
                release.wait(DEADLINE_SECONDS)

        def second() -> None:
            first_inserted.wait(DEADLINE_SECONDS)
            outcomes["second"] = commit_usage_fact(fact=fact).outcome

        threads = [_in_thread(first), _in_thread(second)]
        # The second really runs concurrently: it waits on the first's uncommitted receipt.
        _wait_for(lambda: _lock_waiters() >= 1, "the second commit to wait on the unique index")
        release.set()
        for thread in threads:
            thread.join(DEADLINE_SECONDS)

        assert outcomes == {"first": "processed", "second": "duplicate"}
        assert ChargeReceipt.objects.count() == 1
        assert CreditLedgerEntry.objects.filter(reason="usage").count() == 1
        assert BillingAccount.objects.get(pk=alice.pk).balance_credits == -14

    def test_two_workers_retrying_one_record_bill_it_once(self, alice):
        waiting = defer(litellm_record(end_user="acct-late"))
        EndUserAlias.objects.create(account=alice, end_user="acct-late")
        barrier = threading.Barrier(4)
        results = []

        def worker() -> None:
            barrier.wait(DEADLINE_SECONDS)
            results.append(retry_deferred.apply(args=[waiting.pk]).get())

        threads = [_in_thread(worker) for _ in range(4)]
        for thread in threads:
            thread.join(DEADLINE_SECONDS)

        assert len(results) == 4 and "billed" in results
        assert ChargeReceipt.objects.count() == 1
        assert CreditLedgerEntry.objects.filter(reason="usage").count() == 1
        assert DeferredUsage.objects.get(pk=waiting.pk).status == "billed"

    def test_a_late_callback_racing_the_retry_bills_once(self, alice, standin):
        record = litellm_record(cost=None)
        waiting = defer(record)
        standin.add(
            spend_log_row(
                litellm_call_id=record["litellm_call_id"], request_id=record["id"], spend=Decimal("0.0000135")
            )
        )
        late = {**record, "response_cost": Decimal("0.0000135")}
        barrier = threading.Barrier(2)

        def retry() -> None:
            barrier.wait(DEADLINE_SECONDS)
            retry_deferred_usage(deferred=waiting)

        def callback() -> None:
            barrier.wait(DEADLINE_SECONDS)
            ingest_records(records=[late])

        threads = [_in_thread(retry), _in_thread(callback)]
        for thread in threads:
            thread.join(DEADLINE_SECONDS)

        assert ChargeReceipt.objects.count() == 1
        assert CreditLedgerEntry.objects.filter(reason="usage").count() == 1
        assert DeferredUsage.objects.get(pk=waiting.pk).status == "billed"
        assert BillingAccount.objects.get(pk=alice.pk).balance_credits == -14
