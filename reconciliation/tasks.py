"""The scheduled reconcile as a Celery task (beat: settings.CELERY_BEAT_SCHEDULE; or `manage.py billing_worker`)."""

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from reconciliation.services import reconcile_scheduled

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=2)
def reconcile_books(self: Any) -> dict[str, Any]:
    """The scheduled reconcile: in-book checks always, LiteLLM's spend logs when a master key is set."""
    try:
        report = reconcile_scheduled()
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=60) from exc
    summary = report.summary()
    if report.exit_code:
        logger.warning("scheduled reconcile: %s", summary)
    else:
        logger.info("scheduled reconcile: %s", summary)
    return summary
