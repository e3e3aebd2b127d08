"""The receipts' rate CHECK uses the one SQL rounding (sql/0009_rate_check_by_function.sql)."""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("receipts", "0008_receipt_provisional_cost"),
        ("accounts", "0008_charged_credits_function"),
    ]

    operations = [sql_file(__file__, "0009_rate_check_by_function")]
