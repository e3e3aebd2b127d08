"""Errors of pre-call authorization."""

from accounts.exceptions import BillingError, FieldError


class InvalidAuthorization(FieldError):
    """An authorize request the service cannot decide (negative or unbounded estimate...)."""


class HoldConflict(FieldError):
    """The call already holds credits for another estimate."""


class CallIdReused(BillingError):
    """The call id was authorized before and that hold is no longer open, or belongs to another payer (409)."""

    field = "litellm_call_id"


class AuthorizeTooLate(BillingError):
    """The caller's deadline passed before the decision could be taken: nothing was held (503)."""
