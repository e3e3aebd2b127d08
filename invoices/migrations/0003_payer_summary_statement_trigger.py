"""The invoice summaries, kept by one statement-level trigger on the ledger.

Triggers (all in sql/0003_payer_summary_statement_trigger.sql, the reverse beside it):

- `ledger_summarise_statement` (AFTER INSERT ... FOR EACH STATEMENT on
  accounts_creditledgerentry, `REFERENCING NEW TABLE AS new_entries`, function
  `billing_ledger_summarise_statement()`): once per INSERT statement, groups the
  statement's new entries joined once to their receipts and upserts (one SQL statement)
  - invoices_ledgerdailysummary: one row per (account, UTC day, reason, model group),
  - invoices_ledgerpayersummary: one row per (account, UTC day, API key hash, end user),
    usage entries only (the receipt's key, alias and end user),
  in sorted key order. A 512-entry batch costs one upsert per group instead of one
  per entry. It replaces the row-level `ledger_summarise` of migration 0002
  (same numbers; the reverse puts the row-level trigger back).
- `summary_guard` (0002) and `payer_summary_guard` (here), BEFORE INSERT OR UPDATE
  OR DELETE on each summary, function `billing_summary_guard()`: only the ledger
  trigger (trigger depth ≥ 2) may write a summary; a direct write is refused.

Existing ledger rows are summarised into the new payer summary here, under a
SHARE lock on the ledger, so no entry lands between the backfill and the trigger.
"""

import django.db.models.deletion
from django.db import migrations, models

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_payer_bindings"),
        ("invoices", "0002_summary_trigger"),
        ("receipts", "0005_payer_source"),
    ]

    operations = [
        migrations.CreateModel(
            name="LedgerPayerSummary",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField()),
                ("api_key_hash", models.CharField(blank=True, default="", max_length=255)),
                ("end_user", models.CharField(blank=True, default="", max_length=255)),
                ("api_key_alias", models.CharField(blank=True, default="", max_length=255)),
                ("entries", models.BigIntegerField(default=0)),
                ("amount_credits", models.BigIntegerField(default=0)),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("completion_tokens", models.BigIntegerField(default=0)),
                ("total_tokens", models.BigIntegerField(default=0)),
                ("cost_usd", models.DecimalField(decimal_places=30, default=0, max_digits=54)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="accounts.billingaccount"
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "ledger payer summaries",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("account", "day", "api_key_hash", "end_user"), name="payer_summary_unique_bucket"
                    )
                ],
            },
        ),
        sql_file(__file__, "0003_payer_summary_statement_trigger"),
    ]
