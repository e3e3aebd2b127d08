from celery import shared_task

from accounts.services import expire_promotional_credits, notify_expiring_promotions


@shared_task
def expire_promotions() -> dict[str, int]:
    """Warn of promotional credit expiring within 7 days (once per grant), then expire what is past due."""
    return {"expiring_noticed": notify_expiring_promotions(), "expired": expire_promotional_credits()}
