"""Deliveries stored once; receipts keep audit fields, their delivery link and the rate they were charged at.

- IngestBatch keeps the body (zstd), the headers that matter, a status and the traceback of a failure.
- ChargeReceipt loses its per-receipt copy of the record (raw_record) and gains cost_breakdown, the link to
  its delivery and position (or spend-log row) and the rate it was charged at. Existing receipts get
  today's CREDITS_PER_USD and BILLING_MARKUP: the best knowledge there is of the rate they were charged at.
- receipt_charged_at_its_rate (CHECK, NOT VALID so that rows charged before at another rate are not
  re-judged): charged_credits = ceil(cost_usd × credits_per_usd × markup), exactly, in numeric.
- DeferredUsage keeps the judged fact (never the raw record), a learnt cost and its delivery link; the
  old stripped records stay in the renamed column and are judged again on retry.
- source_reference widens to 522 = run id 255 + "/" + attempt 10 + "/" + call id 255: it always fits.
"""

from decimal import Decimal

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from billing_project.migration_sql import sql_file


class Migration(migrations.Migration):
    dependencies = [
        ("receipts", "0003_receipt_exact_indexes"),
    ]

    operations = [
        migrations.RemoveField(model_name="chargereceipt", name="raw_record"),
        migrations.AddField(
            model_name="chargereceipt",
            name="batch_position",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="chargereceipt",
            name="cost_breakdown",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="chargereceipt",
            name="credits_per_usd",
            field=models.DecimalField(decimal_places=10, default=Decimal(settings.CREDITS_PER_USD), max_digits=30),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="chargereceipt",
            name="markup",
            field=models.DecimalField(decimal_places=10, default=Decimal(settings.BILLING_MARKUP), max_digits=20),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="chargereceipt",
            name="ingest_batch",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="receipts.ingestbatch",
            ),
        ),
        migrations.AddField(
            model_name="chargereceipt",
            name="spend_log_request_id",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AlterField(
            model_name="chargereceipt",
            name="source_reference",
            field=models.CharField(max_length=522),
        ),
        sql_file(__file__, "0004_receipt_rate_check"),
        migrations.RenameField(model_name="deferredusage", old_name="record", new_name="fact"),
        migrations.AlterField(
            model_name="deferredusage",
            name="fact",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="batch_position",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="ingest_batch",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="deferrals",
                to="receipts.ingestbatch",
            ),
        ),
        migrations.AddField(
            model_name="deferredusage",
            name="learnt_cost_usd",
            field=models.DecimalField(blank=True, decimal_places=30, max_digits=48, null=True),
        ),
        migrations.AlterField(
            model_name="deferredusage",
            name="reason",
            field=models.CharField(
                choices=[
                    ("unknown_cost", "Unknown cost"),
                    ("unknown_end_user", "Unknown end user"),
                    ("unknown_payer", "Unknown payer"),
                    ("invalid", "Invalid record"),
                    ("error", "Error while billing"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="deferredusage",
            name="source_reference",
            field=models.CharField(blank=True, max_length=522, null=True),
        ),
        migrations.AddField(
            model_name="ingestbatch",
            name="body",
            field=models.BinaryField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="ingestbatch",
            name="headers",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="ingestbatch",
            name="status",
            field=models.CharField(
                choices=[
                    ("received", "Received (not processed yet, or processing failed hard)"),
                    ("processed", "Processed"),
                    ("rejected", "Rejected (body unusable)"),
                    ("failed", "Failed (see error and traceback)"),
                ],
                default="received",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="ingestbatch",
            name="traceback",
            field=models.TextField(blank=True, default=""),
        ),
    ]
