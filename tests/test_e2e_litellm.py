"""End to end with the real LiteLLM proxy (litellm[proxy]==1.108.7, from bin/bootstrap-litellm).

The service runs the production way (gunicorn, gthread workers) on the
pytest-django test database; the proxy runs with `mock_response` models and its
`generic_api` callback pointed at our ingest endpoint. Calls are made through
the proxy and the test checks, from LiteLLM's own answers (the
`x-litellm-call-id` and `x-litellm-response-cost` headers, or the final usage
chunk of a stream), that each successful call was billed exactly once at
exactly LiteLLM's cost, and that the failed call was not billed.

No network: loopback only, LITELLM_LOCAL_MODEL_COST_MAP=True, and the failing
model points at a port that is bound but never listens (connection refused).
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import usd_to_credits
from accounts.services import grant_credits
from receipts.models import ChargeReceipt, DeferredUsage, IngestBatch
from receipts.selectors import delivered_record
from tests.factories import BillingAccountFactory, EndUserAliasFactory

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"
SERVICE_START_DEADLINE_S = 60.0
PROXY_START_DEADLINE_S = 120.0
RECEIPT_WAIT_MS = 20_000
DELIVERY_DEADLINE_S = 30.0
LOG_TAIL_LINES = 200
# What LiteLLM may inherit from us: nothing that names a database (LiteLLM
# reads DATABASE_URL and would try to use it) and no HTTP proxy settings.
_LITELLM_ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log_path: Path
    base_url: str
    key: str = ""  # the proxy's master key

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL for the pytest-django test database, in the form settings.py understands."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = settings_dict.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    name = quote(settings_dict["NAME"], safe="")
    if host.startswith("/"):  # a Unix-socket directory
        netloc = f"{credentials}@:{port}" if port else f"{credentials}@"
        return f"postgresql://{netloc}/{name}?host={quote(host, safe='/')}"
    netloc = f"{credentials}@{host or 'localhost'}" + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{name}"


def _start(
    name: str, argv: list[str], *, env: dict[str, str], log_path: Path, base_url: str, cwd: Path = ROOT
) -> Process:
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child has its own copy of the descriptor
    return Process(name=name, proc=proc, log_path=log_path, base_url=base_url)


def _wait_ready(process: Process, path: str, *, deadline_s: float, ready: Callable[[httpx.Response], bool]) -> None:
    """Poll `path` until `ready(response)`, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last_error = "no answer yet"
    with httpx.Client(base_url=process.base_url, timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(path)
                if ready(response):
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            try:
                # The pause between polls doubles as the check that the process is alive.
                code = process.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"{process.name} exited with status {code} before it was ready.\n{process.log_tail()}")
    pytest.fail(
        f"{process.name} was not ready at {process.base_url}{path} within {deadline_s:.0f}s "
        f"(last: {last_error}).\n{process.log_tail()}"
    )


def _stop(process: Process) -> None:
    if process.proc.poll() is None:
        process.proc.terminate()
        try:
            process.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait(timeout=15)
    # pytest shows captured teardown output only when the test failed.
    print(f"\n===== {process.name} log (last {LOG_TAIL_LINES} lines) =====\n{process.log_tail()}")


