from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Billing accounts and credit ledger"

    def ready(self) -> None:
        from billing_project import checks  # noqa: F401  (registers the secret checks)
