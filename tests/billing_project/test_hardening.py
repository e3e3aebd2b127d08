"""Issue 8, hardening: internal-only /metrics and schema, production security settings, CSP,
login throttling, body reading, and bounds on grants and receipt lookups."""

import io
import os
import re
import secrets
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.test import Client, override_settings
from hypothesis import given
from hypothesis import strategies as st

from accounts.exceptions import InvalidLedgerOperation
from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import BIGINT_MAX
from accounts.services import InvalidGrant, grant_credits
from billing_project.http import (
    BadContentLength,
    BodyTooLarge,
    IncompleteBody,
    LengthRequired,
    read_request_body,
)
from tests.factories import UserFactory
from tests.paths import REPO_ROOT
from tests.tokens import auth_header

ROOT = REPO_ROOT
CREDITS = "/api/internal/billing/credits"
RECEIPT = "/api/internal/billing/receipts/{}"


# --- /metrics and /api/schema/ need the internal token ----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/metrics", "/api/schema/"])
def test_internal_pages_refuse_without_the_token(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.json()
    wrong = client.get(path, HTTP_AUTHORIZATION="Bearer not-the-token")
    assert wrong.status_code == 401


@pytest.mark.django_db
def test_metrics_with_the_token(client: Client) -> None:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.BILLING_METRICS_TOKEN}")
    assert response.status_code == 200
    assert b"django_http_requests" in response.content


@pytest.mark.django_db
def test_schema_with_the_token(client: Client) -> None:
    response = client.get(
        "/api/schema/", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION=f"Bearer {settings.BILLING_METRICS_TOKEN}"
    )
    assert response.status_code == 200
    assert "/api/internal/billing/ingest" in response.json()["paths"]


# --- production security settings -------------------------------------------------------------


