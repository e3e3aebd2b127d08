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

import logging
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from litellm_billing_plugin.client import Authorized, BillingClient, Refused, Unavailable
from litellm_billing_plugin.deployment_estimate import estimate_request
from litellm_billing_plugin.estimate import usd_text
from litellm_billing_plugin.metrics import Counters, Event
from litellm_billing_plugin.settings import OnUnavailable, PluginSettings

logger = logging.getLogger("litellm_billing_plugin")

END_USER_HEADER = "x-litellm-end-user-id"
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
    """The end user as LiteLLM resolves it: the x-litellm-end-user-id header wins over the body's `user`."""
    metadata = _metadata(data)
    for candidate in (
        metadata.get("user_api_key_end_user_id"),
        getattr(user_api_key_dict, "end_user_id", None),
        {str(k).lower(): v for k, v in (metadata.get("headers") or {}).items()}.get(END_USER_HEADER),
        data.get("user"),
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


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
        self.settings = settings or PluginSettings.from_env()
        self.client = client or BillingClient(self.settings)
        self.counters = Counters()
        self._holds: OrderedDict[str, str] = OrderedDict()

    def authorize_payload(
        self, data: Mapping[str, Any], user_api_key_dict: Any, call_type: str
    ) -> dict[str, str | None]:
        breakdown = estimate_request(
            data, call_type=str(call_type), router=_router(), default_usd=self.settings.default_hold_usd
        )
        if not breakdown.priced:
            self.counters.add(Event.ESTIMATE_FALLBACK)
        return {
            "litellm_call_id": data["litellm_call_id"],
            "key_hash": logged_key_hash(user_api_key_dict),
            "team_id": getattr(user_api_key_dict, "team_id", None),
            "end_user": end_user_of(data, user_api_key_dict),
            "run_id": run_id_of(data),
            "model": str(data.get("model") or ""),
            "estimated_cost_usd": usd_text(breakdown.usd),
        }

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any) -> None:
        if not isinstance(data.get("model"), str) or not data["model"]:
            return  # not a model call (files, batch lookups...): nothing to hold
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            self.counters.add(Event.REJECTED)
            logger.error("billing plugin: request without litellm_call_id; refusing it (call_type=%s)", call_type)
            raise HTTPException(status_code=503, detail={"allowed": False, "reason": "billing_error"})

        outcome = await self.client.authorize(self.authorize_payload(data, user_api_key_dict, call_type))
        if isinstance(outcome, Authorized):
            self.counters.add(Event.ALLOWED)
            self._track(call_id, outcome.hold_id)
            return
        if isinstance(outcome, Refused):
            self.counters.add(Event.REFUSED)
            raise HTTPException(status_code=402, detail=outcome.body)
        if isinstance(outcome, Unavailable):
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

    def _track(self, call_id: str, hold_id: str) -> None:
        self._holds[call_id] = hold_id
        while len(self._holds) > MAX_TRACKED_HOLDS:
            self._holds.popitem(last=False)


billing_plugin = BillingPlugin()
