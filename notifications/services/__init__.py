"""Writes of notifications: settings (endpoints, alerts), the outbox (events) and its delivery."""

from notifications.services.delivery import (
    deliver_due_webhooks,
    dispatch_billing_events,
    replay_delivery,
    retry_delay,
    send_delivery,
    webhook_body,
)
from notifications.services.events import record_billing_event
from notifications.services.settings import (
    balance_alert_create,
    balance_alert_delete,
    endpoint_address_problem,
    validate_endpoint_url,
    validate_threshold,
    webhook_endpoint_create,
    webhook_endpoint_delete,
)

__all__ = [
    "balance_alert_create",
    "balance_alert_delete",
    "deliver_due_webhooks",
    "dispatch_billing_events",
    "endpoint_address_problem",
    "record_billing_event",
    "replay_delivery",
    "retry_delay",
    "send_delivery",
    "validate_endpoint_url",
    "validate_threshold",
    "webhook_body",
    "webhook_endpoint_create",
    "webhook_endpoint_delete",
]
