"""`python manage.py reconcile`: compare receipts with LiteLLM's spend logs and the books with themselves.

Exit status: 0 clean, 1 discrepancies (what is left after --apply), 2 a source could not be read.
The checks and kinds are described in receipts/reconcile.py.
"""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from receipts.exactjson import dumps_exact
from receipts.reconcile import (
    KINDS,
    ReconcileInputError,
    ReconcileReport,
    resolve_account,
    run_reconcile,
    window_from_options,
)


class Command(BaseCommand):
    help = (
        "Reconcile receipts with LiteLLM's spend logs (missing_receipt, cost_mismatch, unknown_to_litellm) "
        "and check the books (balance_drift, orphan_usage, credits_mismatch, summary_drift, invoice_identity) "
        "for a window (default: the previous UTC day). A dry run unless --apply. "
        "Exit 0 clean, 1 discrepancies, 2 a source could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="start of the window: YYYY-MM-DD or an ISO 8601 datetime (UTC)")
        parser.add_argument("--until", help="end of the window (exclusive), same forms")
        parser.add_argument("--account", help="only this billing account (public UUID or id)")
        parser.add_argument(
            "--apply",
            action="store_true",
            help="backfill missing receipts through commit_usage_facts() (default: dry run, changes nothing)",
        )
        parser.add_argument("--json", action="store_true", help="print a machine-readable report")
        parser.add_argument(
            "--books-only", action="store_true", help="skip LiteLLM's spend logs; only the in-book checks"
        )
        parser.add_argument("--limit", type=int, default=None, help="discrepancies listed per kind (all are counted)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            window = window_from_options(since=options["since"], until=options["until"])
            account = resolve_account(options["account"]) if options["account"] else None
        except ReconcileInputError as exc:
            self.stderr.write(f"reconcile: {exc}")
            sys.exit(2)
        try:
            report = run_reconcile(
                window=window,
                account=account,
                apply=options["apply"],
                include_litellm=not options["books_only"],
                progress=sys.stderr.isatty(),
                report_limit=options["limit"],
            )
        except DatabaseError as exc:
            self.stderr.write(f"reconcile: the database could not be read: {exc}")
            sys.exit(2)
        if options["json"]:
            self.stdout.write(dumps_exact(report.as_dict()))
            for error in report.errors:
                self.stderr.write(f"reconcile: {error['source']} could not be read: {error['reason']}")
        else:
            self._print(report)
        sys.exit(report.exit_code)

    def _print(self, report: ReconcileReport) -> None:
        out = self.stdout
        window = report.window.as_dict()
        mode = "apply" if report.apply else "dry run"
        scope = f", account {report.account.public_id}" if report.account else ""
        out.write(f"Reconcile {window['since']} .. {window['until']} ({mode}{scope})")
        if report.litellm_checked:
            out.write(f"LiteLLM spend-log rows read: {report.spend_log_rows}")
        else:
            out.write("LiteLLM spend logs: not checked (--books-only)")
        for error in report.errors:
            out.write(self.style.ERROR(f"source {error['source']} could not be read: {error['reason']}"))
        out.write(f"{'kind':<20} {'found':>8} {'remaining':>10}")
        for kind in KINDS:
            out.write(f"{kind:<20} {report.found[kind]:>8} {report.remaining[kind]:>10}")
        if report.backfill:
            out.write("backfill: " + ", ".join(f"{k} {v}" for k, v in report.backfill.items()))
        for kind in KINDS:
            items = report.items[kind]
            if not items:
                continue
            shown = f" (first {len(items)})" if len(items) < report.found[kind] else ""
            out.write(f"\n{kind}{shown}:")
            for item in items:
                detail = {k: v for k, v in item.items() if k != "kind" and v is not None}
                out.write("  " + dumps_exact(detail))
        verdict = {0: "clean", 1: "discrepancies found", 2: "a source could not be read"}[report.exit_code]
        style = self.style.SUCCESS if report.exit_code == 0 else self.style.ERROR
        out.write(style(f"\nResult: {verdict} (exit {report.exit_code}) in {report.duration_seconds:.1f}s"))
