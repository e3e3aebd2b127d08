"""Domain errors of the billing ledger; the base every billing app's errors share."""


class BillingError(Exception):
    """Base of every billing domain error."""


class FieldError(BillingError):
    """An input the domain refuses, naming the input at fault (`field`), which APIs and forms show there."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyConflict(BillingError):
    """The idempotency key was already used for a different operation."""


class InvalidLedgerOperation(BillingError):
    """An operation the ledger rules do not allow (wrong sign, unknown reason...)."""
