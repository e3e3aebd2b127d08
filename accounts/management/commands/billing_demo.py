import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import BillingAccount, EndUserAlias
from accounts.services import billing_account_create, end_user_alias_create, grant_credits

DEMO_GRANT_KEY = "demo-initial-grant"


def _password(name: str) -> str:
    """A generated password, kept under .data/ so it stays the same across runs."""
    path = Path(settings.BASE_DIR) / ".data" / f"{name}-password"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


class Command(BaseCommand):
    help = "Create (once) an admin login and a demo account with credits, and print how to use them."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        admin_password = _password("admin")
        admin, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
            admin.set_password(admin_password)
            admin.save()
        demo_password = _password("demo")
        demo, created = User.objects.get_or_create(username="demo")
        if created:
            demo.set_password(demo_password)
            demo.save()
        account = BillingAccount.objects.filter(owner=demo).first() or billing_account_create(
            name="Demo account", owner=demo
        )
        if not EndUserAlias.objects.filter(end_user="demo-user").exists():
            end_user_alias_create(account=account, end_user="demo-user")
        grant_credits(
            account=account,
            amount_credits=10_000_000,
            reason="grant",
            idempotency_key=DEMO_GRANT_KEY,
            memo="demo credits from bin/run",
        )
        account.refresh_from_db()
        admin_shown = admin_password if admin.check_password(admin_password) else "(changed)"
        demo_shown = demo_password if demo.check_password(demo_password) else "(changed)"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  admin login:   http://127.0.0.1:8000/admin/   admin / {admin_shown}",
                    f"  demo invoice:  http://127.0.0.1:8000/billing/invoice/   demo / {demo_shown}",
                    f"  demo account:  {account.public_id} (end user 'demo-user'),"
                    f" balance {account.balance_credits} credits",
                    "  ingest:        POST http://127.0.0.1:8000/api/internal/billing/ingest",
                    "                 Authorization: Bearer $BILLING_INGEST_TOKEN (in .env)",
                    "",
                ]
            )
        )
