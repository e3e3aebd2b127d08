"""Signals of the accounts app, so that other apps can react without accounts importing them."""

from django.dispatch import Signal

# Sent after the transaction that bound a payer commits.
# kwargs: kind ("key", "team", "run" or "end_user"), value (the bound key hash, team id, run id or end user),
# account_id.
payer_binding_created = Signal()
