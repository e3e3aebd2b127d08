import sys

from django.apps import AppConfig

# Python's default. Deep JSON must fail as RecursionError (the record is refused, the process lives);
# py_ecc and py-evm, imported by web3 and eth-tester, raise the limit to 100,000 for the whole process,
# where a hostile body nested that deep would overflow the C stack instead.
RECURSION_LIMIT = 1000


def keep_recursion_limit() -> None:
    """Put the interpreter's recursion limit back to the service's own (after imports that raise it)."""
    sys.setrecursionlimit(RECURSION_LIMIT)


class BillingProjectConfig(AppConfig):
    """The project itself as an app: its checks and the commands that span apps (billing_worker, billing_demo)."""

    name = "billing_project"
    verbose_name = "Billing service"

    def ready(self) -> None:
        from billing_project import checks  # noqa: F401  (registers the secret checks)

        # Every app's modules are imported by now (admin autodiscovery included), web3 among them.
        keep_recursion_limit()
