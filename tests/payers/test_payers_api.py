"""The runs and payer-bindings internal APIs, and the payer bindings in the staff admin (issue 10)."""

import hashlib
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from accounts.models import BillingAccount
from payers.models import ApiKeyBinding, EndUserAlias, RunBinding, TeamBinding
from payers.signals import payer_binding_created
from tests.factories import ApiKeyBindingFactory, BillingAccountFactory, RunBindingFactory, UserFactory

RUNS = "/api/internal/billing/runs"
BINDINGS = "/api/internal/billing/payer-bindings"

pytestmark = pytest.mark.django_db


def _h(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@pytest.fixture
def two() -> tuple[BillingAccount, BillingAccount]:
    return BillingAccountFactory(name="A"), BillingAccountFactory(name="B")


@pytest.fixture
def announced() -> Any:
    got: list[tuple[str, str, int]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        got.append((kwargs["kind"], kwargs["value"], kwargs["account_id"]))

    payer_binding_created.connect(receiver, weak=False)
    yield got
    payer_binding_created.disconnect(receiver)


# --- POST /runs -------------------------------------------------------------------------------


def test_register_a_run_then_replay_then_conflict(
    internal_client: Any,
    two: tuple[BillingAccount, BillingAccount],
    announced: list,
    django_capture_on_commit_callbacks: Any,
) -> None:
    a, b = two
    with django_capture_on_commit_callbacks(execute=True):
        first = internal_client.post(
            RUNS, {"run_id": "org/run-42", "account": str(a.public_id), "attempt": 0}, format="json"
        )
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["run_id"] == "org/run-42" and body["account"] == str(a.public_id)
    # The attempt is checked but not stored, so it is not echoed back as if it were.
    assert body["created"] is True and "attempt" not in body
    assert announced == [("run", "org/run-42", a.pk)]

    again = internal_client.post(
        RUNS, {"run_id": "org/run-42", "account": str(a.public_id), "attempt": 1}, format="json"
    )
    assert again.status_code == 200 and again.json()["created"] is False

    other = internal_client.post(RUNS, {"run_id": "org/run-42", "account": str(b.public_id)}, format="json")
    assert other.status_code == 409
    assert other.json()["field"] == "run_id" and "another billing account" in other.json()["error"]
    assert RunBinding.objects.get().account == a
    assert len(announced) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"account": "A"}, "run_id"),
        ({"run_id": "", "account": "A"}, "run_id"),
        ({"run_id": "x" * 256, "account": "A"}, "run_id"),
        ({"run_id": "run\x00", "account": "A"}, "run_id"),
        ({"run_id": "run\x1b[31m", "account": "A"}, "run_id"),
        ({"run_id": "run-1"}, "account"),
        ({"run_id": "run-1", "account": "not-a-uuid"}, "account"),
        ({"run_id": "run-1", "account": "00000000-0000-0000-0000-000000000000"}, "account"),
        ({"run_id": "run-1", "account": "A", "attempt": -1}, "attempt"),
        ({"run_id": "run-1", "account": "A", "attempt": "first"}, "attempt"),
    ],
)
def test_bad_run_registrations_name_the_field(
    internal_client: Any, two: tuple[BillingAccount, BillingAccount], payload: dict, field: str
) -> None:
    if payload.get("account") == "A":
        payload = {**payload, "account": str(two[0].public_id)}
    response = internal_client.post(RUNS, payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert not RunBinding.objects.exists()


def test_the_binding_apis_need_the_internal_token(client: Client, two: tuple[BillingAccount, BillingAccount]) -> None:
    for url, payload in [
        (RUNS, {"run_id": "r", "account": str(two[0].public_id)}),
        (BINDINGS, {"kind": "team", "value": "t", "account": str(two[0].public_id)}),
    ]:
        response = client.post(url, payload, content_type="application/json", HTTP_AUTHORIZATION="Bearer wrong")
        assert response.status_code == 401
    assert not RunBinding.objects.exists() and not TeamBinding.objects.exists()


# --- POST /payer-bindings ---------------------------------------------------------------------


def test_bind_a_raw_key_stores_only_its_hash_then_replay_then_conflicts(
    internal_client: Any,
    two: tuple[BillingAccount, BillingAccount],
    announced: list,
    django_capture_on_commit_callbacks: Any,
) -> None:
    a, b = two
    raw = "sk-tenant-a-very-secret"
    payload = {"kind": "key", "api_key": raw, "account": str(a.public_id), "gateway": True, "label": "gw"}
    with django_capture_on_commit_callbacks(execute=True):
        first = internal_client.post(BINDINGS, payload, format="json")
    assert first.status_code == 201, first.content
    assert first.json() == {
        "kind": "key",
        "value": _h(raw),
        "account": str(a.public_id),
        "gateway": True,
        "created_at": first.json()["created_at"],
        "created": True,
    }
    assert raw not in first.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT key_hash, is_gateway, label FROM accounts_apikeybinding")
        assert cursor.fetchall() == [(_h(raw), True, "gw")]
    assert announced == [("key", _h(raw), a.pk)]

    by_hash = internal_client.post(
        BINDINGS, {"kind": "key", "value": _h(raw), "account": str(a.public_id), "gateway": True}, format="json"
    )
    assert by_hash.status_code == 200 and by_hash.json()["created"] is False

    elsewhere = internal_client.post(BINDINGS, {**payload, "account": str(b.public_id)}, format="json")
    assert elsewhere.status_code == 409 and elsewhere.json()["field"] == "api_key"
    by_hash_elsewhere = internal_client.post(
        BINDINGS, {"kind": "key", "value": _h(raw), "account": str(b.public_id), "gateway": True}, format="json"
    )
    assert by_hash_elsewhere.status_code == 409 and by_hash_elsewhere.json()["field"] == "value"
    not_gateway = internal_client.post(BINDINGS, {**payload, "gateway": False}, format="json")
    assert not_gateway.status_code == 409 and not_gateway.json()["field"] == "gateway"
    assert ApiKeyBinding.objects.get().account == a


def test_bind_teams_and_end_users(internal_client: Any, two: tuple[BillingAccount, BillingAccount]) -> None:
    a, b = two
    for kind, model, field in [("team", TeamBinding, "team_id"), ("end_user", EndUserAlias, "end_user")]:
        payload = {"kind": kind, "value": f"{kind}-1", "account": str(a.public_id)}
        first = internal_client.post(BINDINGS, payload, format="json")
        assert first.status_code == 201, first.content
        assert first.json()["value"] == f"{kind}-1" and first.json()["gateway"] is False
        assert internal_client.post(BINDINGS, payload, format="json").status_code == 200
        conflict = internal_client.post(BINDINGS, {**payload, "account": str(b.public_id)}, format="json")
        assert conflict.status_code == 409 and conflict.json()["field"] == "value"
        assert model.objects.get(**{field: f"{kind}-1"}).account == a


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "run", "value": "r"}, "kind"),
        ({"kind": "key"}, "value"),
        ({"kind": "key", "value": "h", "api_key": "sk-x"}, "value"),
        ({"kind": "team"}, "value"),
        ({"kind": "team", "value": ""}, "value"),
        ({"kind": "team", "value": "x" * 256}, "value"),
        ({"kind": "team", "value": "t\x07"}, "value"),
        ({"kind": "team", "value": "t", "api_key": "sk-x"}, "api_key"),
        ({"kind": "end_user", "value": "u", "gateway": True}, "gateway"),
        ({"kind": "team", "value": "t", "account": "00000000-0000-0000-0000-000000000000"}, "account"),
    ],
)
def test_bad_bindings_name_the_field(
    internal_client: Any, two: tuple[BillingAccount, BillingAccount], payload: dict, field: str
) -> None:
    response = internal_client.post(BINDINGS, {"account": str(two[0].public_id), **payload}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert not (TeamBinding.objects.exists() or EndUserAlias.objects.exists() or ApiKeyBinding.objects.exists())


def test_a_raw_key_litellm_would_log_unhashed_is_refused(
    internal_client: Any, two: tuple[BillingAccount, BillingAccount]
) -> None:
    response = internal_client.post(
        BINDINGS, {"kind": "key", "api_key": "plain-secret", "account": str(two[0].public_id)}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "api_key"
    assert not ApiKeyBinding.objects.exists()


def test_openapi_documents_the_binding_apis(client: Client) -> None:
    schema = client.get(
        "/api/schema/", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION=f"Bearer {settings.BILLING_METRICS_TOKEN}"
    ).json()
    for component in (
        "RunRegistrationRequest",
        "RunRegistration",
        "PayerBindingRequest",
        "PayerBinding",
        "Error",
    ):
        assert component in schema["components"]["schemas"], component
    for path in ("/api/internal/billing/runs", "/api/internal/billing/payer-bindings"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "201", "400", "401", "409"} <= set(responses), (path, responses.keys())


# --- admin ------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(db: None) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_admin_key_form_hashes_a_raw_key_and_never_keeps_it(
    staff_client: Client, announced: list, django_capture_on_commit_callbacks: Any
) -> None:
    account = BillingAccountFactory()
    raw = "sk-pasted-by-staff-0001"
    add = staff_client.get(f"/admin/payers/apikeybinding/add/?account={account.pk}")
    assert add.status_code == 200 and 'type="password"' in add.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/payers/apikeybinding/add/",
            {"account": account.pk, "raw_key": raw, "key_hash": "", "is_gateway": "on", "label": "gateway"},
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    binding = ApiKeyBinding.objects.get()
    assert (binding.key_hash, binding.is_gateway, binding.account) == (_h(raw), True, account)
    assert binding.created_by is not None
    assert announced == [("key", _h(raw), account.pk)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM django_admin_log WHERE change_message LIKE %s OR object_repr LIKE %s",
            [f"%{raw}%", f"%{raw}%"],
        )
        assert cursor.fetchone() == (0,)

    # The same key again is refused on the form (no second row); the raw key is not echoed back.
    again = staff_client.post(
        "/admin/payers/apikeybinding/add/", {"account": account.pk, "raw_key": raw, "key_hash": "", "label": ""}
    )
    assert again.status_code == 200 and raw not in again.content.decode()
    assert ApiKeyBinding.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"raw_key": "", "key_hash": ""}, "either the raw API key or its hash"),
        ({"raw_key": "sk-a", "key_hash": "abc"}, "either the raw API key or its hash"),
        ({"raw_key": "plain-secret", "key_hash": ""}, "Not a LiteLLM sk-"),
    ],
)
def test_admin_key_form_refuses_ambiguous_or_unhashable_input(staff_client: Client, data: dict, error: str) -> None:
    account = BillingAccountFactory()
    response = staff_client.post("/admin/payers/apikeybinding/add/", {"account": account.pk, "label": "", **data})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert "plain-secret" not in response.content.decode()
    assert not ApiKeyBinding.objects.exists()


