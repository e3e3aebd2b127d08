from django.apps import AppConfig

# Registered with the app, as receipts' metrics are, so /metrics names them before the first run.
from reconciliation import metrics  # noqa: F401


class ReconciliationConfig(AppConfig):
    name = "reconciliation"
    verbose_name = "Reconciliation"
