"""Writes to billing accounts and the credit ledger (ledger.py), and promotional credit (promotions.py)."""

from accounts.services.ledger import (
    GRANT_REASONS,
    PAYMENT_REASONS,
    GrantResult,
    InvalidGrant,
    billing_account_create,
    grant_credits,
    validate_grant,
)
from accounts.services.promotions import (
    expire_promotional_credits,
    grant_promotional_credits,
    notify_expiring_promotions,
    validate_promotion,
)

__all__ = [
    "GRANT_REASONS",
    "PAYMENT_REASONS",
    "GrantResult",
    "InvalidGrant",
    "billing_account_create",
    "expire_promotional_credits",
    "grant_credits",
    "grant_promotional_credits",
    "notify_expiring_promotions",
    "validate_grant",
    "validate_promotion",
]
