"""--apply: bill each healable missing receipt from its spend-log row, through commit_usage_facts().

The spend-log row (in reconcile_rows) is rebuilt into the StandardLoggingPayload
shape the ingest path parses, so a backfilled receipt is billed exactly like a
late callback would be, and a late callback afterwards is a duplicate.
"""

import dataclasses
import logging
from typing import Any

from integrations.litellm.records import parse_usage_record
from integrations.litellm.spendlogs import SPEND_COLUMNS, spend_log_record
from receipts.facts import UsageFact
from receipts.models import DeferredUsage
from receipts.services import commit_isolated
from reconciliation import metrics

logger = logging.getLogger(__name__)

_BACKFILL_CHUNK = 500
# The rows' columns in SPEND_COLUMNS order, times as epoch seconds (the payload's form).
_EPOCH_COLUMNS = frozenset({"start_time", "end_time"})
_BACKFILL_COLUMNS = ", ".join(
    f"EXTRACT(EPOCH FROM s.{name})" if name in _EPOCH_COLUMNS else f"s.{name}" for name, _ in SPEND_COLUMNS
)


def backfill(cursor: Any) -> dict[str, int]:
    """Bill every healable missing receipt through commit_usage_facts(); marks what it healed."""
    counts = {"backfilled": 0, "already_billed": 0, "deferred": 0, "not_billable": 0, "errors": 0}
    after = ""
    while True:
        cursor.execute(
            f"""
            SELECT {_BACKFILL_COLUMNS}
              FROM reconcile_found f JOIN reconcile_rows s ON s.request_id = f.ref
             WHERE f.kind = 'missing_receipt' AND f.healable AND f.ref > %s
             ORDER BY f.ref LIMIT %s
            """,
            [after, _BACKFILL_CHUNK],
        )
        rows = cursor.fetchall()
        if not rows:
            return counts
        after = rows[-1][0]
        facts: list[UsageFact] = []
        refs: list[str] = []
        for row in rows:
            parsed = parse_usage_record(spend_log_record(row))
            if isinstance(parsed, UsageFact):
                # A backfilled receipt links to the spend-log row it came from.
                facts.append(dataclasses.replace(parsed, spend_log_request_id=row[0]))
                refs.append(row[0])
            else:
                counts["not_billable"] += 1
                logger.warning("spend log %s cannot be backfilled: %s (%s)", row[0], parsed.reason, parsed.detail)
        # As for a delivery: a fact the database refuses is kept for replay and costs only itself.
        outcomes = commit_isolated(facts=facts)
        healed = []
        for ref, outcome in zip(refs, outcomes, strict=True):
            if outcome.outcome == "deferred" and outcome.reason == DeferredUsage.Reason.ERROR:
                counts["errors"] += 1
            elif outcome.outcome == "processed":
                counts["backfilled"] += 1
                healed.append(ref)
            elif outcome.outcome == "duplicate":
                counts["already_billed"] += 1
                healed.append(ref)
            else:
                counts["deferred"] += 1
        if healed:
            cursor.execute(
                "UPDATE reconcile_found SET healed = true WHERE kind = 'missing_receipt' AND ref = ANY(%s)", [healed]
            )
        metrics.reconcile_backfilled_total.inc(sum(1 for o in outcomes if o.outcome == "processed"))
