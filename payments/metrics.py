"""Prometheus metrics of purchases (served on /metrics like the other apps' metrics.py)."""

from prometheus_client import Counter, Gauge

payment_attempts_total = Counter(
    "billing_payment_attempts_total",
    "Payment attempts reaching a status, by provider and status (created, pending, succeeded, failed, ...)",
    ["provider", "status"],
)
webhook_signature_failures_total = Counter(
    "billing_payment_webhook_signature_failures_total",
    "Provider webhook deliveries refused because their signature did not verify (stored, nothing credited)",
    ["provider"],
)
provider_events_failed_total = Counter(
    "billing_payment_events_failed_total",
    "Provider events whose processing raised (kept with their traceback for reprocessing from the admin)",
    ["provider"],
)
payment_mismatches_total = Counter(
    "billing_payment_mismatches_total",
    "Paid events that credited nothing because amount or currency differed from the attempt",
    ["provider"],
)
verification_failures_total = Counter(
    "billing_payment_verification_failures_total",
    "USDC transactions that did not verify, by reason (wrong_token, wrong_receiver, wrong_sender, reverted, "
    "reused_hash, rpc_unavailable, nothing_arrived)",
    ["reason"],
)
payment_attempt_oldest_pending_seconds = Gauge(
    "billing_payment_attempt_oldest_pending_seconds",
    "Age of the oldest payment attempt still waiting for its payment (set by the expiry sweep)",
    multiprocess_mode="max",
)
