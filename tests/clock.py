"""A tiny time control for tests: everything that asks django.utils.timezone.now() sees `moment`.

The money path stamps receipts and ledger entries with timezone.now(), so
freezing it is how a test places entries in a past month.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from unittest import mock


@contextmanager
def frozen_now(moment: datetime) -> Iterator[datetime]:
    if moment.tzinfo is None:
        raise ValueError("frozen_now needs an aware datetime")
    with mock.patch("django.utils.timezone.now", return_value=moment):
        yield moment