def _production_environment() -> dict[str, str]:
    """The environment README.md's "Production settings" block documents (secrets filled in)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Production settings", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's Production settings section has no ```sh block"
    env: dict[str, str] = {}
    for line in block.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        env[name] = secrets.token_urlsafe(64) if value.startswith("<") else value
    return env


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, "DATABASE_URL": os.environ["DATABASE_URL"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment() -> None:
    env = _production_environment()
    assert env["DEBUG"] == "false"
    result = _check_deploy(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_when_the_production_settings_are_turned_off() -> None:
    """The same environment with the overrides the tests use: the warnings the defaults prevent."""
    env = {
        **_production_environment(),
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
    }
    result = _check_deploy(env)
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr, result.stderr


@pytest.mark.django_db
def test_https_redirect_spares_the_internal_paths() -> None:
    with override_settings(SECURE_SSL_REDIRECT=True):
        client = Client()  # middleware is built with these settings
        login = client.get("/accounts/login/")
        assert login.status_code == 301 and login["Location"].startswith("https://")
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics", headers=auth_header("/metrics")).status_code == 200
        receipt = RECEIPT.format("no-such-call")
        assert client.get(receipt, headers=auth_header(receipt)).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_pages_carry_a_content_security_policy(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy


# --- login throttling -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_right_password_is_refused_after_too_many_wrong_ones(path: str, settings: Any) -> None:
    user = UserFactory(is_staff=True)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        wrong = client.post(path, {"username": user.username, "password": "wrong-password"})
        assert wrong.status_code in (200, 429)
        assert "_auth_user_id" not in client.session
    right = client.post(path, {"username": user.username, "password": "correct-horse-battery"})
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user from the same address is not locked out (lockout is per user and address).
    other = UserFactory(is_staff=True)
    fine = Client().post(path, {"username": other.username, "password": "correct-horse-battery"})
    assert fine.status_code == 302


@pytest.mark.django_db
def test_a_few_wrong_passwords_still_let_the_right_one_in(settings: Any) -> None:
    user = UserFactory()
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/accounts/login/", {"username": user.username, "password": "wrong-password"})
    right = client.post("/accounts/login/", {"username": user.username, "password": "correct-horse-battery"})
    assert right.status_code == 302 and client.session["_auth_user_id"] == str(user.pk)


# --- reading bodies ---------------------------------------------------------------------------------


def _request(body: bytes, **environ: Any) -> WSGIRequest:
    return WSGIRequest(
        {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "wsgi.input": io.BytesIO(body),
            **environ,
        }
    )


def test_body_by_content_length() -> None:
    assert read_request_body(_request(b"hello, more", CONTENT_LENGTH="5"), limit=10) == b"hello"


def test_content_length_over_the_limit_is_413_before_reading() -> None:
    with pytest.raises(BodyTooLarge, match="BILLING_X") as caught:
        read_request_body(_request(b"x" * 11, CONTENT_LENGTH="11"), limit=10, limit_name="BILLING_X")
    assert caught.value.status_code == 413
    with pytest.raises(BodyTooLarge):
        read_request_body(_request(b"", CONTENT_LENGTH="9" * 5000), limit=10)


@pytest.mark.parametrize("value", ["-1", "ten", "1e3", "²", "0x10", "5 5"])
def test_bad_content_length_is_400(value: str) -> None:
    with pytest.raises(BadContentLength) as caught:
        read_request_body(_request(b"hello", CONTENT_LENGTH=value), limit=10)
    assert caught.value.status_code == 400 and caught.value.field == "Content-Length"


def test_body_shorter_than_its_content_length_is_400() -> None:
    with pytest.raises(IncompleteBody):
        read_request_body(_request(b"abc", CONTENT_LENGTH="8"), limit=10)


def test_chunked_body_without_a_terminating_server_is_411() -> None:
    with pytest.raises(LengthRequired) as caught:
        read_request_body(_request(b"hello", HTTP_TRANSFER_ENCODING="chunked"), limit=10)
    assert caught.value.status_code == 411


def test_no_length_and_no_transfer_encoding_is_an_empty_body() -> None:
    assert read_request_body(_request(b"ignored"), limit=10) == b""


@given(body=st.binary(max_size=300), limit=st.integers(min_value=0, max_value=300))
def test_terminated_input_is_read_to_its_end_or_refused(body: bytes, limit: int) -> None:
    request = _request(body, **{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    if len(body) <= limit:
        assert read_request_body(request, limit=limit) == body
    else:
        with pytest.raises(BodyTooLarge):
            read_request_body(request, limit=limit)


# --- bounds on grants and balances -------------------------------------------------------------------


def _grant(client: Any, account: BillingAccount, **overrides: Any) -> Any:
    payload = {"account": str(account.public_id), "amount_credits": 5, "reason": "grant", **overrides}
    return client.post(CREDITS, payload, format="json")


@pytest.mark.django_db
@pytest.mark.parametrize("amount", [2**63, -(2**63) - 1, 10**30])
def test_credits_api_refuses_amounts_outside_bigint(internal_client, account, amount: int) -> None:
    response = _grant(internal_client, account, amount_credits=amount, reason="adjustment")
    assert response.status_code == 400
    assert response.json()["field"] == "amount_credits"
    assert not CreditLedgerEntry.objects.exists()


@pytest.mark.django_db
def test_credits_api_accepts_the_largest_bigint(internal_client, account) -> None:
    response = _grant(internal_client, account, amount_credits=BIGINT_MAX)
    assert response.status_code == 201 and response.json()["balance_credits"] == BIGINT_MAX


@pytest.mark.django_db
def test_a_grant_past_the_balance_range_is_refused(internal_client, account) -> None:
    grant_credits(account=account, amount_credits=BIGINT_MAX, reason="grant")
    with pytest.raises(InvalidLedgerOperation, match="amount_credits") as caught:
        grant_credits(account=account, amount_credits=1, reason="top_up")
    assert isinstance(caught.value, InvalidGrant) and caught.value.field == "amount_credits"
    response = _grant(internal_client, account, amount_credits=1, idempotency_key="overflow")
    assert response.status_code == 400 and response.json()["field"] == "amount_credits"
    assert "balance" in response.json()["error"]
    account.refresh_from_db()
    assert account.balance_credits == BIGINT_MAX
    assert CreditLedgerEntry.objects.count() == 1
    # Below the range too: an adjustment that would take the balance under -2**63.
    other = BillingAccount.objects.create(name="Debtor")
    grant_credits(account=other, amount_credits=-(2**63), reason="adjustment")
    with pytest.raises(InvalidGrant):
        grant_credits(account=other, amount_credits=-1, reason="adjustment")


@pytest.mark.django_db
def test_admin_grant_form_refuses_amounts_outside_bigint(account) -> None:
    staff = UserFactory(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    url = f"/admin/accounts/billingaccount/{account.pk}/grant/"
    form = client.get(url).content.decode()
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form).group(1)
    for amount in (str(2**63), str(-(2**63) - 1)):
        response = client.post(
            url, {"idempotency_key": key, "reason": "adjustment", "amount_credits": amount, "memo": "x"}
        )
        assert response.status_code == 200
        assert b"errorlist" in response.content and b"amount_credits must be between" in response.content
    assert not CreditLedgerEntry.objects.exists()


# --- receipt lookup refuses call ids no receipt can have -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("call_id", ["%00", "call%00id", "x" * 256])
def test_receipt_lookup_refuses_impossible_call_ids(internal_client, call_id: str) -> None:
    response = internal_client.get(RECEIPT.format(call_id))
    assert response.status_code == 400
    assert response.json()["field"] == "litellm_call_id"


@pytest.mark.django_db
def test_receipt_lookup_of_a_255_character_id_is_a_plain_404(internal_client) -> None:
    response = internal_client.get(RECEIPT.format("x" * 255))
    assert response.status_code == 404 and response.json()["status"] == "unknown"


def test_the_service_keeps_pythons_recursion_limit_although_web3_raises_it() -> None:
    """py_ecc (web3) sets 100,000 on import; the loaded service must be back at 1000, where a hostile deep
    body is a RecursionError and a refused record, not a C stack overflow of the worker."""
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, sys, web3; raised = sys.getrecursionlimit(); django.setup(); "
            "print(raised, sys.getrecursionlimit())",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "billing_project.settings", "DEBUG": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["100000", "1000"]
