"""Prometheus metrics of pre-call authorization and credit holds (served on /metrics like receipts/metrics.py)."""

from prometheus_client import Counter, Histogram

authorize_decisions_total = Counter(
    "billing_authorize_decisions_total",
    "Pre-call authorizations by result",
    # allowed, replayed, insufficient_credits, unknown_payer, unpriced_model, unknown_payer_allowed, conflict,
    # invalid, too_late
    ["result"],
)
authorize_seconds = Histogram(
    "billing_authorize_seconds",
    "Time to decide one authorization (payer, account lock, open holds, hold insert)",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
holds_expired_total = Counter(
    "billing_holds_expired_total",
    "Credit holds whose call sent no usage record within BILLING_HOLD_TTL_SECONDS (marked expired by the sweep)",
)
holds_released_total = Counter(
    "billing_holds_released_total",
    "Credit holds released by the proxy (a call that failed) or by staff",
)
holds_renewed_total = Counter(
    "billing_holds_renewed_total",
    "Credit holds extended by the plugin while their call was still running (a long stream)",
)
holds_settled_total = Counter(
    "billing_holds_settled_total",
    "Receipts matched to a hold: settled (the hold was open) or late (the hold had expired or been released)",
    ["outcome"],
)
