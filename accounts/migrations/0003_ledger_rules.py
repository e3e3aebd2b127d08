"""The database enforces the money rules, so raw SQL cannot bypass them.

- Appending a ledger entry moves the account balance in the same statement
  and records balance_after (LEDGER_IS_AUTHORITATIVE); its id is drawn under
  the account lock, so per account, id order is the balance_after chain.
- balance_credits cannot change any other way, and a new account starts at 0.
- Ledger entries and charge receipts refuse UPDATE and DELETE (LEDGER_APPEND_ONLY).
- A usage entry debits exactly its receipt's charged_credits from the receipt's account.
"""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_initial"),
        ("receipts", "0001_initial"),
    ]

    operations = [sql_file(__file__, "0003_ledger_rules")]
