"""The payer bindings move from accounts to payers: state only, the tables keep their names (no data moves).

accounts.0007_payers_and_holds_moved drops them from accounts' state once this and holds.0001 exist.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0006_held_total"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    state_operations = [
        migrations.CreateModel(
            name="ApiKeyBinding",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key_hash", models.CharField(max_length=255, unique=True)),
                (
                    "is_gateway",
                    models.BooleanField(
                        default=False,
                        help_text="A trusted server's key: its records bill the registered run or end-user alias they name.",
                    ),
                ),
                ("label", models.CharField(blank=True, default="", max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="key_bindings",
                        to="accounts.billingaccount",
                    ),
                ),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name": "API key binding",
                "db_table": "accounts_apikeybinding",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("key_hash", ""), _negated=True), name="apikeybinding_key_hash_not_empty"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="TeamBinding",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("team_id", models.CharField(max_length=255, unique=True)),
                ("label", models.CharField(blank=True, default="", max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="team_bindings",
                        to="accounts.billingaccount",
                    ),
                ),
            ],
            options={
                "verbose_name": "team binding",
                "db_table": "accounts_teambinding",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("team_id", ""), _negated=True), name="teambinding_team_id_not_empty"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="RunBinding",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("run_id", models.CharField(max_length=255, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="run_bindings",
                        to="accounts.billingaccount",
                    ),
                ),
            ],
            options={
                "verbose_name": "run binding",
                "db_table": "accounts_runbinding",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("run_id", ""), _negated=True), name="runbinding_run_id_not_empty"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("run_id__regex", "[[:cntrl:]]"), _negated=True),
                        name="runbinding_run_id_printable",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="EndUserAlias",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("end_user", models.CharField(max_length=255, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="aliases",
                        to="accounts.billingaccount",
                    ),
                ),
            ],
            options={"verbose_name_plural": "end user aliases", "db_table": "accounts_enduseralias"},
        ),
    ]

    operations = [migrations.SeparateDatabaseAndState(state_operations=state_operations, database_operations=[])]
