"""--apply: bill each healable missing receipt from its spend-log row, through commit_usage_facts().

The spend-log row (in reconcile_rows) is rebuilt into the StandardLoggingPayload
shape the ingest path parses, so a backfilled receipt is billed exactly like a
late callback would be, and a late callback afterwards is a duplicate.
"""

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

from receipts.exactjson import loads_exact
from receipts.models import DeferredUsage
from receipts.services import commit_isolated
from receipts.usage import UsageFact, parse_usage_record
from reconciliation import metrics
from reconciliation.spendlogs import SPEND_COLUMNS

logger = logging.getLogger(__name__)

_BACKFILL_CHUNK = 500
_CACHE_HIT_SUFFIX = re.compile(r"_cache_hit[0-9.]+$")
# The rows' columns in SPEND_COLUMNS order, times as epoch seconds (the payload's form).
_EPOCH_COLUMNS = frozenset({"start_time", "end_time"})
_BACKFILL_COLUMNS = ", ".join(
    f"EXTRACT(EPOCH FROM s.{name})" if name in _EPOCH_COLUMNS else f"s.{name}" for name, _ in SPEND_COLUMNS
)


def spend_log_record(row: Sequence[Any]) -> dict[str, Any]:
    """A LiteLLM StandardLoggingPayload-shaped record built from a spend-log row (for parse_usage_record)."""
    (
        request_id,
        call_id,
        spend,
        status,
        end_user,
        start,
        end,
        model_group,
        model,
        provider,
        call_type,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cache_hit,
        api_key,
        team_id,
        key_alias,
        spend_logs_metadata,
        model_map_information,
    ) = row
    record: dict[str, Any] = {
        "id": _CACHE_HIT_SUFFIX.sub("", request_id),
        "litellm_call_id": call_id,
        "response_cost": spend,
        "status": status or "success",
        "end_user": end_user or "",
        "model_group": model_group,
        "model": model,
        "custom_llm_provider": provider,
        "call_type": call_type,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total_tokens,
        "cache_hit": cache_hit,
        "startTime": start,
        "endTime": end,
        "metadata": {
            "spend_logs_metadata": loads_exact(spend_logs_metadata) if spend_logs_metadata else None,
            "user_api_key_hash": api_key or None,
            "user_api_key_alias": key_alias,
            "user_api_key_team_id": team_id or None,
            "user_api_key_end_user_id": end_user or None,
        },
    }
    if model_map_information:
        record["model_map_information"] = loads_exact(model_map_information)
    return record


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
