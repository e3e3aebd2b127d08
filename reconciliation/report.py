"""The report of a run: counts and first items per kind, its exit code (0/1/2), as JSON or as text."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.management.color import Style

from accounts.models import BillingAccount
from billing_project.exactjson import dumps_exact, loads_exact
from reconciliation.window import Window

LITELLM_KINDS = ("missing_receipt", "cost_mismatch", "unknown_to_litellm")
BOOK_KINDS = (
    "balance_drift",
    "held_drift",
    "orphan_usage",
    "credits_mismatch",
    "summary_drift",
    "invoice_identity",
)
KINDS = LITELLM_KINDS + BOOK_KINDS

_VERDICTS = {0: "clean", 1: "discrepancies found", 2: "a source could not be read"}


@dataclass
class ReconcileReport:
    window: Window
    account: BillingAccount | None
    apply: bool
    litellm_checked: bool
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    remaining: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    items: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[dict[str, str]] = field(default_factory=list)
    spend_log_rows: int = 0
    backfill: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    # Seconds per phase (read_litellm, compare_litellm, books, backfill, collect).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 clean, 1 discrepancies left (after --apply), 2 a source could not be read."""
        if self.errors:
            return 2
        return 1 if any(self.remaining.values()) else 0

    @property
    def outcome(self) -> str:
        return {0: "clean", 1: "discrepancies", 2: "source_error"}[self.exit_code]

    def summary(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "window": self.window.as_dict(),
            "found": {k: v for k, v in self.found.items() if v},
            "remaining": {k: v for k, v in self.remaining.items() if v},
            "errors": self.errors,
            "backfill": self.backfill,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.as_dict(),
            "account": str(self.account.public_id) if self.account else None,
            "apply": self.apply,
            "litellm_checked": self.litellm_checked,
            "spend_log_rows": self.spend_log_rows,
            "found": self.found,
            "remaining": self.remaining,
            "backfill": self.backfill,
            "errors": self.errors,
            "discrepancies": self.items,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "duration_seconds": round(self.duration_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def collect(cursor: Any, report: ReconcileReport, limit: int) -> None:
    """Count every kind in reconcile_found and read its first `limit` items into the report."""
    cursor.execute("SELECT kind, count(*), count(*) FILTER (WHERE NOT healed) FROM reconcile_found GROUP BY kind")
    for kind, found, remaining in cursor.fetchall():
        report.found[kind] = found
        report.remaining[kind] = remaining
    cursor.execute(
        """
        SELECT kind, healed, detail::text FROM (
            SELECT kind, healed, detail, row_number() OVER (PARTITION BY kind ORDER BY at NULLS FIRST, ref) AS n
              FROM reconcile_found) f
         WHERE n <= %s ORDER BY kind, n
        """,
        [limit],
    )
    for kind, healed, detail in cursor.fetchall():
        item = {"kind": kind, **loads_exact(detail)}
        if report.apply and kind == "missing_receipt":
            item["backfilled"] = healed
        report.items[kind].append(item)


def as_json(report: ReconcileReport) -> str:
    """The machine-readable report (`reconcile --json`); money keeps its digits."""
    return dumps_exact(report.as_dict())


def as_text(report: ReconcileReport, style: Style) -> Iterator[str]:
    """The report for a person, line by line (`reconcile` without --json)."""
    window = report.window.as_dict()
    mode = "apply" if report.apply else "dry run"
    scope = f", account {report.account.public_id}" if report.account else ""
    yield f"Reconcile {window['since']} .. {window['until']} ({mode}{scope})"
    if report.litellm_checked:
        yield f"LiteLLM spend-log rows read: {report.spend_log_rows}"
    else:
        yield "LiteLLM spend logs: not checked (--books-only)"
    for error in report.errors:
        yield style.ERROR(f"source {error['source']} could not be read: {error['reason']}")
    yield f"{'kind':<20} {'found':>8} {'remaining':>10}"
    for kind in KINDS:
        yield f"{kind:<20} {report.found[kind]:>8} {report.remaining[kind]:>10}"
    if report.backfill:
        yield "backfill: " + ", ".join(f"{k} {v}" for k, v in report.backfill.items())
    for kind in KINDS:
        items = report.items[kind]
        if not items:
            continue
        shown = f" (first {len(items)})" if len(items) < report.found[kind] else ""
        yield f"\n{kind}{shown}:"
        for item in items:
            detail = {k: v for k, v in item.items() if k != "kind" and v is not None}
            yield "  " + dumps_exact(detail)
    painted = style.SUCCESS if report.exit_code == 0 else style.ERROR
    verdict = _VERDICTS[report.exit_code]
    yield painted(f"\nResult: {verdict} (exit {report.exit_code}) in {report.duration_seconds:.1f}s")
