"""The admin index opens on the books' health: last reconcile, deferred by reason, lag, holds, payments, webhooks."""

import io
import re
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.services import grant_credits
from tests.books import ingest_records
from tests.factories import BillingAccountFactory, EndUserAliasFactory, UserFactory, litellm_record

pytestmark = pytest.mark.django_db


def _figure(page: str, name: str) -> tuple[str, str]:
    match = re.search(rf'<tr data-figure="{name}" data-ok="(\w+)">.*?<td>(.*?)</td>', page, re.DOTALL)
    assert match, f"no figure {name}"
    return match.group(1), match.group(2)


def test_the_admin_index_shows_the_books_health_with_links() -> None:
    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = staff.get("/admin/").content.decode()
    assert 'id="books-health" data-healthy="false"' in page
    assert _figure(page, "last-reconcile") == ("false", "never ran")

    account = BillingAccountFactory()
    EndUserAliasFactory(account=account, end_user="health-user")
    grant_credits(account=account, amount_credits=100, reason="top_up")
    ingest_records(records=[litellm_record(end_user="health-user", cost=Decimal("0.00001"))])
    ingest_records(records=[litellm_record(end_user="health-user", cost="missing")])
    with pytest.raises(SystemExit) as exited:
        call_command("reconcile", "--books-only", stdout=io.StringIO())
    assert exited.value.code == 0

    page = staff.get("/admin/").content.decode()
    ok, value = _figure(page, "last-reconcile")
    assert value.startswith("clean") and ok == "true"
    assert _figure(page, "deferred-records-waiting") == ("false", "1")
    assert 'data-deferred-reason="unknown-cost"' in page
    assert 'href="/admin/receipts/deferredusage/?reason__exact=unknown_cost"' in page
    assert _figure(page, "open-holds")[1] == "0 holding 0 credits"
    assert _figure(page, "webhook-deliveries-failing") == ("true", "0 gave up, 0 retrying")
    # The stock app list is still there, under the dashboard.
    assert "/admin/accounts/billingaccount/" in page
