"""bin/run's worker (`manage.py billing_worker`, no broker) delivers a balance webhook within 5 s of the charge."""

import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from accounts.services import grant_credits
from integrations.litellm.records import parse_usage_record
from notifications.services import balance_alert_create, webhook_endpoint_create
from receipts.services import commit_usage_facts
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record
from tests.gunicorn_server import django_database_url
from tests.notifications.receiver import webhook_receiver
from tests.processes import wait_until
from tests.receipts.test_celery_worker import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Path]:
    env = {**os.environ, "DATABASE_URL": django_database_url(), "CELERY_BROKER_URL": "", "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("BILLING_EVENTS_POLL_SECONDS", None)  # bin/run's default
    log = tmp_path / "billing-worker.log"
    procs = Processes()
    procs.start([sys.executable, "manage.py", "billing_worker", "--no-reconcile"], env=env, log=log)
    try:
        yield log
    finally:
        procs.stop_all()


def _charge(credits: int) -> None:
    fact = parse_usage_record(litellm_record(end_user="worker-user", cost=Decimal(credits) / 1_000_000))
    commit_usage_facts(facts=[fact])


def test_billing_worker_delivers_a_balance_webhook_within_five_seconds(worker: Path) -> None:
    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="worker-user")
    grant_credits(account=account, amount_credits=1000, reason="top_up")
    balance_alert_create(account=account, threshold_credits=900)
    balance_alert_create(account=account, threshold_credits=500)
    with webhook_receiver() as receiver:
        endpoint = webhook_endpoint_create(account=account, url=receiver.url, events=["balance.low"])
        _charge(200)  # warm-up: the worker is up and has run its first rounds once this arrives
        wait_until(lambda: receiver.received, "the first webhook", deadline_s=60, detail=worker.read_text)
        charged = time.monotonic()
        _charge(400)  # 800 → 400: crosses 500
        wait_until(
            lambda: len(receiver.received) == 2, "the second webhook within 5 s", deadline_s=5, detail=worker.read_text
        )
        took = time.monotonic() - charged
    payload = Webhook(endpoint.secret).verify(receiver.received[1].body, receiver.received[1].headers)
    assert payload["data"]["threshold_credits"] == 500
    print(f"balance.low delivered {took:.2f} s after the charge committed")
