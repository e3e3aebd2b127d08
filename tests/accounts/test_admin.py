"""The staff admin: read-only books, fast lists, the grant form, and replay of deferred records (issue 5)."""

import re
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import BillingAccount, CreditLedgerEntry, PromotionalCredit
from accounts.services import grant_credits
from billing_project.modeladmin import EstimatedCountPaginator
from payers.models import EndUserAlias
from receipts.models import ChargeReceipt, DeferredUsage
from tests.books import ledger_total
from tests.factories import BillingAccountFactory, UserFactory, bind_trusted_gateway, litellm_record, to_body

RECEIPTS = "/admin/receipts/chargereceipt/"
LEDGER = "/admin/accounts/creditledgerentry/"
DEFERRED = "/admin/receipts/deferredusage/"


@pytest.fixture
def staff(db: None) -> Any:
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff: Any) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def ingest(client: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/api/internal/billing/ingest", data=to_body(records), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def receipts(account: BillingAccount, internal_client: Any) -> list[ChargeReceipt]:
    """Three receipts with different model groups, providers, stream flags and run ids."""
    ingest(
        internal_client,
        [
            litellm_record(cost=Decimal("0.001"), model_group="gpt-4o", run_id="run-1", attempt=0),
            litellm_record(
                end_user="acct-bob",
                cost=Decimal("0.002"),
                model_group="claude-3-5",
                custom_llm_provider="anthropic",
                stream=True,
            ),
            litellm_record(end_user="acct-carol", cost=Decimal("0"), model_group="gpt-4o", status="success"),
        ],
    )
    return list(ChargeReceipt.objects.order_by("end_user"))  # alice, bob, carol


def listed_call_ids(response: Any, candidates: list[ChargeReceipt]) -> set[str]:
    body = response.content.decode()
    return {r.litellm_call_id for r in candidates if r.litellm_call_id in body}


# --- who gets in -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/admin/", RECEIPTS, LEDGER, DEFERRED, "/admin/accounts/billingaccount/1/grant/"])
def test_non_staff_users_are_sent_to_log_in(db: None, url: str) -> None:
    user = Client()
    user.force_login(UserFactory(is_staff=False))
    for client in (user, Client()):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/?next=")


# --- receipts -----------------------------------------------------------------------------------------


def test_receipts_are_read_only(staff_client: Client, receipts: list[ChargeReceipt]) -> None:
    listing = staff_client.get(RECEIPTS)
    assert listing.status_code == 200
    assert listed_call_ids(listing, receipts) == {r.litellm_call_id for r in receipts}
    assert b"/admin/receipts/chargereceipt/add/" not in listing.content
    receipt = receipts[0]
    detail = staff_client.get(f"{RECEIPTS}{receipt.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert f"/admin/accounts/creditledgerentry/{receipt.ledger_entry.pk}/change/".encode() in detail.content
    assert staff_client.get(f"{RECEIPTS}add/").status_code == 403
    assert staff_client.post(f"{RECEIPTS}{receipt.pk}/change/", {"charged_credits": 0}).status_code == 403
    assert staff_client.post(f"{RECEIPTS}{receipt.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = staff_client.post(RECEIPTS, {"action": "delete_selected", "_selected_action": [receipt.pk]})
    assert bulk.status_code == 200  # no such action: the list is shown again, nothing deleted
    assert ChargeReceipt.objects.count() == 3


def test_receipt_search_is_exact_and_uses_the_indexes(staff_client: Client, receipts: list[ChargeReceipt]) -> None:
    first, second, _ = receipts
    for term in (first.litellm_call_id, first.request_id, "run-1"):
        with CaptureQueriesContext(connection) as queries:
            found = staff_client.get(RECEIPTS, {"q": term})
        assert listed_call_ids(found, receipts) == {first.litellm_call_id}, term
        searches = [q["sql"] for q in queries.captured_queries if "receipts_chargereceipt" in q["sql"]]
        assert not any("UPPER(" in sql or " LIKE " in sql for sql in searches), searches
    assert listed_call_ids(staff_client.get(RECEIPTS, {"q": "acct-bob"}), receipts) == {second.litellm_call_id}
    # Exact: a prefix of a call id is not a match.
    assert listed_call_ids(staff_client.get(RECEIPTS, {"q": first.litellm_call_id[:8]}), receipts) == set()


def test_receipt_filters(staff_client: Client, receipts: list[ChargeReceipt], account: BillingAccount) -> None:
    first, second, _ = receipts
    other = BillingAccountFactory()

    def shown(**params: Any) -> set[str]:
        response = staff_client.get(RECEIPTS, params)
        assert response.status_code == 200, params
        return listed_call_ids(response, receipts)

    everything = {r.litellm_call_id for r in receipts}
    assert shown(account=str(account.public_id)) == everything
    assert shown(account=str(account.pk)) == everything
    assert shown(account=str(other.public_id)) == set()
    assert shown(account="not-an-account") == set()
    assert shown(model_group="claude-3-5") == {second.litellm_call_id}
    assert shown(provider="anthropic") == {second.litellm_call_id}
    assert shown(stream__exact="1") == {second.litellm_call_id}
    assert shown(status__exact="success") == everything
    year, month = first.created_at.year, first.created_at.month
    assert shown(created_at__year=year, created_at__month=month) == everything
    assert shown(created_at__year=year - 1) == set()
    # The sidebar lists the model groups and providers that exist.
    page = staff_client.get(RECEIPTS).content.decode()
    assert "?model_group=claude-3-5" in page and "?provider=anthropic" in page


def test_receipt_list_never_counts_the_whole_table(
    staff_client: Client, receipts: list[ChargeReceipt], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beyond the exact-count cap the planner's estimate is used: no full COUNT(*).
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 2)
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(RECEIPTS)
    assert response.status_code == 200
    assert listed_call_ids(response, receipts) == {r.litellm_call_id for r in receipts}
    sqls = [q["sql"] for q in queries.captured_queries]
    counts = [sql for sql in sqls if "COUNT(" in sql.upper()]
    assert counts and all("LIMIT 3" in sql for sql in counts), counts
    # The date hierarchy and the filters probe indexes instead of scanning every row.
    assert not any("DISTINCT" in sql.upper() for sql in sqls), sqls
    assert not any("DATE_TRUNC" in sql.upper() for sql in sqls)


def test_paginator_counts_exactly_below_the_cap(receipts: list[ChargeReceipt]) -> None:
    assert EstimatedCountPaginator(ChargeReceipt.objects.all(), 100).count == 3
    assert EstimatedCountPaginator(ChargeReceipt.objects.filter(model_group="gpt-4o"), 100).count == 2


# --- ledger -----------------------------------------------------------------------------------------------


def test_ledger_is_read_only_and_filterable(
    staff_client: Client, receipts: list[ChargeReceipt], account: BillingAccount
) -> None:
    other = BillingAccountFactory(name="Other Ltd")
    grant_credits(account=other, amount_credits=42, reason="grant", idempotency_key="other-grant")
    assert staff_client.get(LEDGER).status_code == 200
    by_account = staff_client.get(LEDGER, {"account": str(other.public_id)}).content.decode()
    assert "Other Ltd" in by_account and "Alice Inc." not in by_account
    usage_only = staff_client.get(LEDGER, {"reason__exact": "usage"}).content.decode()
    assert "Other Ltd" not in usage_only and receipts[0].litellm_call_id in usage_only
    assert "Other Ltd" in staff_client.get(LEDGER, {"q": "other-grant"}).content.decode()
    found = staff_client.get(LEDGER, {"q": receipts[1].litellm_call_id}).content.decode()
    assert receipts[1].litellm_call_id in found and receipts[0].litellm_call_id not in found
    entry = CreditLedgerEntry.objects.get(idempotency_key="other-grant")
    assert staff_client.get(f"{LEDGER}add/").status_code == 403
    assert staff_client.post(f"{LEDGER}{entry.pk}/change/", {"amount_credits": 1}).status_code == 403
    assert staff_client.post(f"{LEDGER}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert b'name="_save"' not in staff_client.get(f"{LEDGER}{entry.pk}/change/").content


# --- accounts and the grant form -----------------------------------------------------------------


def grant_form(client: Client, account: BillingAccount) -> dict[str, str]:
    page = client.get(f"/admin/accounts/billingaccount/{account.pk}/grant/")
    assert page.status_code == 200
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.content.decode())
    assert key, "the form carries its idempotency key in a hidden field"
    return {"idempotency_key": key.group(1)}


def test_account_page_shows_balance_aliases_and_the_grant_button(staff_client: Client, account: BillingAccount) -> None:
    page = staff_client.get(f"/admin/accounts/billingaccount/{account.pk}/change/").content.decode()
    assert "acct-alice" in page and "acct-bob" in page
    assert f"/admin/accounts/billingaccount/{account.pk}/grant/" in page
    listing = staff_client.get("/admin/accounts/billingaccount/").content.decode()
    assert "Alice Inc." in listing and "0.000000" in listing


def test_grant_form_grants_once_when_submitted_twice(staff_client: Client, staff: Any, account: BillingAccount) -> None:
    data = {**grant_form(staff_client, account), "reason": "grant", "amount_credits": "5000", "memo": "pilot credits"}
    url = f"/admin/accounts/billingaccount/{account.pk}/grant/"
    first = staff_client.post(url, data, follow=True)
    second = staff_client.post(url, data, follow=True)  # the double click / the resubmitted page
    assert first.status_code == second.status_code == 200
    entries = CreditLedgerEntry.objects.filter(account=account, reason="grant")
    assert entries.count() == 1
    entry = entries.get()
    assert entry.amount_credits == 5000
    assert entry.memo == "pilot credits"
    assert entry.created_by == staff
    assert entry.idempotency_key == data["idempotency_key"]
    account.refresh_from_db()
    assert account.balance_credits == 5000 == ledger_total(account=account)
    assert "Recorded" in first.content.decode()
    assert "already submitted" in second.content.decode()

    # A freshly rendered form is a new grant.
    again = {**grant_form(staff_client, account), "reason": "top_up", "amount_credits": "7", "memo": "second"}
    assert again["idempotency_key"] != data["idempotency_key"]
    staff_client.post(url, again)
    account.refresh_from_db()
    assert account.balance_credits == 5007


def test_grant_form_refuses_bad_amounts_and_reused_keys(staff_client: Client, account: BillingAccount) -> None:
    url = f"/admin/accounts/billingaccount/{account.pk}/grant/"
    key = grant_form(staff_client, account)
    for reason, amount in (("grant", "-5"), ("refund", "0"), ("adjustment", "0"), ("usage", "5")):
        response = staff_client.post(url, {**key, "reason": reason, "amount_credits": amount, "memo": "x"})
        assert response.status_code == 200, (reason, amount)
        assert b"errorlist" in response.content, (reason, amount)
    assert not CreditLedgerEntry.objects.filter(account=account).exists()
    # A negative adjustment is allowed.
    staff_client.post(url, {**key, "reason": "adjustment", "amount_credits": "-25", "memo": "correction"})
    account.refresh_from_db()
    assert account.balance_credits == -25
    # The same form (same key) with other content is refused, not granted.
    reused = staff_client.post(url, {**key, "reason": "adjustment", "amount_credits": "-30", "memo": "again"})
    assert reused.status_code == 200 and b"already used for a different grant" in reused.content
    # A forged key is refused.
    forged = staff_client.post(url, {"idempotency_key": "x", "reason": "grant", "amount_credits": "1", "memo": "x"})
    assert forged.status_code == 200 and b"stale" in forged.content
    account.refresh_from_db()
    assert account.balance_credits == -25 == ledger_total(account=account)


def test_grant_needs_the_ledger_permission(db: None, account: BillingAccount) -> None:
    clerk = UserFactory(is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_billingaccount"))
    client = Client()
    client.force_login(clerk)
    assert client.get(f"/admin/accounts/billingaccount/{account.pk}/change/").status_code == 200
    assert client.get(f"/admin/accounts/billingaccount/{account.pk}/grant/").status_code == 403


def test_new_accounts_and_aliases_go_through_the_services(
    staff_client: Client, internal_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ingest(internal_client, [litellm_record(end_user="newcomer", cost=Decimal("0.000050"))])
    waiting = DeferredUsage.objects.get(end_user="newcomer")
    assert waiting.reason == DeferredUsage.Reason.UNKNOWN_PAYER

    owner = UserFactory()
    bind_trusted_gateway()  # the waiting record came through the trusted gateway: its alias decides
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/accounts/billingaccount/add/",
            {
                "name": "Newcomer GmbH",
                "owner": owner.pk,
                "aliases-TOTAL_FORMS": "1",
                "aliases-INITIAL_FORMS": "0",
                "aliases-MIN_NUM_FORMS": "0",
                "aliases-MAX_NUM_FORMS": "1000",
                "aliases-0-end_user": "newcomer",
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    account = BillingAccount.objects.get(name="Newcomer GmbH")
    assert EndUserAlias.objects.get(end_user="newcomer").account == account
    waiting.refresh_from_db()
    assert waiting.status == DeferredUsage.Status.BILLED
    account.refresh_from_db()
    assert account.balance_credits == -50 == ledger_total(account=account)


# --- deferred records -------------------------------------------------------------------------------


@pytest.fixture
def deferred(account: BillingAccount, internal_client: Any) -> dict[str, DeferredUsage]:
    ingest(
        internal_client,
        [
            litellm_record(end_user="stranger", cost=Decimal("0.000300")),
            litellm_record(end_user="stranger", cost=Decimal("0.000200")),
            litellm_record(cost="missing"),
        ],
    )
    # Deferrals are inserted in key order (no deadlocks), not delivery order: tell them apart by cost.
    return {
        "stranger": DeferredUsage.objects.get(end_user="stranger", fact__cost_usd="0.000300"),
        "stranger2": DeferredUsage.objects.get(end_user="stranger", fact__cost_usd="0.000200"),
        "no_cost": DeferredUsage.objects.get(reason=DeferredUsage.Reason.UNKNOWN_COST),
    }


def test_deferred_list_filters_and_is_not_editable(staff_client: Client, deferred: dict[str, DeferredUsage]) -> None:
    listing = staff_client.get(DEFERRED, {"reason__exact": "unknown_cost"}).content.decode()
    assert deferred["no_cost"].litellm_call_id in listing
    assert deferred["stranger"].litellm_call_id not in listing
    assert (
        deferred["stranger"].litellm_call_id
        in staff_client.get(DEFERRED, {"status__exact": "pending"}).content.decode()
    )
    assert deferred["stranger"].litellm_call_id in staff_client.get(DEFERRED, {"q": "stranger"}).content.decode()
    record = deferred["no_cost"]
    assert b'name="_save"' not in staff_client.get(f"{DEFERRED}{record.pk}/change/").content
    assert staff_client.get(f"{DEFERRED}add/").status_code == 403
    assert staff_client.post(f"{DEFERRED}{record.pk}/delete/", {"post": "yes"}).status_code == 403


def test_retry_now_retries_and_reports(
    staff_client: Client, deferred: dict[str, DeferredUsage], account: BillingAccount
) -> None:
    record = deferred["no_cost"]
    response = staff_client.post(
        DEFERRED, {"action": "retry_now", "_selected_action": [record.pk]}, follow=True
    ).content.decode()
    assert "0 billed, 1 still waiting" in response
    record.refresh_from_db()
    assert record.attempts == 1 and record.status == DeferredUsage.Status.PENDING

    # Once the end user has an account, "retry now" bills the waiting record.
    EndUserAlias.objects.create(account=account, end_user="stranger")  # no replay scheduled: retry by hand
    stranger = deferred["stranger"]
    response = staff_client.post(
        DEFERRED, {"action": "retry_now", "_selected_action": [stranger.pk]}, follow=True
    ).content.decode()
    assert "1 billed" in response
    stranger.refresh_from_db()
    assert stranger.status == DeferredUsage.Status.BILLED and stranger.receipt is not None
    account.refresh_from_db()
    assert account.balance_credits == -300 == ledger_total(account=account)


@pytest.mark.django_db(transaction=True)  # the replay runs on commit, as in production
def test_attach_end_user_to_an_account_and_replay(
    staff_client: Client, deferred: dict[str, DeferredUsage], account: BillingAccount
) -> None:
    selected = [deferred["stranger"].pk, deferred["stranger2"].pk, deferred["no_cost"].pk]
    form = staff_client.post(DEFERRED, {"action": "attach_end_user", "_selected_action": selected})
    assert form.status_code == 200
    page = form.content.decode()
    assert "stranger" in page and 'name="account"' in page
    assert "1 selected record(s) are not open" in page  # the unknown-cost record is left alone

    done = staff_client.post(
        DEFERRED,
        {"action": "attach_end_user", "_selected_action": selected, "apply": "1", "account": account.pk},
        follow=True,
    )
    assert done.status_code == 200
    assert "Replay: 2 billed" in done.content.decode()
    assert EndUserAlias.objects.get(end_user="stranger").account == account
    for key in ("stranger", "stranger2"):
        deferred[key].refresh_from_db()
        assert deferred[key].status == DeferredUsage.Status.BILLED
    assert deferred["no_cost"].status == DeferredUsage.Status.PENDING
    account.refresh_from_db()
    assert account.balance_credits == -500 == ledger_total(account=account)
    assert ChargeReceipt.objects.filter(end_user="stranger", account=account).count() == 2


def test_attach_refuses_an_end_user_that_bills_elsewhere(
    staff_client: Client, deferred: dict[str, DeferredUsage], account: BillingAccount
) -> None:
    elsewhere = BillingAccountFactory()
    EndUserAlias.objects.create(account=elsewhere, end_user="stranger")
    done = staff_client.post(
        DEFERRED,
        {
            "action": "attach_end_user",
            "_selected_action": [deferred["stranger"].pk],
            "apply": "1",
            "account": account.pk,
        },
        follow=True,
    )
    assert "already bills to another account" in done.content.decode()
    assert EndUserAlias.objects.get(end_user="stranger").account == elsewhere
    deferred["stranger"].refresh_from_db()
    assert deferred["stranger"].status == DeferredUsage.Status.PENDING


class _FormFields(HTMLParser):
    """The fields a browser would submit from the page's main form (inputs, selects, textareas)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "checkbox", "button"):
            self.data[name] = a.get("value", "")
        elif tag == "input" and name and a.get("type") == "checkbox" and "checked" in a:
            self.data[name] = a.get("value", "on")
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, "")
        elif tag == "option" and self._select and "selected" in a:
            self.data[self._select] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += data


def test_an_alias_added_on_the_account_page_replays_waiting_usage(
    staff_client: Client,
    account: BillingAccount,
    internal_client: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The change page as a browser submits it; existing aliases stay read-only, a new one goes through the service."""
    ingest(internal_client, [litellm_record(end_user="acct-dave", cost=Decimal("0.000070"))])
    url = f"/admin/accounts/billingaccount/{account.pk}/change/"
    form = _FormFields()
    form.feed(staff_client.get(url).content.decode())
    data = {k: v for k, v in form.data.items() if k != "_selected_action" and not k.startswith("aliases-__prefix__")}
    assert data["aliases-INITIAL_FORMS"] == "3"
    total = int(data["aliases-TOTAL_FORMS"])
    data["aliases-TOTAL_FORMS"] = str(total + 1)
    data[f"aliases-{total}-end_user"] = "acct-dave"
    data[f"aliases-{total}-account"] = str(account.pk)
    data["_save"] = "Save"
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert sorted(account.aliases.values_list("end_user", flat=True)) == [
        "acct-alice",
        "acct-bob",
        "acct-carol",
        "acct-dave",
    ]
    assert DeferredUsage.objects.get(end_user="acct-dave").status == DeferredUsage.Status.BILLED
    account.refresh_from_db()
    assert account.balance_credits == -70 == ledger_total(account=account)


def test_staff_grant_promotional_credit_from_the_admin_form(staff_client: Client, account: BillingAccount) -> None:
    url = f"/admin/accounts/billingaccount/{account.pk}/grant/"
    base = {"reason": "grant", "amount_credits": "700", "memo": "launch promo", "category": "promotional"}
    missing = staff_client.post(url, {**grant_form(staff_client, account), **base})
    assert missing.status_code == 200 and "needs an expiry" in missing.content.decode()
    data = {**grant_form(staff_client, account), **base, "expires_at": "2099-03-01 00:00", "priority": "3"}
    assert staff_client.post(url, data).status_code == 302
    lot = PromotionalCredit.objects.get(account=account)
    assert (lot.granted_credits, lot.remaining_credits, lot.priority) == (700, 700, 3)
    assert staff_client.get("/admin/accounts/promotionalcredit/").status_code == 200
