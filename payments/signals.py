"""What other apps may react to without payments importing them (notifications sends payment.* events).

Sent inside the transaction that moved the attempt, so a receiver's outbox row commits with it.
"""

from django.dispatch import Signal

# kwargs: attempt (payments.models.PaymentAttempt, its new status set), status (str)
payment_status_changed = Signal()
