"""Start the real LiteLLM proxy (and a stub provider) for a test, and stop it after.

Reusable by any e2e test:

    config = proxy_config(mocked_model(), generic_api=["success"])
    with running_litellm_proxy(config, workdir=tmp_path, env=generic_api_env(url, token)) as proxy:
        httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=proxy.auth_headers, ...)

The proxy runs offline (LITELLM_LOCAL_MODEL_COST_MAP=True), inherits only a small allowlist of our
environment (never DATABASE_URL, which LiteLLM would try to use, nor HTTP proxy settings), runs in
`workdir` (whatever it writes stays out of the repository). The billing plugin is the package
bin/bootstrap-litellm installed into .venv-litellm (`pip install ./litellm_billing_plugin`), as
operators install it: the repository is not on the proxy's path. With `teams`, keys are
authenticated by a custom_auth module (CUSTOM_AUTH) instead of the master key.
"""

import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.processes import ROOT, ProcessStartError, RunningProcess, free_port, serving

LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"
LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"
# What a config lists under litellm_settings.callbacks to load the billing plugin.
PLUGIN_CALLBACK = "litellm_billing_plugin.hook.billing_plugin"
PROXY_START_DEADLINE_S = 120.0
ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR")
MOCK_RESPONSE = "Hello from a mocked model."

# Written next to the config (where LiteLLM's get_instance_fn looks for `custom_auth.<fn>`) when the proxy is
# started with `teams`: it accepts exactly those keys, each with its team, so several keys (and teams) work
# without LiteLLM's database, and the callback carries each key's sha256 as `user_api_key_hash`.
CUSTOM_AUTH = """
import json
import os

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

TEAMS = json.loads(os.environ["TEST_KEY_TEAMS"])


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    if api_key not in TEAMS:
        raise Exception("unknown key")
    return UserAPIKeyAuth(api_key=api_key, team_id=TEAMS[api_key])
"""


def key_hash(key: str) -> str:
    """What LiteLLM logs as `user_api_key_hash` for a custom_auth sk- key (SPEC section 3)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class LiteLLMProxy(RunningProcess):
    master_key: str = ""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a LiteLLM process: the allowlist, offline settings, then `extra`."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def mocked_model(name: str = "gpt-4o-mini") -> dict[str, Any]:
    """A model_list entry answered by LiteLLM itself (`mock_response`): no provider is called."""
    params = {"model": "openai/gpt-4o-mini", "api_key": "sk-fake", "mock_response": MOCK_RESPONSE}
    return {"model_name": name, "litellm_params": params}


def provider_model(name: str, api_base: str) -> dict[str, Any]:
    """A model_list entry that calls the OpenAI-compatible provider at `api_base`, never retried."""
    params = {"model": "openai/gpt-4o-mini", "api_key": "sk-fake", "num_retries": 0, "api_base": api_base}
    return {"model_name": name, "litellm_params": params}


def proxy_config(*models: dict[str, Any], plugin: bool = False, generic_api: Iterable[str] = ()) -> dict[str, Any]:
    """A proxy config serving `models`, nothing retried; `plugin` loads the billing plugin, `generic_api`
    names the events ("success", "failure") LiteLLM's generic_api logger delivers (see generic_api_env)."""
    settings: dict[str, Any] = {"callbacks": [PLUGIN_CALLBACK]} if plugin else {}
    settings |= {f"{event}_callback": ["generic_api"] for event in generic_api}
    return {
        "model_list": list(models),
        "litellm_settings": {**settings, "num_retries": 0},
        "router_settings": {"num_retries": 0},
    }


def generic_api_env(service_url: str, token: str) -> dict[str, str]:
    """The proxy environment that points LiteLLM's generic_api logger at the service's ingest endpoint."""
    return {
        "GENERIC_LOGGER_ENDPOINT": f"{service_url}/api/internal/billing/ingest",
        "GENERIC_LOGGER_HEADERS": f"Authorization=Bearer {token}",
        "DEFAULT_FLUSH_INTERVAL_SECONDS": "1",
    }


def plugin_env(billing_url: str, token: str, *, on_unavailable: str, timeout_s: float) -> dict[str, str]:
    """The proxy environment of the billing plugin (litellm_billing_plugin.settings)."""
    return {
        "BILLING_SERVICE_URL": billing_url,
        "BILLING_AUTHORIZE_TOKEN": token,
        "BILLING_PLUGIN_TIMEOUT_SECONDS": str(timeout_s),
        "BILLING_PLUGIN_ON_UNAVAILABLE": on_unavailable,
    }


@contextmanager
def running_litellm_proxy(
    config: Mapping[str, Any],
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    teams: Mapping[str, str] | None = None,
    deadline_s: float = PROXY_START_DEADLINE_S,
) -> Iterator[LiteLLMProxy]:
    """The real proxy serving `config` (a dict; a master key is added if it has none).

    `teams` (key -> team id): keys are authenticated by CUSTOM_AUTH instead of the master key.
    """
    if not LITELLM_BIN.exists():
        raise ProcessStartError(
            f"The LiteLLM proxy is not installed ({LITELLM_BIN} is missing). "
            "Run bin/bootstrap-litellm to install the pinned litellm[proxy] into .venv-litellm."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config))  # a deep copy we may add to
    general = config.setdefault("general_settings", {})
    master_key = general.setdefault("master_key", f"sk-test-{secrets.token_urlsafe(24)}")
    env = dict(env or {})
    if teams is not None:
        general["custom_auth"] = "custom_auth.user_api_key_auth"
        (workdir / "custom_auth.py").write_text(CUSTOM_AUTH)
        env["TEST_KEY_TEAMS"] = json.dumps(dict(teams))
    config_path = workdir / "litellm-config.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    argv = [str(LITELLM_BIN), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    # Run from `workdir`: whatever LiteLLM writes to its working directory stays out of the repository.
    proxy = LiteLLMProxy.start(
        "litellm",
        argv,
        port=port,
        log_path=workdir / "litellm.log",
        env=base_env(env),
        cwd=workdir,
        master_key=master_key,
    )
    with serving(proxy, "/health/liveliness", deadline_s=deadline_s):
        yield proxy


@dataclass
class StubProvider(RunningProcess):
    """tests/stub_openai_server.py: `api_base` for working deployments, `failing_api_base` for a 500,
    `slow_api_base` for a long stream."""

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def failing_api_base(self) -> str:
        return f"{self.base_url}/fail/v1"

    @property
    def slow_api_base(self) -> str:
        """Streams its answer over a few seconds (SLOW_CHUNKS × SLOW_CHUNK_SECONDS in the stub)."""
        return f"{self.base_url}/slow/v1"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.base_url}/_stats", timeout=5.0, trust_env=False).json()

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_reset", json={}, timeout=5.0, trust_env=False).raise_for_status()


@contextmanager
def running_stub_provider(*, workdir: Path) -> Iterator[StubProvider]:
    """The stub provider; it picks its own port and prints it on its first stdout line."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "stub-provider.log"
    argv = [str(LITELLM_PYTHON), str(ROOT / "tests" / "stub_openai_server.py")]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=base_env(), stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port_line = proc.stdout.readline().strip() if proc.stdout is not None else ""
        stub = StubProvider(
            name="stub-provider", proc=proc, log_path=log_path, base_url=f"http://127.0.0.1:{port_line}"
        )
        if not port_line.isdigit():
            stub.stop()
            raise ProcessStartError(f"the stub provider did not start: {stub.log_text()}")
        with serving(stub, "/_stats", deadline_s=30.0):
            yield stub
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
