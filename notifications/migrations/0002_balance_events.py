"""The ledger decides balance events: the trigger ledger_balance_events writes them to the outbox.

The SQL (documented by name) is in sql/0002_balance_events.sql, its reverse beside it.
"""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial")]

    operations = [sql_file(__file__, "0002_balance_events")]
