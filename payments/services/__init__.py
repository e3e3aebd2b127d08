"""Writes of purchases, by provider; this package re-exports what the views, admin and tasks use."""

from payments.services.attempts import expire_stale_attempts, purchase_amount, transition
from payments.services.recharge import auto_recharge_disable, auto_recharge_set, run_auto_recharges
from payments.services.stripe import (
    apply_stripe_event,
    process_provider_event,
    stripe_delivery_receive,
    stripe_purchase_start,
)
from payments.services.usdc import (
    eip681_link,
    resolve_mismatch,
    usdc_purchase_start,
    usdc_transaction_submit,
    verify_pending_usdc,
    verify_usdc_attempt,
)

__all__ = [
    "apply_stripe_event",
    "auto_recharge_disable",
    "auto_recharge_set",
    "eip681_link",
    "expire_stale_attempts",
    "process_provider_event",
    "purchase_amount",
    "resolve_mismatch",
    "run_auto_recharges",
    "stripe_delivery_receive",
    "stripe_purchase_start",
    "transition",
    "usdc_purchase_start",
    "usdc_transaction_submit",
    "verify_pending_usdc",
    "verify_usdc_attempt",
]
