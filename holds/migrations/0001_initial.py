"""Credit holds move from accounts to holds: state only, the table keeps its name (no data moves).

accounts.0007_payers_and_holds_moved drops it from accounts' state once this exists.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0006_held_total"),
        ("receipts", "0008_receipt_provisional_cost"),
    ]

    state_operations = [
        migrations.CreateModel(
            name="CreditHold",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hold_id", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("litellm_call_id", models.CharField(max_length=255, unique=True)),
                ("model", models.CharField(blank=True, default="", max_length=255)),
                (
                    "payer_source",
                    models.CharField(
                        choices=[
                            ("key", "API key"),
                            ("team", "Team"),
                            ("run", "Registered run"),
                            ("end_user", "End-user alias"),
                        ],
                        max_length=16,
                    ),
                ),
                ("estimated_cost_usd", models.DecimalField(decimal_places=30, max_digits=48)),
                ("held_credits", models.BigIntegerField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("held", "Held"),
                            ("settled", "Settled"),
                            ("released", "Released"),
                            ("expired", "Expired"),
                        ],
                        default="held",
                        max_length=16,
                    ),
                ),
                ("expires_at", models.DateTimeField()),
                ("created_at", models.DateTimeField()),
                ("settled_at", models.DateTimeField(blank=True, null=True)),
                ("closed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="credit_holds",
                        to="accounts.billingaccount",
                    ),
                ),
                (
                    "receipt",
                    models.OneToOneField(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="credit_hold",
                        to="receipts.chargereceipt",
                    ),
                ),
            ],
            options={
                "db_table": "accounts_credithold",
                "ordering": ["-id"],
                "indexes": [
                    models.Index(
                        condition=models.Q(("status", "held")),
                        fields=["account", "expires_at"],
                        name="credithold_open_by_account",
                    ),
                    models.Index(
                        condition=models.Q(("status", "held")), fields=["expires_at"], name="credithold_open_by_expiry"
                    ),
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("held_credits__gte", 0)), name="credithold_held_not_negative"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("estimated_cost_usd__gte", 0)), name="credithold_estimate_not_negative"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["held", "settled", "released", "expired"])),
                        name="credithold_status_known",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("status", "settled"), _negated=True),
                            models.Q(("receipt__isnull", False), ("settled_at__isnull", False)),
                            _connector="OR",
                        ),
                        name="credithold_settled_has_receipt",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("status__in", ["released", "expired"]), _negated=True),
                            ("closed_at__isnull", False),
                            _connector="OR",
                        ),
                        name="credithold_closed_has_time",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("litellm_call_id", ""), _negated=True), name="credithold_call_id_not_empty"
                    ),
                ],
            },
        ),
    ]

    operations = [migrations.SeparateDatabaseAndState(state_operations=state_operations, database_operations=[])]
