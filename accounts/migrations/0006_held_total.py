"""The open holds' total with the account: BillingAccount.held_credits, kept by a trigger on the holds.

The SQL (triggers documented by name) is in sql/0006_held_total.sql, its reverse beside it.
"""

from pathlib import Path

from django.db import migrations, models

SQL = Path(__file__).resolve().parent / "sql"


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_credit_holds")]

    operations = [
        migrations.AddField(
            model_name="billingaccount",
            name="held_credits",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddConstraint(
            model_name="billingaccount",
            constraint=models.CheckConstraint(
                condition=models.Q(held_credits__gte=0), name="account_held_not_negative"
            ),
        ),
        migrations.RunSQL((SQL / "0006_held_total.sql").read_text(), (SQL / "0006_held_total.reverse.sql").read_text()),
    ]
