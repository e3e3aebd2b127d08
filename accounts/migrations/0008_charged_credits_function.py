"""billing_charged_credits(): the money rounding as a SQL function (sql/0008_charged_credits_function.sql)."""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_payers_and_holds_moved")]

    operations = [sql_file(__file__, "0008_charged_credits_function")]
