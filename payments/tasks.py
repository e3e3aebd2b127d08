"""Celery tasks of payments: thin, they call services."""

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing_project.celery import DB_RETRY_COUNTDOWN_SECONDS
from payments import metrics
from payments.selectors import oldest_pending_attempt_age
from payments.services import expire_stale_attempts, run_auto_recharges, verify_pending_usdc

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=3)
def expire_payment_attempts(self: Any) -> int:
    """Expire the attempts still unpaid after BILLING_PAYMENT_PENDING_TTL_SECONDS."""
    now = timezone.now()
    try:
        expired = expire_stale_attempts(now=now)
        metrics.payment_attempt_oldest_pending_seconds.set(oldest_pending_attempt_age(now=now))
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if expired:
        logger.info("payments: %d attempts expired unpaid", expired)
    return expired


@shared_task(bind=True, max_retries=3)
def verify_usdc_payments(self: Any) -> dict[str, int]:
    """Verify the pending USDC attempts that have a transaction on the chain; expire those past their TTL."""
    try:
        counts = verify_pending_usdc(now=timezone.now())
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if any(counts.values()):
        logger.info("payments: USDC %s", counts)
    return counts


@shared_task(bind=True, max_retries=3)
def run_auto_recharge(self: Any) -> dict[str, int]:
    """Charge the saved card of every account with auto-recharge on whose available credit is below its mark."""
    try:
        counts = run_auto_recharges()
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_SECONDS) from exc
    if any(counts.values()):
        logger.info("payments: auto-recharge %s", counts)
    return counts
