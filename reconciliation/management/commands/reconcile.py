"""`python manage.py reconcile`: compare receipts with LiteLLM's spend logs and the books with themselves.

Exit status: 0 clean, 1 discrepancies (what is left after --apply), 2 a source could not be read.
The checks and kinds are described in reconciliation/checks.py and reconciliation/sql/.
"""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from billing_project.exactjson import dumps_exact
from integrations.litellm.client import LiteLLMError
from reconciliation.report import as_json, as_text
from reconciliation.runs import RunNotFound, reconcile_run
from reconciliation.selectors import resolve_account
from reconciliation.services import reconcile
from reconciliation.window import ReconcileInputError, parse_moment, window_from_options


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
        parser.add_argument(
            "--run",
            metavar="RUN_ID",
            help=(
                "reconcile one registered run: read its attempts' calls from LiteLLM and backfill what is missing "
                "(always applied, like POST /api/internal/billing/runs/<run_id>/reconcile; --since/--until narrow "
                "the window, default from a day before the registration to now)"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["run"] is not None:
            self._reconcile_run(options)
            return
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

    def _reconcile_run(self, options: dict[str, Any]) -> None:
        """--run: exit 0 clean, 1 discrepancies left, 2 unknown run, bad window or LiteLLM unreadable."""
        try:
            since = parse_moment(options["since"]) if options["since"] else None
            until = parse_moment(options["until"]) if options["until"] else None
            result = reconcile_run(run_id=options["run"], since=since, until=until)
        except (RunNotFound, ReconcileInputError) as exc:
            self.stderr.write(f"reconcile: {exc}")
            sys.exit(2)
        except LiteLLMError as exc:
            self.stderr.write(f"reconcile: LiteLLM's spend logs could not be read: {exc}")
            sys.exit(2)
        except DatabaseError as exc:
            self.stderr.write(f"reconcile: the database could not be read: {exc}")
            sys.exit(2)
        if options["json"]:
            self.stdout.write(dumps_exact(result.as_dict()))
        else:
            window = result.window.as_dict()
            self.stdout.write(f"Reconcile run {result.run_id!r} {window['since']} .. {window['until']}")
            self.stdout.write(f"end users read: {', '.join(result.end_users)}")
            self.stdout.write(f"LiteLLM spend-log rows: {result.spend_log_rows}")
            self.stdout.write(
                f"receipts {result.receipts}, backfilled {result.backfilled}, "
                f"charged_credits {result.charged_credits}, billed elsewhere {result.receipts_billed_elsewhere}"
            )
            for item in result.discrepancies:
                self.stdout.write("  " + dumps_exact(item))
            painted = self.style.SUCCESS if not result.discrepancies else self.style.ERROR
            self.stdout.write(painted(f"Result: {result.outcome} ({len(result.discrepancies)} discrepancies)"))
        sys.exit(1 if result.discrepancies else 0)
