"""The LiteLLM callback: hold the worst-case cost before the call, release it if the call fails.

Loaded by LiteLLM from `litellm_settings: callbacks: ["litellm_billing_plugin.hook.billing_plugin"]`
(the package's parent folder on PYTHONPATH). Flow per proxied model call:

1. `async_pre_call_hook` (after auth, with `data["litellm_call_id"]` already set): estimate the maximum
   cost, POST /api/internal/billing/authorize. 200 → the call proceeds; 402 → the client gets HTTP 402
   with the service's JSON and the provider is never called.
2. `async_post_call_failure_hook` (the proxy calls it once when the request fails, after the router's
   retries, whether or not a provider was reached): DELETE the hold so the balance is free again.
3. On success nothing is sent: the generic_api callback delivers the usage record and the service
   settles the hold with the receipt.
"""

import asyncio
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from litellm_billing_plugin.client import (
    Authorized,
    BillingClient,
    Refused,
    Refused4xx,
    Unavailable,
    startup_problem,
)
from litellm_billing_plugin.deployment_estimate import estimate_request
from litellm_billing_plugin.end_user import END_USER_HEADER, resolve_end_user
from litellm_billing_plugin.estimate import usd_text
from litellm_billing_plugin.metrics import Counters, Event
from litellm_billing_plugin.settings import OnUnavailable, PluginSettings

logger = logging.getLogger("litellm_billing_plugin")

CALL_ID_HEADER = "x-litellm-call-id"
# A stream renews its hold when this share of the hold's lifetime has passed (a third: two renewals can
# fail before the hold lapses).
RENEW_AFTER_SHARE = 1 / 3
# Holds taken and not yet finished, per call id; bounded because a call can end without either hook
# (a client disconnect): such a hold is released by the service's TTL sweep.
MAX_TRACKED_HOLDS = 100_000


def logged_key_hash(user_api_key_dict: Any) -> str | None:
    """What LiteLLM logs as metadata.user_api_key_hash (LiteLLMProxyRequestSetup.get_logged_api_key)."""
    if getattr(user_api_key_dict, "is_session_token", False) and getattr(user_api_key_dict, "key_alias", None):
        return user_api_key_dict.key_alias
    return getattr(user_api_key_dict, "api_key", None)


