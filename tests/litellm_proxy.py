"""Start the real LiteLLM proxy (and a stub provider) for a test, and stop it after.

Reusable by any e2e test:

    with running_litellm_proxy(config_dict, workdir=tmp_path, env={"BILLING_URL": ...}) as proxy:
        httpx.post(f"{proxy.base_url}/v1/chat/completions", headers=proxy.auth_headers, ...)

The proxy runs offline (LITELLM_LOCAL_MODEL_COST_MAP=True), inherits only a small allowlist of our
environment (never DATABASE_URL, which LiteLLM would try to use, nor HTTP proxy settings), runs in
`workdir` (whatever it writes stays out of the repository) and has the repository root on
PYTHONPATH, so `litellm_billing_plugin` is importable from the config. Files in `files` (e.g. a
custom_auth module) are written next to the config, where LiteLLM's get_instance_fn looks first.
"""

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LITELLM_BIN = ROOT / ".venv-litellm" / "bin" / "litellm"
LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"
# What a config lists under litellm_settings.callbacks to load the billing plugin.
PLUGIN_CALLBACK = "litellm_billing_plugin.hook.billing_plugin"
PROXY_START_DEADLINE_S = 120.0
LOG_TAIL_LINES = 200
ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR")


class ProcessStartError(RuntimeError):
    pass


@dataclass
class RunningProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path
    base_url: str

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class LiteLLMProxy(RunningProcess):
    master_key: str = ""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a LiteLLM process: the allowlist, offline settings, then `extra`."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra or {})
    return env


def wait_ready(process: RunningProcess, path: str, *, deadline_s: float) -> None:
    """Poll `path` until it answers 2xx, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last_error = "no answer yet"
    with httpx.Client(base_url=process.base_url, timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(path)
                if response.is_success:
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            try:
                code = process.proc.wait(timeout=0.25)  # the pause between polls checks that it is alive
            except subprocess.TimeoutExpired:
                continue
            raise ProcessStartError(
                f"{process.name} exited with status {code} before it was ready.\n{process.log_tail()}"
            )
    raise ProcessStartError(
        f"{process.name} was not ready at {process.base_url}{path} within {deadline_s:.0f}s "
        f"(last: {last_error}).\n{process.log_tail()}"
    )


def stop(process: RunningProcess) -> None:
    if process.proc.poll() is None:
        process.proc.terminate()
        try:
            process.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait(timeout=15)
    # pytest shows captured teardown output only when a test failed.
    print(f"\n===== {process.name} log (last {LOG_TAIL_LINES} lines) =====\n{process.log_tail()}")


@contextmanager
def running_litellm_proxy(
    config: Mapping[str, Any],
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    deadline_s: float = PROXY_START_DEADLINE_S,
) -> Iterator[LiteLLMProxy]:
    """The real proxy serving `config` (a dict; a master key is added if it has none)."""
    if not LITELLM_BIN.exists():
        raise ProcessStartError(
            f"The LiteLLM proxy is not installed ({LITELLM_BIN} is missing). "
            "Run bin/bootstrap-litellm to install the pinned litellm[proxy] into .venv-litellm."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config))  # a deep copy we may add to
    general = config.setdefault("general_settings", {})
    master_key = general.setdefault("master_key", f"sk-test-{secrets.token_urlsafe(24)}")
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    config_path = workdir / "litellm-config.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    log_path = workdir / "litellm.log"
    argv = [str(LITELLM_BIN), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=base_env(env), stdout=log, stderr=subprocess.STDOUT)
    proxy = LiteLLMProxy(
        name="litellm", proc=proc, log_path=log_path, base_url=f"http://127.0.0.1:{port}", master_key=master_key
    )
    try:
        wait_ready(proxy, "/health/liveliness", deadline_s=deadline_s)
        yield proxy
    finally:
        stop(proxy)


@dataclass
class StubProvider(RunningProcess):
    """tests/stub_openai_server.py: `api_base` for working deployments, `failing_api_base` for a 500."""

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def failing_api_base(self) -> str:
        return f"{self.base_url}/fail/v1"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.base_url}/_stats", timeout=5.0, trust_env=False).json()

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_reset", json={}, timeout=5.0, trust_env=False).raise_for_status()


@contextmanager
def running_stub_provider(*, workdir: Path) -> Iterator[StubProvider]:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "stub-provider.log"
    argv = [str(LITELLM_PYTHON), str(ROOT / "tests" / "stub_openai_server.py")]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=base_env(), stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port_line = proc.stdout.readline().strip() if proc.stdout is not None else ""
        if not port_line.isdigit():
            proc.kill()
            proc.wait(timeout=15)
            raise ProcessStartError(f"the stub provider did not start: {log_path.read_text(errors='replace')}")
        stub = StubProvider(
            name="stub-provider", proc=proc, log_path=log_path, base_url=f"http://127.0.0.1:{port_line}"
        )
        wait_ready(stub, "/_stats", deadline_s=30.0)
        yield stub
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
