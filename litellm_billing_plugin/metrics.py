"""Counters of what the plugin decided.

Always kept in process (`Counters.snapshot()`) and written to the log on the
events an operator must see (fail_open passes, errors). When prometheus_client
is importable (the official LiteLLM image has it; the bare `litellm[proxy]`
install does not), the same counts are also exported as
`litellm_billing_plugin_events_total{event=...}` in the default registry, which
LiteLLM serves on /metrics when its prometheus callback is on.
"""

import threading
from collections import Counter
from enum import StrEnum

try:
    import prometheus_client
except ImportError:  # optional: the bare litellm[proxy] install has no prometheus_client
    prometheus_client = None

# Registered once per process (a registry refuses a second metric of the same name).
_PROMETHEUS = (
    prometheus_client.Counter(
        "litellm_billing_plugin_events", "Pre-call authorization decisions of the billing plugin", ["event"]
    )
    if prometheus_client is not None
    else None
)


class Event(StrEnum):
    ALLOWED = "allowed"  # the service took a hold
    REFUSED = "refused"  # the service answered 402
    UNAVAILABLE_REFUSED = "unavailable_refused"  # service down, fail_closed: the call got 503
    UNAVAILABLE_ALLOWED = "unavailable_allowed"  # service down, fail_open: the call went through without a hold
    REJECTED = "rejected"  # the service answered another 4xx: a bug or misconfiguration, the call got 503
    RELEASED = "released"  # a hold released after the call failed
    RELEASE_FAILED = "release_failed"  # the release could not be sent: the hold expires by TTL instead
    ESTIMATE_FALLBACK = "estimate_fallback"  # no price known: BILLING_HOLD_DEFAULT_USD was used
    RENEWED = "renewed"  # a streaming call's hold extended
    RENEW_FAILED = "renew_failed"  # a renewal that could not be sent or was refused


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, event: Event) -> int:
        """Count one event; returns the new total of that event in this process."""
        with self._lock:
            self._counts[event.value] += 1
            total = self._counts[event.value]
        if _PROMETHEUS is not None:
            _PROMETHEUS.labels(event=event.value).inc()
        return total

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
