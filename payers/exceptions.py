"""Errors of the payer bindings."""

from accounts.exceptions import FieldError


class InvalidBinding(FieldError):
    """A payer binding value that cannot be stored (empty, too long, control characters...)."""


class BindingConflict(FieldError):
    """The value is already bound to another account (or bound differently)."""