def _metadata(data: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("metadata", "litellm_metadata"):  # /v1/messages and others use litellm_metadata
        value = data.get(key)
        if isinstance(value, Mapping) and value:
            return value
    return {}


def end_user_of(data: Mapping[str, Any], user_api_key_dict: Any) -> str | None:
    """The end user as the billing service will read it from the call's record (end_user.resolve_end_user)."""
    metadata = _metadata(data)
    return resolve_end_user(
        logged=metadata.get("user_api_key_end_user_id"),
        key_end_user=getattr(user_api_key_dict, "end_user_id", None),
        header={str(k).lower(): v for k, v in (metadata.get("headers") or {}).items()}.get(END_USER_HEADER),
        body_user=data.get("user"),
    )


def client_chose_call_id(data: Mapping[str, Any]) -> bool:
    """Whether the request carried its own x-litellm-call-id (LiteLLM 1.108.7 then uses it as the call id)."""
    request = data.get("proxy_server_request")
    for headers in (
        request.get("headers") if isinstance(request, Mapping) else None,
        _metadata(data).get("headers"),
    ):
        if isinstance(headers, Mapping) and any(str(name).lower() == CALL_ID_HEADER for name in headers):
            return True
    return False


def run_id_of(data: Mapping[str, Any]) -> str | None:
    spend_logs_metadata = _metadata(data).get("spend_logs_metadata")
    if isinstance(spend_logs_metadata, Mapping) and spend_logs_metadata.get("run_id") not in (None, ""):
        return str(spend_logs_metadata["run_id"])
    return None


def _router() -> object | None:
    """The proxy's router, if the proxy is running (read from sys.modules: importing it here would be circular)."""
    return getattr(sys.modules.get("litellm.proxy.proxy_server"), "llm_router", None)


class BillingPlugin(CustomLogger):
    def __init__(self, settings: PluginSettings | None = None, client: BillingClient | None = None) -> None:
        super().__init__()
        from_environment = settings is None
        self.settings = settings or PluginSettings.from_env()
        if from_environment:
            # Point LiteLLM's generic_api callback at the same service (it reads these when it is built,
            # after the config's callbacks are loaded), so the operator writes the URL once.
            os.environ.update(self.settings.callback_environment(os.environ))
            threading.Thread(target=self._check_service, name="billing-plugin-check", daemon=True).start()
        self.client = client or BillingClient(self.settings)
        self.counters = Counters()
        self._holds: OrderedDict[str, str] = OrderedDict()
        # Seconds between renewals of each held call's hold (a third of the lifetime the service gave it).
        self._renew_every: dict[str, float] = {}
        self._background: set[asyncio.Task] = set()

    def _check_service(self) -> None:
        problem = startup_problem(self.settings)
        if problem:
            logger.error("billing plugin: %s", problem)
        else:
            logger.info("billing plugin: the billing service at %s accepts its token", self.settings.billing_url)

    def authorize_payload(self, data: Mapping[str, Any], user_api_key_dict: Any, call_type: str) -> dict[str, Any]:
        breakdown = estimate_request(
            data, call_type=str(call_type), router=_router(), default_usd=self.settings.default_hold_usd
        )
        if not breakdown.priced:
            self.counters.add(Event.ESTIMATE_FALLBACK)
        sizing: dict[str, str | int] = {}
        if not breakdown.output_capped and breakdown.prices is not None and breakdown.output_tokens:
            # No max_tokens: the worst case holds the model's whole output limit. The service may hold for
            # the output this key has really used instead (never above this worst case).
            sizing = {
                "max_output_tokens": breakdown.output_tokens,
                "output_cost_per_token_usd": usd_text(breakdown.prices.output_per_token),
            }
        return {
            "litellm_call_id": data["litellm_call_id"],
            "key_hash": logged_key_hash(user_api_key_dict),
            "team_id": getattr(user_api_key_dict, "team_id", None),
            "end_user": end_user_of(data, user_api_key_dict),
            "run_id": run_id_of(data),
            "model": str(data.get("model") or ""),
            "estimated_cost_usd": usd_text(breakdown.usd),
            "priced": breakdown.priced,
            # The service holds nothing once we have stopped waiting (a little before our own timeout).
            "deadline_ms": max(1, int(self.settings.timeout_seconds * 900)),
            **sizing,
        }

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> None:
        if not isinstance(data.get("model"), str) or not data["model"]:
            return  # not a model call (files, batch lookups...): nothing to hold
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            self.counters.add(Event.REJECTED)
            logger.error("billing plugin: request without litellm_call_id; refusing it (call_type=%s)", call_type)
            raise HTTPException(status_code=503, detail={"allowed": False, "reason": "billing_error"})
        if client_chose_call_id(data):
            # LiteLLM takes the client's x-litellm-call-id as the call id, and a call id is what a hold and a
            # charge are keyed by: a chosen one could replay another call's hold. Refused before the model.
            self.counters.add(Event.REFUSED)
            raise HTTPException(
                status_code=400,
                detail={
                    "allowed": False,
                    "reason": "client_call_id",
                    "message": f"Do not send {CALL_ID_HEADER}: the proxy chooses each call's id "
                    "(it returns it in the response's x-litellm-call-id header).",
                },
            )

        outcome = await self.client.authorize(self.authorize_payload(data, user_api_key_dict, call_type))
        if isinstance(outcome, Authorized):
            self.counters.add(Event.ALLOWED)
            self._track(call_id, outcome.hold_id, outcome.body.get("expires_at"))
            return
        if isinstance(outcome, Refused):
            self.counters.add(Event.REFUSED)
            raise HTTPException(status_code=402, detail=outcome.body)
        if isinstance(outcome, Refused4xx):
            self.counters.add(Event.REFUSED)
            raise HTTPException(
                status_code=outcome.status,
                detail={"allowed": False, "reason": "invalid_call", "message": str(outcome.body.get("error", ""))},
            )
        if isinstance(outcome, Unavailable):
            # An answer we did not wait for may still have taken a hold: free it now, not at its TTL.
            self._in_background(self._release_quietly(call_id))
            if self.settings.on_unavailable is OnUnavailable.FAIL_OPEN:
                total = self.counters.add(Event.UNAVAILABLE_ALLOWED)
                logger.warning(
                    "billing plugin: billing service unavailable (%s); call %s allowed without a hold "
                    "(fail_open, unavailable_allowed_total=%d)",
                    outcome.reason,
                    call_id,
                    total,
                )
                return
            total = self.counters.add(Event.UNAVAILABLE_REFUSED)
            logger.warning(
                "billing plugin: billing service unavailable (%s); call %s refused (fail_closed, "
                "unavailable_refused_total=%d)",
                outcome.reason,
                call_id,
                total,
            )
            raise HTTPException(status_code=503, detail={"allowed": False, "reason": "billing_unavailable"})
        # Rejected: another 4xx is our bug or a misconfiguration (a wrong token): refuse whatever the fail mode,
        # since fail_open is for outages, not for silently switching enforcement off.
        total = self.counters.add(Event.REJECTED)
        logger.error(
            "billing plugin: authorize answered HTTP %s %s; call %s refused (rejected_total=%d)",
            outcome.status,
            outcome.body,
            call_id,
            total,
        )
        raise HTTPException(status_code=503, detail={"allowed": False, "reason": "billing_error"})

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        call_id = request_data.get("litellm_call_id")
        # Only holds this process took: a call refused by our own hook (402/503) has none.
        hold_id = self._holds.pop(call_id, None) if isinstance(call_id, str) else None
        if hold_id is None:
            return
        self._renew_every.pop(call_id, None)
        if await self.client.release(call_id):
            self.counters.add(Event.RELEASED)
        else:
            total = self.counters.add(Event.RELEASE_FAILED)
            logger.warning(
                "billing plugin: could not release hold %s of failed call %s; it expires by TTL "
                "(release_failed_total=%d)",
                hold_id,
                call_id,
                total,
            )

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        # The service settles the hold from the usage record; forget it here.
        call_id = kwargs.get("litellm_call_id")
        if isinstance(call_id, str):
            self._holds.pop(call_id, None)
            self._renew_every.pop(call_id, None)

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        """Pass the stream through, renewing the call's hold while it runs: a stream longer than the hold's
        lifetime keeps its reservation (HOLDS_NEVER_OVERSPEND) until its record settles it."""
        call_id = request_data.get("litellm_call_id")
        every = self._renew_every.get(call_id) if isinstance(call_id, str) else None
        loop = asyncio.get_running_loop()
        due = loop.time() + every if every else None
        async for item in response:
            if due is not None and loop.time() >= due:
                due = loop.time() + every  # type: ignore[operator]
                self._in_background(self._renew(call_id))  # type: ignore[arg-type]
            yield item

    async def _renew(self, call_id: str) -> None:
        if await self.client.renew(call_id) is not None:
            self.counters.add(Event.RENEWED)
        else:
            total = self.counters.add(Event.RENEW_FAILED)
            logger.warning(
                "billing plugin: could not renew the hold of streaming call %s (renew_failed_total=%d)", call_id, total
            )

    async def _release_quietly(self, call_id: str) -> None:
        if await self.client.release(call_id):
            self.counters.add(Event.RELEASED)

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _track(self, call_id: str, hold_id: str, expires_at: object = None) -> None:
        self._holds[call_id] = hold_id
        lifetime = _seconds_until(expires_at)
        if lifetime:
            self._renew_every[call_id] = lifetime * RENEW_AFTER_SHARE
        while len(self._holds) > MAX_TRACKED_HOLDS:
            gone, _ = self._holds.popitem(last=False)
            self._renew_every.pop(gone, None)


def _seconds_until(expires_at: object) -> float | None:
    """Seconds from now to an ISO timestamp the service sent, or None."""
    if not isinstance(expires_at, str):
        return None
    try:
        moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = (moment - datetime.now(UTC)).total_seconds()
    return seconds if seconds > 0 else None


billing_plugin = BillingPlugin()
