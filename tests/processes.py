"""Child processes for tests and benches: a free port, a start with a log file, a readiness poll, a stop.

tests/gunicorn_server.py (our service), tests/litellm_proxy.py (LiteLLM and the stub provider) and the
tests that start a server of their own (the compose command, runserver) all go through these, so every
process is started, awaited and stopped the same way. Every wait polls a condition with a deadline.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 200
POLL_INTERVAL_S = 0.1
STOP_GRACE_S = 15.0

T = TypeVar("T")
P = TypeVar("P", bound="RunningProcess")


class ProcessStartError(RuntimeError):
    pass


def free_port() -> int:
    """A loopback TCP port that nothing listens on (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningProcess:
    """A loopback HTTP server in a child process, its output in `log_path`.

    `own_group`: it runs in a process group of its own (gunicorn and its workers, `sh -c` and its child),
    which is stopped as a whole, so a worker orphaned by a kill is reaped with it.
    """

    name: str
    proc: subprocess.Popen
    log_path: Path
    base_url: str
    own_group: bool = False

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        *,
        port: int,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path = ROOT,
        own_group: bool = False,
        **fields: object,
    ) -> Self:
        """Start `argv` with stdout and stderr into `log_path`; it is to listen on 127.0.0.1:`port`."""
        with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                argv, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=own_group
            )
        return cls(
            name=name, proc=proc, log_path=log_path, base_url=f"http://127.0.0.1:{port}", own_group=own_group, **fields
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def print_log_tail(self) -> None:
        # pytest shows captured output (teardown's too) only when a test failed.
        print(f"\n===== {self.name} log (last {LOG_TAIL_LINES} lines) =====\n{self.log_tail()}")

    def _signal(self, signum: signal.Signals) -> None:
        try:
            if self.own_group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL what is left after `grace_s` (a worker stuck in C code, in its group too)."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if self.own_group or self.proc.poll() is None:
            self._signal(signal.SIGKILL)  # in a group: whatever outlived its leader
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


def wait_until(
    condition: Callable[[], T],
    what: str,
    *,
    deadline_s: float,
    detail: Callable[[], str] = lambda: "",
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Re-check `condition` every `interval_s` until it is truthy, and return its value; past the deadline,
    fail with `what` and `detail()` (what was seen)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}\n{detail()}")
        time.sleep(interval_s)  # the pause between polls of a condition, not what makes a test pass


def wait_ready(
    process: RunningProcess,
    path: str,
    *,
    deadline_s: float,
    ready: Callable[[httpx.Response], bool] = lambda response: response.is_success,
) -> None:
    """Poll GET `path` until `ready(response)`, the process dies, or the deadline passes."""
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


@contextmanager
def serving(
    process: P,
    ready_path: str | None = None,
    *,
    deadline_s: float = 60.0,
    ready: Callable[[httpx.Response], bool] = lambda response: response.is_success,
) -> Iterator[P]:
    """Wait until `ready_path` answers (when given), yield the process; then stop it and print its log tail."""
    try:
        if ready_path is not None:
            wait_ready(process, ready_path, deadline_s=deadline_s, ready=ready)
        yield process
    finally:
        process.stop()
        process.print_log_tail()
