"""Wait for a receipt without polling the database: PostgreSQL LISTEN/NOTIFY.

commit_usage_facts() NOTIFYs the call id of every new receipt on commit. One
listener thread per process holds one idle connection and wakes the request
threads waiting for those call ids.
"""

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings

from billing_project.db import conninfo_from_settings
from receipts.services import RECEIPT_CHANNEL

logger = logging.getLogger(__name__)


class ReceiptWaiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = threading.Event()

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="receipt-listener", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # LISTEN lives in its session: on PostgreSQL itself (DATABASE_DIRECT_URL behind PgBouncer).
                with psycopg.connect(conninfo_from_settings(settings.LISTEN_DATABASE), autocommit=True) as conn:
                    conn.execute(f"LISTEN {RECEIPT_CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._wake(note.payload)
            except Exception:
                if self._stop.is_set():
                    break
                logger.warning("receipt listener lost its connection; reconnecting", exc_info=True)
                self.listening.clear()
                self._wake_all()
                self._stop.wait(1.0)
        self.listening.clear()

    def stop(self) -> None:
        """Close the listening connection (tests do this before dropping their database)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self._wake_all()
        self._thread = None
        self._stop.clear()

    def _wake(self, call_id: str) -> None:
        with self._lock:
            for event in self._events.get(call_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._events.values():
                for event in events:
                    event.set()

    @contextmanager
    def subscribe(self, call_id: str) -> Iterator[threading.Event]:
        """Subscribe before checking the database, so a receipt landing in between is not missed."""
        event = threading.Event()
        with self._lock:
            self._events[call_id].add(event)
        self._ensure_listener()
        self.listening.wait(timeout=2.0)
        try:
            yield event
        finally:
            with self._lock:
                self._events[call_id].discard(event)
                if not self._events[call_id]:
                    del self._events[call_id]


waiter = ReceiptWaiter()
