"""Celery tasks: thin, they take ids and call services."""

import logging

from celery import shared_task
from django.conf import settings

from receipts.models import DeferredUsage

logger = logging.getLogger(__name__)


def enqueue_end_user_replay(*, end_user: str) -> None:
    """Replay records waiting for `end_user`: on the worker when a broker is set, else right here."""
    if settings.CELERY_BROKER_URL and not settings.CELERY_TASK_ALWAYS_EAGER:
        replay_end_user.delay(end_user)
    else:
        replay_end_user(end_user)


@shared_task
def replay_end_user(end_user: str) -> int:
    from receipts.services import retry_deferred_usage

    billed = 0
    for deferred in DeferredUsage.objects.filter(
        end_user=end_user,
        reason=DeferredUsage.Reason.UNKNOWN_END_USER,
        status=DeferredUsage.Status.PENDING,
    ):
        if retry_deferred_usage(deferred=deferred) is not None:
            billed += 1
    return billed
