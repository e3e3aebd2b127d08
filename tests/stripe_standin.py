"""A loopback stand-in of the part of Stripe's API the service calls, answering Stripe's documented JSON.

- `POST /v1/checkout/sessions` (form-encoded, as the stripe library sends it): a Checkout Session object
  (`id` cs_test_…, `object`, `url`, `mode`, `amount_total`, `currency`, `client_reference_id`, `metadata`,
  `payment_intent`, `payment_status` "unpaid", `status` "open"), remembered for the tests.
- `GET /v1/checkout/sessions?payment_intent=pi_…`: a list object (`object` "list", `data`, `has_more`).
- `GET /v1/payment_intents/pi_…`: the PaymentIntent (`customer`, `payment_method`: a Checkout with
  `customer_creation=always` saved card `pm_card_visa`, or `declining_card` when set).
- `POST /v1/payment_intents` (`confirm`, `off_session`): `status` "succeeded", or Stripe's 402 `card_error`
  (`card_declined`) for the card `pm_card_chargeDeclined`.
- Bearer auth with the configured secret key, else Stripe's 401 error object.

Events are built by `session_event()` / `charge_event()` / `dispute_event()` in Stripe's event shape and
signed with the stripe library's own `WebhookSignature.generate_signature_header` by `signed()`.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import stripe

SECRET_KEY = "sk_test_standin_" + "x" * 24
WEBHOOK_SECRET = "whsec_standin_" + "y" * 24


def _nested(form: dict[str, list[str]]) -> dict[str, Any]:
    """Stripe's form encoding (`line_items[0][price_data][unit_amount]=500`) back into nested values."""
    out: dict[str, Any] = {}
    for key, values in form.items():
        parts = key.replace("]", "").split("[")
        node: Any = out
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                node[part] = values[-1]
            else:
                node = node.setdefault(part, {})
    return out


@dataclass
class StripeStandIn:
    host: str = "127.0.0.1"
    port: int = 0
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The card a Checkout saves (pm_card_chargeDeclined: every later off-session charge is declined).
    saved_card: str = "pm_card_visa"
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    fail_next: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)).decode()
        params = _nested(parse_qs(body if method == "POST" else url.query))
        self.requests.append((method, url.path, params))
        if handler.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return self._send(handler, 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
        if self.fail_next:
            self.fail_next -= 1
            return self._send(handler, 500, {"error": {"type": "api_error", "message": "stand-in failure"}})
        if method == "POST" and url.path == "/v1/checkout/sessions":
            return self._send(handler, 200, self._create(params))
        if method == "GET" and url.path.startswith("/v1/payment_intents/"):
            intent = self.intents.get(url.path.rsplit("/", 1)[-1])
            if intent is None:
                return self._send(
                    handler, 404, {"error": {"type": "invalid_request_error", "message": "no such intent"}}
                )
            return self._send(handler, 200, intent)
        if method == "POST" and url.path == "/v1/payment_intents":
            if params.get("payment_method") == "pm_card_chargeDeclined":
                error = {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}
                return self._send(handler, 402, {"error": error})
            intent = {
                "id": f"pi_{secrets.token_hex(12)}",
                "object": "payment_intent",
                "amount": int(params["amount"]),
                "currency": params["currency"],
                "customer": params.get("customer"),
                "payment_method": params.get("payment_method"),
                "status": "succeeded",
                "metadata": params.get("metadata", {}),
            }
            self.intents[intent["id"]] = intent
            return self._send(handler, 200, intent)
        if method == "GET" and url.path == "/v1/checkout/sessions":
            intent = params.get("payment_intent")
            found = [s for s in self.sessions.values() if intent and s["payment_intent"] == intent]
            return self._send(handler, 200, {"object": "list", "data": found, "has_more": False, "url": url.path})
        return self._send(handler, 404, {"error": {"type": "invalid_request_error", "message": "unknown path"}})

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        item = params["line_items"]["0"]
        session_id = f"cs_test_{secrets.token_hex(12)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params["mode"],
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "amount_total": int(item["price_data"]["unit_amount"]) * int(item["quantity"]),
            "currency": item["price_data"]["currency"],
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "payment_intent": f"pi_{secrets.token_hex(12)}",
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
        }
        saving = params.get("customer_creation") == "always"
        session["customer"] = f"cus_{secrets.token_hex(8)}" if saving else None
        self.intents[session["payment_intent"]] = {
            "id": session["payment_intent"],
            "object": "payment_intent",
            "amount": session["amount_total"],
            "currency": session["currency"],
            "customer": session["customer"],
            "payment_method": self.saved_card if saving else None,
            "setup_future_usage": params.get("payment_intent_data", {}).get("setup_future_usage"),
            "status": "requires_payment_method",
        }
        self.sessions[session_id] = session
        return session

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> "StripeStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                standin._answer(self, "POST")

            def do_GET(self) -> None:
                standin._answer(self, "GET")

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def event(kind: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """A Stripe event object around `obj`."""
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "type": kind,
        "livemode": False,
        "data": {"object": obj},
    }


def session_event(kind: str, session: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """checkout.session.* for a session the stand-in created (paid unless told otherwise)."""
    obj = {**session, "status": "complete", "payment_status": "paid", **changes}
    return event(kind, obj)


def charge_event(session: dict[str, Any], *, amount_refunded: int) -> dict[str, Any]:
    """charge.refunded for the session's PaymentIntent; `amount_refunded` is cumulative, as Stripe sends it."""
    charge = {
        "id": f"ch_{session['payment_intent'][3:]}",
        "object": "charge",
        "amount": session["amount_total"],
        "amount_refunded": amount_refunded,
        "currency": session["currency"],
        "payment_intent": session["payment_intent"],
        "refunded": amount_refunded >= session["amount_total"],
    }
    return event("charge.refunded", charge)


def dispute_event(kind: str, session: dict[str, Any], *, dispute_id: str, amount: int, status: str) -> dict[str, Any]:
    dispute = {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": session["currency"],
        "payment_intent": session["payment_intent"],
        "status": status,
    }
    return event(kind, dispute)


def signed(payload: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[str, str]:
    """(body, Stripe-Signature header), signed by the stripe library's own signing."""
    body = json.dumps(payload)
    return body, stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
