"""The shipped stack (docker-compose.yml), tested around Docker, which is not available here.

- the `web` service's command, run as compose runs it (same shell command, same environment
  with the database and secrets pointed at the test database, a fresh metrics directory),
  ingests a record and shows it on /metrics;
- the `litellm` service's environment names are ones the installed LiteLLM reads;
- gunicorn's master empties the metrics directory at start;
- gunicorn reads chunked ingest bodies (and a server that does not terminate them answers 411).
"""

import json
import os
import re
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from billing_project.scopes import SCOPE_SETTINGS
from receipts.models import ChargeReceipt
from tests.factories import BillingAccountFactory, EndUserAliasFactory, litellm_record, to_body
from tests.gunicorn_server import Service, django_database_url, running_service, service_env
from tests.paths import REPO_ROOT
from tests.processes import RunningProcess, free_port, serving
from tests.tokens import auth_header

pytestmark = pytest.mark.e2e

ROOT = REPO_ROOT
COMPOSE = ROOT / "docker-compose.yml"
LITELLM_PACKAGE = next((ROOT / ".venv-litellm" / "lib").glob("python*/site-packages/litellm"), None)
INGEST = "/api/internal/billing/ingest"
START_DEADLINE_S = 120.0
# What a container starts with besides compose's environment: the image's PATH, and HOME.
_BASE_ENV = ("HOME", "LANG", "TMPDIR")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<: *billing` merge


def _billed_account(end_user: str) -> None:
    EndUserAliasFactory(account=BillingAccountFactory(name=f"{end_user} Inc."), end_user=end_user)


# --- the web service's command ------------------------------------------------------------------


@pytest.fixture
def compose_web(transactional_db: None, tmp_path: Path) -> Iterator[tuple[RunningProcess, Path]]:
    web = _compose()["services"]["web"]
    command = web["command"].strip()
    assert command.count("-b 0.0.0.0:8000") == 1, command
    port = free_port()
    # The one change to the command: a free loopback port instead of the container's 0.0.0.0:8000.
    command = command.replace("-b 0.0.0.0:8000", f"-b 127.0.0.1:{port}")
    metrics_dir = tmp_path / "fresh" / "prometheus"
    assert not metrics_dir.exists()
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    env.update({name: str(value) for name, value in web["environment"].items()})
    assert "PROMETHEUS_MULTIPROC_DIR" in env, "compose's web service no longer sets PROMETHEUS_MULTIPROC_DIR"
    env.update(
        {
            # `python` and `gunicorn` resolve as in the image: on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DATABASE_URL": django_database_url(),
            "DATABASE_DIRECT_URL": django_database_url(),
            # compose takes these from .env
            "SECRET_KEY": os.environ["SECRET_KEY"],
            **{name: os.environ[name] for name in SCOPE_SETTINGS.values()},
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    # Its own session: `sh` and the gunicorn it starts are stopped together.
    web = RunningProcess.start(
        "compose web", ["sh", "-c", command], port=port, log_path=tmp_path / "web.log", env=env, own_group=True
    )
    with serving(web, "/healthz", deadline_s=START_DEADLINE_S) as service:
        yield service, metrics_dir


def test_compose_web_command_ingests_and_serves_metrics(compose_web: tuple[RunningProcess, Path]) -> None:
    service, metrics_dir = compose_web
    _billed_account("compose-alice")
    record = litellm_record(end_user="compose-alice")
    token = os.environ["BILLING_INGEST_TOKEN"]
    with httpx.Client(base_url=service.base_url, timeout=30.0, trust_env=False) as client:
        response = client.post(
            INGEST,
            content=to_body([record]),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["processed"] == 1
        assert client.get("/metrics").status_code == 401
        metrics = client.get("/metrics", headers=auth_header("/metrics"))
    assert metrics.status_code == 200
    assert re.search(r'^billing_receipts_total\{outcome="processed"\} 1\.0$', metrics.text, re.M), metrics.text[:2000]
    assert re.search(r"^billing_ingest_batch_records_count 1\.0$", metrics.text, re.M)
    assert metrics_dir.is_dir() and any(metrics_dir.glob("*.db"))
    assert ChargeReceipt.objects.filter(litellm_call_id=record["litellm_call_id"]).count() == 1


def test_gunicorn_master_empties_the_metrics_dir_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "not-yet" / "prometheus"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    config = runpy.run_path(str(ROOT / "billing_project" / "gunicorn.conf.py"))
    config["on_starting"](None)
    assert directory.is_dir()
    (directory / "counter_4242.db").write_bytes(b"stale")
    (directory / "histogram_4243.db").write_bytes(b"stale")
    (directory / "README").write_text("not ours")
    config["on_starting"](None)
    assert sorted(p.name for p in directory.iterdir()) == ["README"]


# --- compose's LiteLLM variables ------------------------------------------------------------------------


def _litellm_source() -> str:
    if LITELLM_PACKAGE is None:
        pytest.fail("LiteLLM is not installed in .venv-litellm: run bin/bootstrap-litellm (bin/test does).")
    return "\n".join(
        path.read_text(errors="replace") for pattern in ("*.py", "*.json") for path in LITELLM_PACKAGE.rglob(pattern)
    )


def test_compose_scales_out_behind_pgbouncer() -> None:
    """Issue 19's topology: nodes on PgBouncer in transaction pooling, LISTEN direct, migrations once."""
    services = _compose()["services"]
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert services["web"]["deploy"]["replicas"] >= 2
    assert "migrate" not in services["web"]["command"]
    assert services["migrate"]["command"] == "python manage.py migrate --noinput"
    assert "@postgres:" in services["migrate"]["environment"]["DATABASE_URL"]
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert "@pgbouncer:" in env["DATABASE_URL"] and env["DATABASE_TRANSACTION_POOLING"] == "true", name
        assert "@postgres:" in env["DATABASE_DIRECT_URL"], name
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_compose_passes_litellm_the_variables_it_reads() -> None:
    litellm = _compose()["services"]["litellm"]
    names = set(litellm["environment"])
    # LEAST_PRIVILEGE_TOKENS: LiteLLM gets its callback's and its plugin's tokens by name, never .env whole
    # (which holds SECRET_KEY and the admin token).
    assert "env_file" not in litellm
    assert not names & {"SECRET_KEY", "BILLING_ADMIN_API_TOKEN", "BILLING_METRICS_TOKEN"}
    assert litellm["environment"]["BILLING_AUTHORIZE_TOKEN"] == "${BILLING_AUTHORIZE_TOKEN}"
    # Each one LiteLLM is supposed to read (its database, the master key) and the plugin's, each value once:
    # the plugin derives the generic_api logger's endpoint and header from BILLING_SERVICE_URL and the ingest token.
    assert {"DATABASE_URL", "LITELLM_MASTER_KEY", "BILLING_SERVICE_URL", "BILLING_INGEST_TOKEN"} <= names
    assert not names & {"PYTHONPATH", "GENERIC_LOGGER_ENDPOINT", "GENERIC_LOGGER_HEADERS"}
    # The plugin is installed into the image as a package, not mounted onto the path.
    assert litellm["build"]["dockerfile"] == "deploy/litellm/Dockerfile"
    dockerfile = (ROOT / "deploy" / "litellm" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir /tmp/litellm_billing_plugin" in dockerfile
    # LiteLLM's own source, and our plugin that LiteLLM loads (litellm_billing_plugin/).
    source = _litellm_source() + "\n".join(p.read_text() for p in (ROOT / "litellm_billing_plugin").rglob("*.py"))
    unread = sorted(name for name in names if f'"{name}"' not in source and f"'{name}'" not in source)
    assert unread == [], f"LiteLLM {LITELLM_PACKAGE} never reads {unread}"
    # The name compose used to pass: LiteLLM reads it nowhere, so it must not come back.
    assert '"LITELLM_DATABASE_URL"' not in source
    config = (ROOT / "deploy" / "litellm" / "config.yaml").read_text()
    assert "LITELLM_DATABASE_URL" not in COMPOSE.read_text() + config
    # config.yaml's os.environ/ references resolve from compose's environment (or .env for provider keys).
    referenced = set(re.findall(r"os\.environ/(\w+)", config))
    assert referenced - names <= {"OPENAI_API_KEY"}, referenced - names


# --- chunked bodies through real servers ----------------------------------------------------------------


@pytest.fixture
def gunicorn_small_limit(transactional_db: None, tmp_path: Path, ingest_token: str) -> Iterator[Service]:
    with running_service(
        database=django_database_url(),
        log_dir=tmp_path,
        token=ingest_token,
        workers=1,
        BILLING_INGEST_MAX_BODY_BYTES="200000",
    ) as service:
        yield service


def _chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _post_chunked(base_url: str, body: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {os.environ['BILLING_INGEST_TOKEN']}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=30.0, trust_env=False) as client:
        # A generator has no length: httpx sends Transfer-Encoding: chunked and no Content-Length.
        request = client.build_request("POST", INGEST, content=_chunks(body), headers=headers)
        assert request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in request.headers
        return client.send(request)


def test_gunicorn_ingests_a_chunked_body(gunicorn_small_limit: Service) -> None:
    _billed_account("chunked-alice")
    records = [litellm_record(end_user="chunked-alice") for _ in range(3)]
    response = _post_chunked(gunicorn_small_limit.base_url, to_body(records))
    assert response.status_code == 200, response.text
    assert response.json()["processed"] == 3
    assert ChargeReceipt.objects.filter(end_user="chunked-alice").count() == 3


def test_gunicorn_refuses_a_chunked_body_over_the_limit(gunicorn_small_limit: Service) -> None:
    _billed_account("chunked-bob")
    records = [litellm_record(end_user="chunked-bob") for _ in range(200)]
    body = to_body(records)
    assert len(body) > 200_000
    response = _post_chunked(gunicorn_small_limit.base_url, body)
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert not ChargeReceipt.objects.filter(end_user="chunked-bob").exists()


@pytest.fixture
def runserver(transactional_db: None, tmp_path: Path) -> Iterator[RunningProcess]:
    """Django's development server: it passes chunked bodies through without terminating them."""
    port = free_port()
    argv = [sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"]
    env = service_env(django_database_url())
    server = RunningProcess.start("runserver", argv, port=port, log_path=tmp_path / "runserver.log", env=env)
    with serving(server, "/healthz", deadline_s=START_DEADLINE_S):
        yield server


def test_a_server_that_does_not_terminate_chunked_input_answers_411(runserver: RunningProcess) -> None:
    _billed_account("chunked-carol")
    response = _post_chunked(runserver.base_url, to_body([litellm_record(end_user="chunked-carol")]))
    assert response.status_code == 411 and response.json()["field"] == "Content-Length"
    assert not ChargeReceipt.objects.filter(end_user="chunked-carol").exists()


def test_compose_provisions_grafana_with_the_billing_dashboard_on_real_metrics() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana, prometheus = services["grafana"], services["prometheus"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert prometheus["secrets"][0]["target"] == "/etc/prometheus/secrets/billing-token"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/billing.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/billing.json").read_text())
    names = set()
    for metric in REGISTRY.collect():
        names |= {metric.name, f"{metric.name}_total"} | {sample.name for sample in metric.samples}
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            used |= set(re.findall(r"billing_[a-z_]+", target["expr"]))
    assert used <= names, used - names
    assert {"billing_reconcile_discrepancies", "billing_deferred_pending", "billing_webhook_deliveries_total"} <= used
