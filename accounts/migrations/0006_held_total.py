"""The open holds' total with the account: BillingAccount.held_credits, kept by a trigger on the holds.

The SQL (triggers documented by name) is in sql/0006_held_total.sql, its reverse beside it.
"""

from django.db import migrations, models

from billing_project.migration_sql import sql_file


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
        sql_file(__file__, "0006_held_total"),
    ]
