"""Index receipts by the call's time (startTime, else created_at): reconcile reads a window's receipts by it.

Built CONCURRENTLY so adding it to a large receipts table does not block ingest.
"""

import django.db.models.functions.comparison
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("receipts", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="chargereceipt",
            index=models.Index(
                django.db.models.functions.comparison.Coalesce("started_at", "created_at"), name="receipt_call_time"
            ),
        ),
    ]
