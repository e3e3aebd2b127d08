"""LiteLLM's spend logs of a window, read page by page and COPYed into the temp table `reconcile_rows`.

Memory stays flat however large the window: rows are streamed from the HTTP
pages into PostgreSQL with COPY; the checks then compare set-wise in SQL.
"""

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from tqdm import tqdm

from integrations.litellm.client import LiteLLMClient, LiteLLMError, SpendLogRow
from integrations.litellm.spendlogs import SPEND_COLUMNS, SpendLogReader, spend_row_values
from reconciliation.window import Window

logger = logging.getLogger(__name__)

# Spend logs are read a little beyond the window so that a receipt at its edge
# still finds its row (LiteLLM keeps startTime to the millisecond).
EDGE = timedelta(seconds=60)
_SECOND = timedelta(seconds=1)


def _floor_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _ceil_second(value: datetime) -> datetime:
    return value if value.microsecond == 0 else value.replace(microsecond=0) + _SECOND


def load_spend_logs(cursor: Any, client: LiteLLMClient, window: Window, *, progress: bool) -> int:
    """COPY the spend logs of the window (plus EDGE on both sides) into reconcile_rows; returns rows read."""
    start, end = _floor_second(window.since - EDGE), _ceil_second(window.until + EDGE)
    # Slices overlap at their bounds and a re-read slice repeats rows: a request_id can come
    # twice. The comparisons below tolerate that (only their few results are made distinct).
    create_rows_table(cursor)
    bar = tqdm(
        total=int((end - start).total_seconds()),
        unit="s",
        unit_scale=True,
        desc="LiteLLM spend logs",
        disable=not progress,
        leave=False,
    )
    read = 0

    def advance(rows: int, span: timedelta) -> None:
        bar.update(int(span.total_seconds()))
        bar.set_postfix(rows=read)

    reader = SpendLogReader(
        client,
        page_size=settings.BILLING_RECONCILE_PAGE_SIZE,
        first_slice=timedelta(seconds=settings.BILLING_RECONCILE_SLICE_SECONDS),
        on_progress=advance,
    )
    names = ", ".join(name for name, _ in SPEND_COLUMNS)
    failure: LiteLLMError | None = None
    try:
        with cursor.copy(f"COPY reconcile_rows ({names}) FROM STDIN") as copy:
            try:
                for row in reader.rows(start, end):
                    copy.write_row(spend_row_values(row))
                    read += 1
            except LiteLLMError as exc:
                failure = exc  # end the COPY cleanly; the caller's transaction drops what was read
    finally:
        bar.close()
    if failure is not None:
        raise failure
    logger.info("read %d spend-log rows in %d requests", read, reader.requests)
    index_rows_table(cursor)
    return read


def create_rows_table(cursor: Any) -> None:
    """The temp table reconcile_rows (SPEND_COLUMNS) that the checks and the backfill read."""
    columns = ", ".join(f"{name} {kind}" for name, kind in SPEND_COLUMNS)
    cursor.execute(
        f"""
        CREATE TEMP TABLE reconcile_rows ({columns},
            base_request_id text GENERATED ALWAYS AS (
                CASE WHEN litellm_call_id IS NULL THEN regexp_replace(request_id, '_cache_hit[0-9.]+$', '') END
            ) STORED)
        """
    )


def copy_rows(cursor: Any, rows: Iterable[SpendLogRow]) -> int:
    """COPY rows already read (a run's few) into reconcile_rows; returns how many."""
    names = ", ".join(name for name, _ in SPEND_COLUMNS)
    count = 0
    with cursor.copy(f"COPY reconcile_rows ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(spend_row_values(row))
            count += 1
    return count


def index_rows_table(cursor: Any) -> None:
    # Rows without a call id (older LiteLLM) are matched by request id: usually none, so a small index.
    cursor.execute("CREATE INDEX ON reconcile_rows (base_request_id) WHERE base_request_id IS NOT NULL")
    cursor.execute("ANALYZE reconcile_rows")
