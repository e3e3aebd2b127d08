from django.apps import AppConfig


class BillingProjectConfig(AppConfig):
    """The project itself as an app: its checks and the commands that span apps (billing_worker, billing_demo)."""

    name = "billing_project"
    verbose_name = "Billing service"

    def ready(self) -> None:
        from billing_project import checks  # noqa: F401  (registers the secret checks)
