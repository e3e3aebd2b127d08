"""The scopes of the internal API's bearer tokens (no Django: bin/run's launcher reads them before setup).

Each internal caller holds only its own secret (SPEC: LEAST_PRIVILEGE_TOKENS); billing_project.api checks them.
"""

from enum import StrEnum


class TokenScope(StrEnum):
    """Who may call what (SPEC: LEAST_PRIVILEGE_TOKENS): each internal caller holds only its own secret."""

    INGEST = "ingest"  # LiteLLM's generic_api callback
    AUTHORIZE = "authorize"  # the LiteLLM plugin (authorize, release, renew) and executors (receipt lookup)
    ADMIN_API = "admin_api"  # credits, payer bindings, runs, per-run reconcile
    METRICS = "metrics"  # Prometheus (/metrics) and /api/schema/


# The setting that holds each scope's token; an unset one falls back to BILLING_INGEST_TOKEN
# (billing_project.checks warns about that outside DEBUG).
SCOPE_SETTINGS = {
    TokenScope.INGEST: "BILLING_INGEST_TOKEN",
    TokenScope.AUTHORIZE: "BILLING_AUTHORIZE_TOKEN",
    TokenScope.ADMIN_API: "BILLING_ADMIN_API_TOKEN",
    TokenScope.METRICS: "BILLING_METRICS_TOKEN",
}
