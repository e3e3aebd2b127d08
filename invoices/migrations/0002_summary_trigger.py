"""Keep LedgerDailySummary in step with the ledger, inside the ledger's own INSERT."""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("invoices", "0001_initial"),
        ("accounts", "0003_ledger_rules"),
        ("receipts", "0001_initial"),
    ]

    operations = [sql_file(__file__, "0002_summary_trigger")]
