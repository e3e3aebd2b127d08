"""`bin/run`'s demo: an admin login, a demo account with credits, and a month of usage posted to the real
ingest endpoint, so the invoice page, its chart and the admin show something on first start.

The usage (integrations/litellm/demo.py) comes from LiteLLM's master key, bound here as a
gateway key to a "Gateway operator" account, with aliases that make the demo end
users bill the demo account: the records go through authentication, the delivery
store, judging, the payer resolver and the one writer like any LiteLLM delivery.
Re-running changes nothing: the logins, account, bindings and grant are created
once, and the month is posted only while its last delivery has not landed (the
call ids are fixed, so even --repost bills nothing twice).
"""

import logging
import secrets
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import BillingAccount, LedgerReason
from accounts.money import credits_per_usd, purchased_credits
from accounts.services import billing_account_create, grant_credits
from billing_project.api import scope_token
from billing_project.scopes import TokenScope
from integrations.litellm.demo import DAYS, END_USERS, UNBOUND_END_USER, delivery_body, demo_calls
from integrations.litellm.keys import LITELLM_MASTER_KEY_HASH
from payers.models import ApiKeyBinding, EndUserAlias
from payers.services import api_key_binding_create, end_user_alias_create
from payments.models import AttemptStatus, PaymentAttempt, Provider
from payments.services import apply_stripe_event

DEMO_GRANT_KEY = "demo-initial-grant"
DEMO_SESSION = "cs_demo_bin_run_purchase"
DEMO_PAYMENT_INTENT = "pi_demo_bin_run_purchase"
GATEWAY_ACCOUNT_NAME = "Gateway operator"


def _password(name: str) -> str:
    """A generated password, kept under .data/ so it stays the same across runs."""
    path = Path(settings.BASE_DIR) / ".data" / f"{name}-password"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


def _host() -> str:
    """A Host header the running settings accept (the ingest goes through the whole middleware stack)."""
    for host in settings.ALLOWED_HOSTS:
        if host != "*":
            return host.lstrip(".")
    return "localhost"


