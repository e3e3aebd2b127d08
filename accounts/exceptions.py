"""Domain errors of the billing ledger."""


class BillingError(Exception):
    """Base of every billing domain error."""


class IdempotencyConflict(BillingError):
    """The idempotency key was already used for a different operation."""


class InvalidLedgerOperation(BillingError):
    """An operation the ledger rules do not allow (wrong sign, unknown reason...)."""


class UnknownEndUser(BillingError):
    """No billing account owns this LiteLLM end user."""


class InvalidBinding(BillingError):
    """A payer binding value that cannot be stored (empty, too long, control characters...)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class BindingConflict(BillingError):
    """The value is already bound to another account (or bound differently)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidAuthorization(BillingError):
    """An authorize request the service cannot decide (negative or unbounded estimate...); `field` names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class CallIdReused(BillingError):
    """The call id was authorized before and that hold is no longer open, or belongs to another payer (409)."""

    field = "litellm_call_id"


class AuthorizeTooLate(BillingError):
    """The caller's deadline passed before the decision could be taken: nothing was held (503)."""


class HoldConflict(BillingError):
    """The call already holds credits for another estimate."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
