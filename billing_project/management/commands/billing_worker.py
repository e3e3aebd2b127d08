"""`python manage.py billing_worker`: the safety nets without a Celery broker.

bin/run starts it when CELERY_BROKER_URL is empty. It runs the jobs of Celery
beat, on the same schedule (settings.CELERY_BEAT_SCHEDULE): the sweeps every
BILLING_DEFERRED_SWEEP_SECONDS (each due deferred record is retried right here, expired credit holds are
marked, payments and promotional credit expire), the billing events' delivery (webhooks, owner mail) every
BILLING_EVENTS_POLL_SECONDS and the scheduled reconcile every BILLING_RECONCILE_SECONDS. SIGTERM or SIGINT
stops it after the job in hand.
"""

import logging
import signal
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connection

from accounts.tasks import expire_promotions
from holds.tasks import expire_credit_holds
from notifications.tasks import deliver_billing_events
from payments.tasks import expire_payment_attempts, run_auto_recharge, verify_usdc_payments
from receipts.tasks import purge_delivery_bodies, sweep_deferred_usage
from reconciliation.tasks import reconcile_books

logger = logging.getLogger("billing_project.billing_worker")


def _drop_stale_connections() -> None:
    """Like a request boundary: a connection the database dropped is replaced (never inside a transaction)."""
    if not connection.in_atomic_block:
        close_old_connections()


class Command(BaseCommand):
    help = "Retry deferred usage records and run the scheduled reconcile, without a Celery broker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="run one sweep and one reconcile, then exit")
        parser.add_argument("--no-reconcile", action="store_true", help="only sweep deferred usage records")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def request_stop(signum: int, _frame: object) -> None:
            logger.info("billing_worker: %s received, stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop(stop, once=options["once"], reconcile=not options["no_reconcile"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, stop: threading.Event, *, once: bool, reconcile: bool) -> None:
        sweep_every = settings.BILLING_DEFERRED_SWEEP_SECONDS
        reconcile_every = settings.BILLING_RECONCILE_SECONDS
        logger.info(
            "billing_worker: sweeping deferred usage every %ss%s",
            sweep_every,
            f", reconciling every {reconcile_every}s" if reconcile else "",
        )
        events_every = settings.BILLING_EVENTS_POLL_SECONDS
        next_sweep = next_events = time.monotonic()
        # Like beat: the first scheduled reconcile runs one interval after start (--once: now).
        next_reconcile = time.monotonic() + (0 if once else reconcile_every)
        while not stop.is_set():
            _drop_stale_connections()
            if time.monotonic() >= next_sweep:
                self._run(sweep_deferred_usage, "deferred usage sweep")
                self._run(expire_credit_holds, "credit hold expiry")
                self._run(purge_delivery_bodies, "delivery body purge")
                self._run(expire_payment_attempts, "unpaid payment expiry")
                self._run(verify_usdc_payments, "USDC payment verification")
                self._run(run_auto_recharge, "auto-recharge")
                self._run(expire_promotions, "promotional credit expiry")
                next_sweep = time.monotonic() + sweep_every
            if time.monotonic() >= next_events:
                self._run(deliver_billing_events, "billing events delivery")
                next_events = time.monotonic() + events_every
            if reconcile and time.monotonic() >= next_reconcile and not stop.is_set():
                self._run(reconcile_books, "scheduled reconcile")
                next_reconcile = time.monotonic() + reconcile_every
            if once:
                break
            due = min(next_sweep, next_events, next_reconcile) if reconcile else min(next_sweep, next_events)
            stop.wait(max(0.0, due - time.monotonic()))
        _drop_stale_connections()
        logger.info("billing_worker: stopped")

    def _run(self, task: Any, name: str) -> None:
        """Run a Celery task's body in this process; a failure is logged, never fatal."""
        result = task.apply()
        if result.failed():
            logger.error("billing_worker: %s failed: %r", name, result.result)
