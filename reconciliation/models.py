from django.db import models


class ReconcileRun(models.Model):
    """What each reconcile run found (the staff dashboard's "last reconcile"); one row per run, kept."""

    finished_at = models.DateTimeField(db_index=True)
    outcome = models.CharField(max_length=16)  # clean, discrepancies, source_error (ReconcileReport.outcome)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    litellm_checked = models.BooleanField(default=False)
    applied = models.BooleanField(default=False)
    duration_seconds = models.FloatField()
    # ReconcileReport.summary(): found, remaining, errors, backfill.
    summary = models.JSONField()

    class Meta:
        ordering = ["-finished_at", "-id"]

    def __str__(self) -> str:
        return f"reconcile {self.finished_at:%Y-%m-%d %H:%M} {self.outcome}"
