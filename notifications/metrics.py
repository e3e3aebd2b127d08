"""Prometheus metrics of outbound webhooks (served on /metrics like the other apps' metrics.py)."""

from prometheus_client import Counter, Gauge

webhook_deliveries_total = Counter(
    "billing_webhook_deliveries_total",
    "Webhook delivery tries by outcome (succeeded, retry, failed: gave up, disabled: endpoint answered 410)",
    ["outcome"],
)
webhook_endpoints_disabled_total = Counter(
    "billing_webhook_endpoints_disabled_total", "Webhook endpoints disabled because the receiver answered 410 Gone"
)
webhook_deliveries_pending = Gauge(
    "billing_webhook_deliveries_pending", "Webhook deliveries waiting for a first try or a retry"
)
