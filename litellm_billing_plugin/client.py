"""The billing service's authorize API, as the plugin calls it (httpx only)."""

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from litellm_billing_plugin.settings import PluginSettings


@dataclass(frozen=True)
class Authorized:
    """200: a hold was taken (or already existed for this call id)."""

    hold_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """402: the payer cannot pay (or is unknown); `body` is the service's JSON, passed to the client."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Refused4xx:
    """400 naming the call id, or 409 (a call id used before): the request itself is at fault; the client
    gets the same status and the service's message, whatever the fail mode."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Unavailable:
    """No answer: timeout, connection error or a 5xx."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """Any other answer (another 4xx, a 200 that is not our JSON): a bug or a misconfiguration."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


AuthorizeOutcome = Authorized | Refused | Refused4xx | Unavailable | Rejected


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def classify(response: httpx.Response) -> AuthorizeOutcome:
    """What an authorize answer means for the call."""
    status = response.status_code
    if status >= 500:
        return Unavailable(f"HTTP {status}")
    body = _json_object(response)
    if status == 200 and body is not None and body.get("allowed") is True and isinstance(body.get("hold_id"), str):
        return Authorized(hold_id=body["hold_id"], body=body)
    if status == 402 and body is not None and body.get("allowed") is False:
        return Refused(body=body)
    if body is not None and (status == 409 or (status == 400 and body.get("field") == "litellm_call_id")):
        return Refused4xx(status=status, body=body)
    return Rejected(status=status, body=body or {})


class BillingClient:
    """One pooled HTTP client per event loop (the proxy has one), created on first use."""

    def __init__(self, settings: PluginSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {self._settings.token}"},
                timeout=httpx.Timeout(self._settings.timeout_seconds),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                transport=self._transport,
                trust_env=False,  # the billing service is internal: never through an HTTP proxy
            )
        return self._client

    async def authorize(self, payload: Mapping[str, object]) -> AuthorizeOutcome:
        try:
            # httpx's timeout is per phase; this bounds the whole request.
            async with asyncio.timeout(self._settings.timeout_seconds):
                response = await self._http().post(self._settings.authorize_url, json=dict(payload))
        except TimeoutError:
            return Unavailable("timeout")
        except httpx.HTTPError as exc:
            return Unavailable(f"{type(exc).__name__}: {exc}")
        return classify(response)

    async def renew(self, litellm_call_id: str) -> str | None:
        """POST the call's hold renewal; the new `expires_at`, or None when it could not be renewed."""
        url = f"{self._settings.authorize_url}/{quote(litellm_call_id, safe='')}/renew"
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                response = await self._http().post(url)
        except (TimeoutError, httpx.HTTPError):
            return None
        body = _json_object(response) if response.status_code == 200 else None
        expires_at = body.get("expires_at") if body else None
        return expires_at if isinstance(expires_at, str) else None

    async def release(self, litellm_call_id: str) -> bool:
        """DELETE the call's hold. True when released or already gone (404); False when it could not be sent."""
        url = f"{self._settings.authorize_url}/{quote(litellm_call_id, safe='')}"
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                response = await self._http().delete(url)
        except (TimeoutError, httpx.HTTPError):
            return False
        return response.status_code in (200, 204, 404)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def startup_problem(settings: PluginSettings, *, transport: httpx.BaseTransport | None = None) -> str | None:
    """Whether the service answers and accepts the plugin's token (GET …/authorize), as one sentence naming
    the setting at fault; None when all is well. Run once at proxy start."""
    try:
        with httpx.Client(timeout=max(settings.timeout_seconds, 2.0), transport=transport, trust_env=False) as http:
            response = http.get(settings.authorize_url, headers={"Authorization": f"Bearer {settings.token}"})
    except httpx.HTTPError as exc:
        return (
            f"{settings.url_setting}={settings.billing_url} does not answer ({type(exc).__name__}: {exc}); "
            f"every call follows BILLING_PLUGIN_ON_UNAVAILABLE={settings.on_unavailable.value} until it does"
        )
    if response.status_code in (401, 403):
        return (
            f"the billing service at {settings.billing_url} refuses {settings.token_setting} (HTTP "
            f"{response.status_code}): set it to the service's BILLING_AUTHORIZE_TOKEN; until then every call "
            "is refused with 503 billing_error"
        )
    body = _json_object(response)
    if response.status_code != 200 or body is None or body.get("scope") != "authorize":
        return (
            f"{settings.url_setting}={settings.billing_url} is not the billing service "
            f"(GET {settings.authorize_url} answered HTTP {response.status_code})"
        )
    return None
