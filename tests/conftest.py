from collections.abc import Iterator

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.models import BillingAccount
from billing_project.apps import keep_recursion_limit
from receipts.notify import waiter
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory
from tests.gunicorn_server import Service, django_database_url, running_service
from tests.litellm_proxy import StubProvider, running_stub_provider
from tests.stub_billing import StubBilling
from tests.tokens import token_for


@pytest.fixture(scope="session", autouse=True)
def _stop_receipt_listener(django_db_setup, django_db_blocker):
    """The long-poll listener holds a connection to the test database: close it before the drop."""
    yield
    waiter.stop()


@pytest.fixture
def ingest_token() -> str:
    return settings.BILLING_INGEST_TOKEN


class ScopedAPIClient(APIClient):
    """Sends each internal request with the token of its endpoint's scope, as the real callers do."""

    def generic(self, method, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("HTTP_AUTHORIZATION", f"Bearer {token_for(path)}")
        return super().generic(method, path, *args, **kwargs)


@pytest.fixture
def internal_client() -> APIClient:
    """A client of the internal API: LiteLLM's callback token for ingest, the plugin's for authorize, …"""
    return ScopedAPIClient()


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
def live_service(transactional_db, tmp_path, ingest_token: str) -> Iterator[Service]:
    """The service under gunicorn (2 gthread workers, DEBUG off) on the test database; needs committed data."""
    with running_service(database=django_database_url(), log_dir=tmp_path, token=ingest_token) as service:
        yield service


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProvider]:
    """The loopback OpenAI-compatible provider that counts its requests (tests/stub_openai_server.py)."""
    with running_stub_provider(workdir=tmp_path_factory.mktemp("provider")) as stub:
        yield stub


@pytest.fixture(scope="module")
def billing() -> Iterator[StubBilling]:
    """A loopback stand-in of the service's authorize API that records what the plugin sends (tests/stub_billing.py)."""
    with StubBilling() as stub:
        yield stub


def pytest_collection_finish(session: pytest.Session) -> None:
    """The USDC tests import eth-tester (py-evm), which raises the recursion limit for the whole process:
    put the service's own back, as billing_project's AppConfig does once the apps are loaded."""
    keep_recursion_limit()
