from django.apps import AppConfig


class ReceiptsConfig(AppConfig):
    name = "receipts"
    verbose_name = "Charge receipts"

    def ready(self) -> None:
        from receipts import receivers  # noqa: F401 - connects the signal receivers