class Command(BaseCommand):
    help = (
        "Create (once) an admin login and a demo account with credits, post a month of demo LiteLLM usage "
        "through the ingest endpoint, and print how to use them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-usage", action="store_true", help="do not post the demo month of usage")
        parser.add_argument(
            "--repost",
            action="store_true",
            help="post the demo month even if it has landed before (idempotent: bills nothing twice)",
        )

    def handle(self, *args: object, **options: Any) -> None:
        admin, admin_password, demo, demo_password, account, gateway_ok = self._setup()
        usage_lines: list[str] = [self._demo_purchase(account=account, owner=demo)]
        if not options["no_usage"]:
            usage_lines += self._post_usage(gateway_ok=gateway_ok, repost=options["repost"])
        account.refresh_from_db()
        admin_shown = admin_password if admin.check_password(admin_password) else "(changed)"
        demo_shown = demo_password if demo.check_password(demo_password) else "(changed)"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  admin login:   http://127.0.0.1:8000/admin/   admin / {admin_shown}",
                    f"  demo invoice:  http://127.0.0.1:8000/billing/invoice/   demo / {demo_shown}",
                    f"  demo account:  {account.public_id} (end users {', '.join(END_USERS)}),"
                    f" balance {account.balance_credits} credits",
                    *usage_lines,
                    "  ingest:        POST http://127.0.0.1:8000/api/internal/billing/ingest",
                    "                 Authorization: Bearer $BILLING_INGEST_TOKEN (in .env)",
                    "",
                ]
            )
        )

    @transaction.atomic
    def _setup(self) -> tuple[Any, str, Any, str, BillingAccount, bool]:
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
        for end_user in END_USERS:
            if not EndUserAlias.objects.filter(end_user=end_user).exists():
                end_user_alias_create(account=account, end_user=end_user)
        grant_credits(
            account=account,
            amount_credits=10_000_000,
            reason=LedgerReason.GRANT,
            idempotency_key=DEMO_GRANT_KEY,
            memo="demo credits from bin/run",
        )
        return admin, admin_password, demo, demo_password, account, self._gateway()

    def _demo_purchase(self, *, account: BillingAccount, owner: Any) -> str:
        """One paid card purchase and a partial refund of it, through the same event handling as Stripe's
        webhooks (not stored as deliveries: no Stripe sent them), once."""
        if PaymentAttempt.objects.filter(provider_reference=DEMO_SESSION).exists():
            return "  demo purchase: made before (see /billing/credits/)"
        amount = Decimal("20.00")
        attempt = PaymentAttempt.objects.create(
            account=account,
            provider=Provider.STRIPE,
            amount_usd=amount,
            credits=purchased_credits(amount),
            credits_per_usd=credits_per_usd(),
            status=AttemptStatus.PENDING,
            provider_reference=DEMO_SESSION,
            payment_intent=DEMO_PAYMENT_INTENT,
            created_by=owner,
        )
        session = {
            "id": DEMO_SESSION,
            "object": "checkout.session",
            "amount_total": attempt.amount_cents,
            "currency": "usd",
            "payment_status": "paid",
            "payment_intent": DEMO_PAYMENT_INTENT,
            "client_reference_id": str(attempt.public_id),
            "metadata": {"payment_attempt": str(attempt.public_id)},
        }
        charge = {"object": "charge", "payment_intent": DEMO_PAYMENT_INTENT, "currency": "usd", "amount_refunded": 500}
        paid = apply_stripe_event(event={"type": "checkout.session.completed", "data": {"object": session}})
        refunded = apply_stripe_event(event={"type": "charge.refunded", "data": {"object": charge}})
        return f"  demo purchase: 20 USD by card ({paid.text}), 5 USD refunded ({refunded.text})"

    def _gateway(self) -> bool:
        """Bind LiteLLM's master key as a trusted gateway key (once); False if it is bound otherwise."""
        binding = ApiKeyBinding.objects.filter(key_hash=LITELLM_MASTER_KEY_HASH).first()
        if binding is not None:
            return binding.is_gateway
        operator = BillingAccount.objects.filter(name=GATEWAY_ACCOUNT_NAME, owner=None).first()
        api_key_binding_create(
            account=operator or billing_account_create(name=GATEWAY_ACCOUNT_NAME),
            key_hash=LITELLM_MASTER_KEY_HASH,
            is_gateway=True,
            label="LiteLLM master key (bin/run demo gateway)",
        )
        return True

    def _post_usage(self, *, gateway_ok: bool, repost: bool) -> list[str]:
        if not gateway_ok:
            return ["  demo usage:    skipped: LiteLLM's master key is bound as an ordinary key, not a gateway key"]
        if not settings.BILLING_INGEST_TOKEN:
            return ["  demo usage:    skipped: BILLING_INGEST_TOKEN is not set"]
        client = Client(HTTP_HOST=_host(), headers={"User-Agent": "bin/run billing_demo"})
        # Each endpoint with its own scope's token, as LiteLLM and an executor would call them.
        ingest_auth = {"Authorization": f"Bearer {scope_token(TokenScope.INGEST)}"}
        lookup_auth = {"Authorization": f"Bearer {scope_token(TokenScope.AUTHORIZE)}"}
        days = demo_calls()
        # The month's deliveries go in order: once the last one's first call is billed, all of them landed.
        request_log = logging.getLogger("django.request")
        level = request_log.level
        request_log.setLevel(logging.ERROR)  # the probe's 404 ("not billed yet") is the expected first answer
        try:
            probe = client.get(reverse("billing-receipt", args=[days[-1][0].litellm_call_id]), headers=lookup_auth)
        finally:
            request_log.setLevel(level)
        if probe.status_code == 200 and not repost:
            return ["  demo usage:    posted before (manage.py billing_demo --repost posts it again)"]
        now = timezone.now()
        totals: Counter[str] = Counter()
        for calls in days:
            response = client.post(
                reverse("billing-ingest"),
                data=delivery_body(calls, now=now),
                content_type="application/json",
                headers=ingest_auth,
            )
            if response.status_code != 200:
                raise CommandError(f"demo delivery refused: HTTP {response.status_code} {response.content[:500]!r}")
            totals.update({k: v for k, v in response.json().items() if isinstance(v, int)})
        calls_posted = sum(len(calls) for calls in days)
        return [
            f"  demo usage:    {calls_posted} LiteLLM calls over {DAYS} days posted to the ingest endpoint:"
            f" {totals['processed']} billed, {totals['duplicates']} already billed, {totals['deferred']} deferred",
            "                 (one unknown_cost; one unknown_payer: alias"
            f" '{UNBOUND_END_USER}' to an account in the admin to bill it)",
            "                 invoices date a charge by when it was billed, so this month's usage shows on today",
        ]
