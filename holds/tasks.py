"""Celery tasks of the accounts app: thin, they call services.

Celery beat runs `expire_credit_holds` on the deferred sweep's schedule (settings.CELERY_BEAT_SCHEDULE);
without a broker `manage.py billing_worker` runs it right after each deferred-usage sweep.
"""

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing_project.celery import DB_RETRY_COUNTDOWN_SECONDS
from holds.services import expire_holds

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=3)
def expire_credit_holds(self: Any) -> int:
    """Mark expired the holds whose call sent no usage record within BILLING_HOLD_TTL_SECONDS."""
    try:
        expired = expire_holds(now=timezone.now())
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if expired:
        logger.info("credit holds: %d expired (no usage record within BILLING_HOLD_TTL_SECONDS)", expired)
    return expired
