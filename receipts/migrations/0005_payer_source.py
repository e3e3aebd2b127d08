"""Receipts record which binding decided the payer; deferrals keep what LiteLLM logged about the caller.

Receipts billed before payer bindings existed were billed by their end-user alias: they get `end_user`.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_payer_bindings"),
        ("receipts", "0004_delivery_storage_receipt_rate"),
    ]

    operations = [
        migrations.AddField(
            model_name="chargereceipt",
            name="payer_source",
            field=models.CharField(
                choices=[
                    ("key", "API key"),
                    ("team", "Team"),
                    ("run", "Registered run"),
                    ("end_user", "End-user alias"),
                ],
                default="end_user",
                max_length=16,
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="api_key_hash",
            field=models.CharField(blank=True, db_index=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="team_id",
            field=models.CharField(blank=True, db_index=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="run_id",
            field=models.CharField(blank=True, db_index=True, default="", max_length=255),
        ),
    ]
