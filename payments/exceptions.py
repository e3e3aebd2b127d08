"""Errors of purchases."""

from accounts.exceptions import BillingError, FieldError


class InvalidPurchase(FieldError):
    """A purchase the service refuses (amount not a number, outside the limits, more than 2 decimals...)."""


class InvalidTransition(BillingError):
    """A status change that payments.models.ALLOWED_TRANSITIONS does not allow."""


class PaymentsUnavailable(BillingError):
    """The provider is not configured or did not answer: no attempt could be opened."""
