"""Domain errors of the billing ledger."""


class BillingError(Exception):
    """Base of every billing domain error."""


class IdempotencyConflict(BillingError):
    """The idempotency key was already used for a different operation."""


class InvalidLedgerOperation(BillingError):
    """An operation the ledger rules do not allow (wrong sign, unknown reason...)."""


class UnknownEndUser(BillingError):
    """No billing account owns this LiteLLM end user."""
