"""A loopback stand-in of the billing service's authorize API, recording what the plugin sends.

Answers per test through `answer` (a function of the recorded request returning status and JSON
body), by default a 200 hold. `hang_seconds` delays every answer (to exceed the plugin's timeout).
"""

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AUTHORIZE_PATH = "/api/internal/billing/authorize"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


def allow(request: Recorded) -> tuple[int, dict[str, Any]]:
    return 200, {
        "allowed": True,
        "hold_id": str(uuid.uuid4()),
        "held_credits": 1000,
        "available_credits": 1_000_000,
        "expires_at": "2030-01-01T00:00:00Z",
    }


def refuse(request: Recorded) -> tuple[int, dict[str, Any]]:
    return 402, {"allowed": False, "reason": "insufficient_credits", "available_credits": 0, "required_credits": 17}


def new_token() -> str:
    return f"tok-{secrets.token_urlsafe(24)}"


@dataclass
class StubBilling:
    """Serves while started (`start()`, or a `with` block), on a loopback port of its own."""

    token: str = field(default_factory=new_token)
    answer: Callable[[Recorded], tuple[int, dict[str, Any]]] = allow
    hang_seconds: float = 0.0
    # The lifetime of a renewed hold.
    hold_seconds: float = 600.0
    requests: list[Recorded] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset(
        self, answer: Callable[[Recorded], tuple[int, dict[str, Any]]] = allow, hang_seconds: float = 0.0
    ) -> None:
        with self._lock:
            self.requests.clear()
            self.answer = answer
            self.hang_seconds = hang_seconds

    def authorizations(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == AUTHORIZE_PATH]

    def releases(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "DELETE"]

    def renewals(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.endswith("/renew")]

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Recorded(
            method=method,
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=json.loads(raw) if raw else None,
        )
        with self._lock:
            self.requests.append(request)
            answer, hang = self.answer, self.hang_seconds
        if hang:
            time.sleep(hang)  # simulates a stalled service; the plugin's timeout must cut it short
        if request.headers.get("authorization") != f"Bearer {self.token}":
            status, body = 401, {"error": "bad token"}
        elif method == "DELETE" and request.path.startswith(AUTHORIZE_PATH + "/"):
            status, body = 204, {}
        elif method == "POST" and request.path == AUTHORIZE_PATH:
            status, body = answer(request)
        elif method == "POST" and request.path.startswith(AUTHORIZE_PATH + "/") and request.path.endswith("/renew"):
            expires = datetime.now(UTC) + timedelta(seconds=self.hold_seconds)
            status, body = 200, {"hold_id": str(uuid.uuid4()), "expires_at": expires.isoformat()}
        else:
            status, body = 404, {"error": "not found"}
        data = json.dumps(body).encode() if status != 204 else b""
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the plugin gave up waiting

    def start(self) -> "StubBilling":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                stub._handle(self, "POST")

            def do_DELETE(self) -> None:
                stub._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __enter__(self) -> "StubBilling":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
