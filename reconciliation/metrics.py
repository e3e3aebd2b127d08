"""Prometheus metrics of reconcile runs (served on /metrics; names unchanged since they lived in receipts)."""

from prometheus_client import Counter, Gauge, Histogram

reconcile_discrepancies = Gauge(
    "billing_reconcile_discrepancies",
    "Discrepancies found by the last reconcile run, by kind (what is left after --apply)",
    ["kind"],
    multiprocess_mode="mostrecent",
)
reconcile_runs_total = Counter(
    "billing_reconcile_runs_total",
    "Reconcile runs by outcome",
    ["outcome"],  # clean, discrepancies, source_error
)
reconcile_duration_seconds = Gauge(
    "billing_reconcile_duration_seconds",
    "Wall time of the last reconcile run",
    multiprocess_mode="mostrecent",
)
reconcile_last_run_timestamp = Gauge(
    "billing_reconcile_last_run_timestamp_seconds",
    "When the last reconcile run finished (Unix time), whatever its outcome",
    multiprocess_mode="max",
)
reconcile_last_success_timestamp = Gauge(
    "billing_reconcile_last_success_timestamp_seconds",
    "When the last reconcile run that could read every source finished (Unix time)",
    multiprocess_mode="max",
)
reconcile_rows_total = Counter(
    "billing_reconcile_spend_log_rows_total",
    "LiteLLM spend-log rows read by reconcile",
)
reconcile_backfilled_total = Counter(
    "billing_reconcile_backfilled_total",
    "Receipts written by `reconcile --apply` for calls LiteLLM billed but we never received",
)

# --- Per-run reconcile (reconciliation/runs.py) --------------------------------------------------
run_reconcile_latency_seconds = Histogram(
    "billing_run_reconcile_latency_seconds",
    "Wall time of one per-run reconcile (read the run's spend logs, backfill, report)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
run_reconciles_total = Counter(
    "billing_run_reconciles_total",
    "Per-run reconciles by outcome",
    ["outcome"],  # clean, discrepancies, not_found, source_error, error
)
