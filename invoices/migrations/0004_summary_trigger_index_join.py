"""`billing_ledger_summarise_statement()` looks each new entry's receipt up by its primary key.

PL/pgSQL caches a trigger's plan, and a plan made for a 512-entry statement joins the transition table to
receipts with a hash join over every receipt: a one-entry statement then scanned the whole receipts table
(89 ms per single-record POST at 150,000 receipts; bench/ingest.py, "Where one POST goes"). The receipt is now
read in a LATERAL subquery with OFFSET 0, which the planner may not pull up into a join: always one
primary-key lookup per entry, whatever the plan cache holds. Same numbers and the same trigger
(`ledger_summarise_statement`); the reverse restores 0003's function body.
"""

from django.db import migrations

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [("invoices", "0003_payer_summary_statement_trigger")]

    operations = [sql_file(__file__, "0004_summary_trigger_index_join")]
