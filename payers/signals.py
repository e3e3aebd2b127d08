"""Signals of the accounts app.

`payer_binding_created` is sent after the transaction that created a payer
binding commits, with kwargs `kind` (a PayerSource value: "key", "team",
"run" or "end_user"), `value` (the key hash, team id, run id or end user) and
`account_id`. The receipts app listens to replay the records deferred for
want of that payer; accounts never imports receipts.
"""

from django.dispatch import Signal

payer_binding_created = Signal()
