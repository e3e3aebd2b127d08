"""The plugin's settings, read from the LiteLLM container's environment."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum


class OnUnavailable(StrEnum):
    FAIL_CLOSED = "fail_closed"  # refuse the call with 503: no hold, no call
    FAIL_OPEN = "fail_open"  # let the call through without a hold, and count it


class SettingsError(ValueError):
    """A setting is missing or malformed: the proxy must not start with it."""


@dataclass(frozen=True, kw_only=True)
class PluginSettings:
    billing_url: str  # BILLING_SERVICE_URL: the service's base URL, e.g. http://web:8000
    token: str  # BILLING_AUTHORIZE_TOKEN: the service's token for authorize/release/renew, nothing else
    # BILLING_INGEST_TOKEN, when set: the plugin points LiteLLM's generic_api callback at the same service
    # (GENERIC_LOGGER_ENDPOINT / GENERIC_LOGGER_HEADERS, unless those are set), so no value is written twice.
    ingest_token: str = ""
    # Which variable gave the URL and the token (named in the startup check's error).
    url_setting: str = "BILLING_SERVICE_URL"
    token_setting: str = "BILLING_AUTHORIZE_TOKEN"  # noqa: S105 - a setting's name, not a secret
    timeout_seconds: float  # whole authorize/release request, connect included
    on_unavailable: OnUnavailable
    default_hold_usd: Decimal  # the estimate when LiteLLM knows no price for the model

    @property
    def authorize_url(self) -> str:
        return f"{self.billing_url}/api/internal/billing/authorize"

    @property
    def ingest_url(self) -> str:
        return f"{self.billing_url}/api/internal/billing/ingest"

    def callback_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The generic_api callback's variables derived from ours, for those the operator did not set."""
        if not self.ingest_token:
            return {}
        derived = {
            "GENERIC_LOGGER_ENDPOINT": self.ingest_url,
            "GENERIC_LOGGER_HEADERS": f"Authorization=Bearer {self.ingest_token}",
        }
        return {name: value for name, value in derived.items() if not environ.get(name)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "PluginSettings":
        env = os.environ if environ is None else environ
        # BILLING_URL is the name of versions before 1.1.0.
        url_setting = "BILLING_SERVICE_URL" if env.get("BILLING_SERVICE_URL", "").strip() else "BILLING_URL"
        billing_url = env.get(url_setting, "").strip().rstrip("/")
        if not billing_url.startswith(("http://", "https://")):
            raise SettingsError(
                "BILLING_SERVICE_URL must be the billing service's http(s) base URL, e.g. http://web:8000"
            )
        ingest_token = env.get("BILLING_INGEST_TOKEN", "").strip()
        # BILLING_INGEST_TOKEN authorizes only for a service that has no scoped tokens yet.
        token_setting = (
            "BILLING_AUTHORIZE_TOKEN" if env.get("BILLING_AUTHORIZE_TOKEN", "").strip() else "BILLING_INGEST_TOKEN"
        )
        token = env.get(token_setting, "").strip()
        if not token:
            raise SettingsError("BILLING_AUTHORIZE_TOKEN is required (the billing service's authorize token)")
        try:
            timeout = float(env.get("BILLING_PLUGIN_TIMEOUT_SECONDS", "1.0"))
        except ValueError as exc:
            raise SettingsError("BILLING_PLUGIN_TIMEOUT_SECONDS must be a number of seconds") from exc
        if not 0 < timeout <= 60:
            raise SettingsError("BILLING_PLUGIN_TIMEOUT_SECONDS must be above 0 and at most 60")
        raw_mode = env.get("BILLING_PLUGIN_ON_UNAVAILABLE", OnUnavailable.FAIL_CLOSED.value).strip().lower()
        try:
            mode = OnUnavailable(raw_mode)
        except ValueError as exc:
            raise SettingsError("BILLING_PLUGIN_ON_UNAVAILABLE must be fail_closed or fail_open") from exc
        try:
            default_hold = Decimal(env.get("BILLING_HOLD_DEFAULT_USD", "1.00").strip())
        except InvalidOperation as exc:
            raise SettingsError("BILLING_HOLD_DEFAULT_USD must be a decimal number of USD") from exc
        if not default_hold.is_finite() or default_hold <= 0:
            raise SettingsError("BILLING_HOLD_DEFAULT_USD must be above 0")
        return cls(
            billing_url=billing_url,
            token=token,
            ingest_token=ingest_token,
            url_setting=url_setting,
            token_setting=token_setting,
            timeout_seconds=timeout,
            on_unavailable=mode,
            default_hold_usd=default_hold,
        )