@pytest.fixture
def billing_service(transactional_db: None, tmp_path: Path) -> Iterator[Process]:
    """Our service under gunicorn, as in production, on the test database."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": os.environ["SECRET_KEY"],
        "BILLING_INGEST_TOKEN": os.environ["BILLING_INGEST_TOKEN"],
        "WEB_CONCURRENCY": "2",
        "DJANGO_SETTINGS_MODULE": "billing_project.settings",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "billing_project.wsgi",
        "-c",
        "billing_project/gunicorn.conf.py",
        "-b",
        f"127.0.0.1:{port}",
    ]
    service = _start("gunicorn", argv, env=env, log_path=tmp_path / "gunicorn.log", base_url=f"http://127.0.0.1:{port}")
    try:
        _wait_ready(
            service,
            "/healthz",
            deadline_s=SERVICE_START_DEADLINE_S,
            ready=lambda r: r.status_code == 200 and r.json().get("status") == "ok",
        )
        yield service
    finally:
        _stop(service)


@pytest.fixture
def litellm_proxy(billing_service: Process, tmp_path: Path) -> Iterator[Process]:
    """The real LiteLLM proxy with generic_api success and failure callbacks pointed at the service."""
    if not LITELLM_BIN.exists():
        pytest.fail(
            f"The LiteLLM proxy is not installed ({LITELLM_BIN} is missing). "
            "Run bin/bootstrap-litellm (bin/test does) to install the pinned litellm[proxy] into .venv-litellm."
        )
    # Bound but never listening: connecting to it is refused at once, and no one else can take the port.
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    master_key = f"sk-e2e-{secrets.token_urlsafe(24)}"
    config = tmp_path / "litellm-config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": "gpt-4o-mini",
                        "litellm_params": {
                            "model": "openai/gpt-4o-mini",
                            "api_key": "sk-fake",
                            "mock_response": "Hello from a mocked model.",
                        },
                    },
                    {
                        "model_name": "broken",
                        "litellm_params": {
                            "model": "openai/gpt-4o-mini",
                            "api_key": "sk-fake",
                            "api_base": f"http://127.0.0.1:{refused_port}/v1",
                            "num_retries": 0,
                        },
                    },
                ],
                "litellm_settings": {
                    "success_callback": ["generic_api"],
                    "failure_callback": ["generic_api"],
                    "num_retries": 0,
                },
                "router_settings": {"num_retries": 0},
                "general_settings": {"master_key": master_key},
            },
            indent=2,
        )
    )
    port = _free_port()
    env = {k: os.environ[k] for k in _LITELLM_ENV_ALLOWLIST if k in os.environ}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "GENERIC_LOGGER_ENDPOINT": f"{billing_service.base_url}/api/internal/billing/ingest",
            "GENERIC_LOGGER_HEADERS": f"Authorization=Bearer {os.environ['BILLING_INGEST_TOKEN']}",
            "DEFAULT_FLUSH_INTERVAL_SECONDS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    # Run from the temp dir: whatever LiteLLM writes to its working directory stays out of the repository.
    log_path, base_url = tmp_path / "litellm.log", f"http://127.0.0.1:{port}"
    proxy = _start("litellm", argv, env=env, log_path=log_path, base_url=base_url, cwd=tmp_path)
    proxy.key = master_key
    try:
        _wait_ready(proxy, "/health/liveliness", deadline_s=PROXY_START_DEADLINE_S, ready=lambda r: r.is_success)
        yield proxy
    finally:
        _stop(proxy)
        refused.close()


@dataclass
class Call:
    call_id: str
    cost: Decimal  # LiteLLM's, from its response
    end_user: str
    account: BillingAccount
    stream: bool = False


def _header_cost(response: httpx.Response) -> Decimal | None:
    text = response.headers.get("x-litellm-response-cost")
    return Decimal(text) if text not in (None, "", "None") else None


def _chat(
    client: httpx.Client, *, model: str = "gpt-4o-mini", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Say hello."}], **body},
        headers=headers or {},
    )


def _streamed_chat(client: httpx.Client, **body: Any) -> tuple[str, Decimal | None, Decimal | None]:
    """A streaming call: (call id, header cost, cost from the final usage chunk).

    The headers of a stream go out before LiteLLM knows the cost, so LiteLLM
    reports it in the last chunk's `usage.cost` (with stream_options.include_usage).
    """
    payload = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **body,
    }
    usage_cost: Decimal | None = None
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data:") :], parse_float=Decimal)
            usage = chunk.get("usage") or {}
            if usage.get("cost") is not None:
                usage_cost = Decimal(usage["cost"])
        return response.headers["x-litellm-call-id"], _header_cost(response), usage_cost


def _wait_for_delivery(*, records: int, skipped: int) -> None:
    """Wait (bounded) until the service has handled at least `records` records, `skipped` of them skipped."""
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while True:
        totals = IngestBatch.objects.filter(error="").aggregate(records=Sum("record_count"), skipped=Sum("skipped"))
        if (totals["records"] or 0) >= records and (totals["skipped"] or 0) >= skipped:
            return
        if time.monotonic() > deadline:
            batches = list(IngestBatch.objects.values())
            pytest.fail(f"LiteLLM did not deliver {records} records ({skipped} skipped) in time: {batches}")
        time.sleep(0.1)  # a bounded condition wait: re-check the database


def test_calls_through_the_real_proxy_are_billed_exactly_once(billing_service: Process, litellm_proxy: Process) -> None:
    alice = BillingAccountFactory(name="Alice e2e")
    bob = BillingAccountFactory(name="Bob e2e")
    EndUserAliasFactory(account=alice, end_user="e2e-alice")
    EndUserAliasFactory(account=alice, end_user="e2e-alice-stream")
    EndUserAliasFactory(account=bob, end_user="e2e-bob")
    grant_credits(account=alice, amount_credits=1_000_000, reason="grant", idempotency_key="e2e-alice-start")
    starting = {alice.pk: 1_000_000, bob.pk: 0}

    calls: list[Call] = []
    master = {"Authorization": f"Bearer {litellm_proxy.key}"}
    with httpx.Client(base_url=litellm_proxy.base_url, headers=master, timeout=60.0, trust_env=False) as client:
        # 1. Non-streaming, end user from the request's `user`.
        response = _chat(client, user="e2e-alice")
        assert response.status_code == 200, response.text
        cost = _header_cost(response)
        assert cost is not None and cost > 0, response.headers
        calls.append(Call(response.headers["x-litellm-call-id"], cost, "e2e-alice", alice))

        # 2. Streaming.
        call_id, header_cost, usage_cost = _streamed_chat(client, user="e2e-alice-stream")
        if header_cost is not None and usage_cost is not None:
            assert header_cost == usage_cost
        cost = header_cost if header_cost is not None else usage_cost
        assert cost is not None, "LiteLLM reported no cost for the stream (header or final usage chunk)"
        calls.append(Call(call_id, cost, "e2e-alice-stream", alice, stream=True))

        # 3. End user from the x-litellm-end-user-id header only.
        response = _chat(client, headers={"x-litellm-end-user-id": "e2e-bob"})
        assert response.status_code == 200, response.text
        cost = _header_cost(response)
        assert cost is not None, response.headers
        calls.append(Call(response.headers["x-litellm-call-id"], cost, "e2e-bob", bob))

        # 4. A call that fails (connection refused): LiteLLM sends a failure record with cost 0.
        failed = _chat(client, model="broken", user="e2e-alice")
        assert failed.status_code >= 500, failed.text
        failed_call_id = failed.headers["x-litellm-call-id"]
        assert _header_cost(failed) in (None, Decimal(0))

    assert len({c.call_id for c in calls} | {failed_call_id}) == 4

    internal = {"Authorization": f"Bearer {os.environ['BILLING_INGEST_TOKEN']}"}
    with httpx.Client(base_url=billing_service.base_url, headers=internal, timeout=60.0, trust_env=False) as service:
        for call in calls:
            response = service.get(
                f"/api/internal/billing/receipts/{call.call_id}", params={"wait_ms": RECEIPT_WAIT_MS}
            )
            assert response.status_code == 200, (call, response.text)
            body = json.loads(response.text, parse_float=Decimal)
            assert Decimal(body["cost_usd"]) == call.cost
            assert body["charged_credits"] == usd_to_credits(call.cost)
            assert body["end_user"] == call.end_user
            assert body["account"] == str(call.account.public_id)

        # The failure record is delivered too (it is counted as skipped); then it must have no receipt.
        _wait_for_delivery(records=4, skipped=1)
        response = service.get(f"/api/internal/billing/receipts/{failed_call_id}", params={"wait_ms": 0})
        assert response.status_code == 404, response.text
        assert response.json()["status"] == "unknown"

    assert not ChargeReceipt.objects.filter(litellm_call_id=failed_call_id).exists()
    assert not DeferredUsage.objects.exists(), list(DeferredUsage.objects.values("litellm_call_id", "reason"))
    assert not IngestBatch.objects.exclude(error="").exists()

    # Exactly one receipt (and one usage debit) per successful call, at exactly LiteLLM's cost.
    assert ChargeReceipt.objects.count() == len(calls)
    for call in calls:
        (receipt,) = ChargeReceipt.objects.filter(litellm_call_id=call.call_id)
        assert receipt.cost_usd == call.cost
        assert receipt.charged_credits == usd_to_credits(call.cost)
        assert receipt.account_id == call.account.pk
        assert receipt.end_user == call.end_user
        assert receipt.stream is call.stream
        assert receipt.status == ChargeReceipt.Status.SUCCESS
        assert receipt.source_reference == f"{call.call_id}/0/{call.call_id}"
        assert receipt.ledger_entry.amount_credits == -receipt.charged_credits
        assert receipt.ledger_entry.reason == CreditLedgerEntry.Reason.USAGE
        assert receipt.payer_source == "end_user"  # the proxy's master key is bound as a trusted gateway
        delivered = delivered_record(ingest_batch_id=receipt.ingest_batch_id, position=receipt.batch_position)
        assert json.loads(delivered)["litellm_call_id"] == call.call_id  # the exact record, kept with its delivery

    # Each balance moved by exactly the credits charged to it, and equals its ledger.
    for account in (alice, bob):
        account.refresh_from_db()
        charged = sum(usd_to_credits(c.cost) for c in calls if c.account.pk == account.pk)
        assert charged > 0
        assert account.balance_credits == starting[account.pk] - charged
        ledger = CreditLedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount_credits"))["total"]
        assert account.balance_credits == ledger
