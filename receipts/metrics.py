"""Prometheus metrics of the billing path (served on /metrics by django-prometheus)."""

from prometheus_client import Counter, Gauge, Histogram

receipts_total = Counter(
    "billing_receipts_total",
    "Usage records by outcome of billing them",
    ["outcome"],  # processed, duplicate, deferred, skipped
)
missing_cost_deferred_total = Counter(
    "billing_missing_cost_deferred_total",
    "Records deferred because LiteLLM did not know their cost",
)
zero_cost_suspect_total = Counter(
    "billing_zero_cost_suspect_total",
    "Successful calls billed at 0 although LiteLLM's model map lists non-zero prices",
)
call_id_reused_total = Counter(
    "billing_call_id_reused_total",
    "Calls billed as their own receipt although another call had already used their litellm_call_id "
    "(the client chose its call id)",
)
invariant_violation_total = Counter(
    "billing_invariant_violation_total",
    "Records or books that broke a billing invariant",
    ["reason"],
)
failed_call_without_cost_total = Counter(
    "billing_failed_call_without_cost_total",
    "LiteLLM failure records with no cost (no receipt written)",
)
ingest_batch_seconds = Histogram(
    "billing_ingest_batch_seconds",
    "Time to handle one ingest POST",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ingest_batch_records = Histogram(
    "billing_ingest_batch_records",
    "Records per ingest POST",
    buckets=(1, 10, 50, 100, 256, 512, 1024, 4096),
)
deferred_pending = Gauge(
    "billing_deferred_pending",
    "Deferred usage records waiting to be billed (set by the sweep)",
    ["reason"],
    multiprocess_mode="mostrecent",
)
deferred_failed = Gauge(
    "billing_deferred_failed",
    "Deferred usage records that gave up and wait for staff (set by the sweep)",
    ["reason"],
    multiprocess_mode="mostrecent",
)

# --- Safety net: deferred retries (reconcile's metrics: reconciliation/metrics.py) --------------
deferred_retries_total = Counter(
    "billing_deferred_retries_total",
    "Retries of deferred usage records by result",
    ["result"],  # billed, duplicate, waiting, expired, skipped, litellm_error
)

# --- Latency of the callback path ------------------------------------------------------------
ingest_lag_seconds = Histogram(
    "billing_ingest_lag_seconds",
    "From a call's endTime (LiteLLM's record) to its receipt committed, for receipts from callbacks",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
