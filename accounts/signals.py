"""What other apps may react to without accounts importing them (notifications listens).

Sent inside the transaction that made the change, so a receiver's writes (an outbox row) commit with it.
"""

from django.dispatch import Signal

# kwargs: promotional_credit (accounts.models.PromotionalCredit), now (datetime)
promotional_credit_expiring = Signal()
# kwargs: promotional_credit, entry (the expiry CreditLedgerEntry)
promotional_credit_expired = Signal()
