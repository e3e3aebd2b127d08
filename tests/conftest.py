import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.models import BillingAccount
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory


@pytest.fixture(scope="session", autouse=True)
def _stop_receipt_listener(django_db_setup, django_db_blocker):
    """The long-poll listener holds a connection to the test database: close it before the drop."""
    yield
    from receipts.notify import waiter

    waiter.stop()


@pytest.fixture
def ingest_token() -> str:
    return settings.BILLING_INGEST_TOKEN


@pytest.fixture
def internal_client(ingest_token: str) -> APIClient:
    """A client of the internal API, authenticated like LiteLLM's generic_api logger."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ingest_token}")
    return client


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def account(db) -> BillingAccount:
    """An account that the sample end users (acct-alice, acct-bob, acct-carol) bill to."""
    account = BillingAccountFactory(name="Alice Inc.")
    for end_user in ("acct-alice", "acct-bob", "acct-carol"):
        EndUserAliasFactory(account=account, end_user=end_user)
    return account


@pytest.fixture
def live_service(transactional_db, tmp_path, ingest_token: str):
    """The service under gunicorn (2 gthread workers, DEBUG off) on the test database; needs committed data."""
    from django.db import connection

    from tests.gunicorn_server import database_url, start_service

    service = start_service(database=database_url(connection.settings_dict), log_dir=tmp_path, token=ingest_token)
    try:
        yield service
    finally:
        service.stop()
        # pytest shows captured teardown output only when the test failed.
        print(f"\n===== gunicorn log =====\n{service.log_tail()}")