def test_admin_key_form_accepts_a_logged_literal(staff_client: Client) -> None:
    account = BillingAccountFactory()
    response = staff_client.post(
        "/admin/payers/apikeybinding/add/",
        {"account": account.pk, "raw_key": "", "key_hash": "litellm_proxy_master_key", "is_gateway": "on", "label": ""},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert ApiKeyBinding.objects.get().key_hash == "litellm_proxy_master_key"


def test_account_page_shows_bindings_and_adds_team_and_run_through_the_services(
    staff_client: Client, announced: list, django_capture_on_commit_callbacks: Any
) -> None:
    account = BillingAccountFactory()
    key = ApiKeyBindingFactory(account=account, is_gateway=True)
    RunBindingFactory(account=account, run_id="run-old")
    url = f"/admin/accounts/billingaccount/{account.pk}/change/"
    page = staff_client.get(url).content.decode()
    assert key.key_hash in page and "run-old" in page and "add an API key" in page
    data = {
        "name": account.name,
        "owner": account.owner_id,
        "key_bindings-TOTAL_FORMS": "1",
        "key_bindings-INITIAL_FORMS": "1",
        "key_bindings-0-id": key.pk,
        "key_bindings-0-account": account.pk,
        "team_bindings-TOTAL_FORMS": "1",
        "team_bindings-INITIAL_FORMS": "0",
        "team_bindings-0-team_id": "team-new",
        "team_bindings-0-label": "",
        "run_bindings-TOTAL_FORMS": "2",
        "run_bindings-INITIAL_FORMS": "1",
        "run_bindings-0-id": RunBinding.objects.get().pk,
        "run_bindings-0-account": account.pk,
        "run_bindings-1-run_id": "run/new",
        "aliases-TOTAL_FORMS": "0",
        "aliases-INITIAL_FORMS": "0",
        "credit_holds-TOTAL_FORMS": "0",  # the read-only inline of open credit holds
        "credit_holds-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    for prefix in ("key_bindings", "team_bindings", "run_bindings", "aliases", "credit_holds"):
        data[f"{prefix}-MIN_NUM_FORMS"] = "0"
        data[f"{prefix}-MAX_NUM_FORMS"] = "1000"
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:4000]
    assert TeamBinding.objects.get().team_id == "team-new"
    assert sorted(RunBinding.objects.values_list("run_id", flat=True)) == ["run-old", "run/new"]
    assert sorted(announced) == [("run", "run/new", account.pk), ("team", "team-new", account.pk)]


def test_standalone_team_and_run_admins_go_through_the_services(
    staff_client: Client, announced: list, django_capture_on_commit_callbacks: Any
) -> None:
    account = BillingAccountFactory()
    with django_capture_on_commit_callbacks(execute=True):
        team = staff_client.post(
            "/admin/payers/teambinding/add/", {"account": account.pk, "team_id": "t1", "label": ""}
        )
        run = staff_client.post("/admin/payers/runbinding/add/", {"account": account.pk, "run_id": "r/1"})
    assert team.status_code == 302 and run.status_code == 302
    assert announced == [("team", "t1", account.pk), ("run", "r/1", account.pk)]
    bad = staff_client.post("/admin/payers/runbinding/add/", {"account": account.pk, "run_id": "r\t2"})
    assert bad.status_code == 200
    assert RunBinding.objects.count() == 1
    # Bindings are never edited: the change page is view-only.
    binding = RunBinding.objects.get()
    changed = staff_client.post(
        f"/admin/payers/runbinding/{binding.pk}/change/", {"account": account.pk, "run_id": "x"}
    )
    assert changed.status_code == 403
    binding.refresh_from_db()
    assert binding.run_id == "r/1"
