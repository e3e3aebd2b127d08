"""`python manage.py reconcile`: compare receipts with LiteLLM's spend logs and the books with themselves.

Exit status: 0 clean, 1 discrepancies (what is left after --apply), 2 a source could not be read.
The checks and kinds are described in reconciliation/checks.py and reconciliation/sql/.
"""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from reconciliation.report import as_json, as_text
from reconciliation.selectors import resolve_account
from reconciliation.services import reconcile
from reconciliation.window import ReconcileInputError, window_from_options


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
            report = reconcile(
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
            self.stdout.write(as_json(report))
            for error in report.errors:
                self.stderr.write(f"reconcile: {error['source']} could not be read: {error['reason']}")
        else:
            for line in as_text(report, self.style):
                self.stdout.write(line)
        sys.exit(report.exit_code)
