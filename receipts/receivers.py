"""How receipts reacts to other apps (connected in ReceiptsConfig.ready)."""

from typing import Any

from django.dispatch import receiver

from payers.signals import payer_binding_created
from receipts.tasks import replay_payer_deferrals


@receiver(payer_binding_created, dispatch_uid="receipts.replay_on_payer_binding")
def replay_on_payer_binding(sender: Any, *, kind: str, value: str, **kwargs: Any) -> None:
    """A payer was bound: bill the records that waited for it."""
    replay_payer_deferrals(kind=kind, value=value)
