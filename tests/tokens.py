"""Which scoped token a test sends to which internal path (README, "Tokens").

Tests talk to many endpoints through one client; like the real callers (LiteLLM's callback, the plugin,
an admin tool, Prometheus) each request carries only the token of its endpoint's scope.
tests/receipts/test_nobody_rides_free.py (test_each_endpoint_takes_only_its_own_token) proves every endpoint refuses
the other scopes' tokens.
"""

import os

_INTERNAL = "/api/internal/billing/"
# Path prefixes (after /api/internal/billing/) and the setting holding their token.
_SCOPES = (
    ("ingest", "BILLING_INGEST_TOKEN"),
    ("authorize", "BILLING_AUTHORIZE_TOKEN"),
    ("receipts/", "BILLING_AUTHORIZE_TOKEN"),
)


def token_setting_for(path: str) -> str:
    """The setting whose token the endpoint at `path` accepts."""
    path = "/" + path.split("://", 1)[-1].split("/", 1)[-1] if "://" in path else path
    path = path.split("?", 1)[0]
    if path.startswith(_INTERNAL):
        rest = path[len(_INTERNAL) :]
        for prefix, setting in _SCOPES:
            if rest.startswith(prefix):
                return setting
        return "BILLING_ADMIN_API_TOKEN"
    return "BILLING_METRICS_TOKEN"  # /metrics, /api/schema/


def token_for(path: str) -> str:
    return os.environ[token_setting_for(path)]


def auth_header(path: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(path)}"}
