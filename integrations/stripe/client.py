"""Every call to Stripe, through the official `stripe` library (README, "Customers pay").

STRIPE_API_BASE points the library at Stripe's API (the default) or at a loopback stand-in that answers
Stripe's documented JSON (the tests). Webhook signatures are checked by the library's own verifier against
each secret of STRIPE_WEBHOOK_SECRET in turn (comma-separated, so a secret can be rotated without a gap).
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings

from billing_project.exactjson import loads_exact

# Stripe's webhook tolerance: a signature older than this is refused (a replayed delivery).
SIGNATURE_TOLERANCE_SECONDS = 300


class StripeNotConfigured(Exception):
    """STRIPE_SECRET_KEY is not set: no Checkout can be opened."""


class StripeUnavailable(Exception):
    """Stripe (or its stand-in) did not answer a request."""


class CardDeclined(Exception):
    """Stripe refused to charge a saved card (declined, expired, needs the customer: authentication_required)."""


class BadSignature(Exception):
    """A webhook delivery whose Stripe-Signature does not verify (missing, wrong, stale or malformed)."""


@dataclass(frozen=True)
class CheckoutSession:
    session_id: str
    url: str
    payment_intent: str


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise StripeNotConfigured("STRIPE_SECRET_KEY is not set")
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=2,
    )


def is_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def create_checkout_session(
    *,
    amount_cents: int,
    reference: str,
    description: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
    save_card: bool = False,
) -> CheckoutSession:
    """A Checkout Session (mode=payment) for one USD line item; `reference` is the payment attempt's public id.

    `save_card` keeps the card for off-session charges (auto-recharge): a Customer is created and the
    PaymentIntent set up for future off-session use.
    """
    intent: dict[str, Any] = {"metadata": {"payment_attempt": reference}}
    extra: dict[str, Any] = {}
    if save_card:
        intent["setup_future_usage"] = "off_session"
        extra["customer_creation"] = "always"
    try:
        session = _client().v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": amount_cents,
                            "product_data": {"name": description},
                        },
                    }
                ],
                "client_reference_id": reference,
                "metadata": {"payment_attempt": reference},
                "payment_intent_data": intent,
                "success_url": success_url,
                "cancel_url": cancel_url,
                **extra,
            },
            options={"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe refused to open a Checkout: {exc.user_message or exc}") from exc
    return CheckoutSession(session_id=session.id, url=session.url or "", payment_intent=session.payment_intent or "")


def session_for_payment_intent(payment_intent: str) -> str | None:
    """The Checkout Session id that created a PaymentIntent (a refund or dispute can arrive before the session's
    own completion event), or None."""
    try:
        page = _client().v1.checkout.sessions.list(params={"payment_intent": payment_intent, "limit": 1})
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe did not answer a Checkout Session lookup: {exc}") from exc
    return page.data[0].id if page.data else None


@dataclass(frozen=True)
class SavedCard:
    customer: str
    payment_method: str


def saved_card_of(payment_intent: str) -> SavedCard | None:
    """The customer and card a paid PaymentIntent used (what an auto-recharge charges later), or None."""
    try:
        intent = _client().v1.payment_intents.retrieve(payment_intent)
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe did not answer a PaymentIntent lookup: {exc}") from exc
    values = intent.to_dict()
    customer, method = values.get("customer"), values.get("payment_method")
    return SavedCard(customer=str(customer), payment_method=str(method)) if customer and method else None


def charge_saved_card(*, card: SavedCard, amount_cents: int, reference: str, idempotency_key: str) -> str:
    """Charge a saved card off-session (confirmed at once); the PaymentIntent id when it succeeded.

    Raises CardDeclined when Stripe refuses the card, StripeUnavailable when it cannot be reached or the
    payment did not complete.
    """
    try:
        intent = _client().v1.payment_intents.create(
            params={
                "amount": amount_cents,
                "currency": "usd",
                "customer": card.customer,
                "payment_method": card.payment_method,
                "off_session": True,
                "confirm": True,
                "metadata": {"payment_attempt": reference},
            },
            options={"idempotency_key": idempotency_key},
        )
    except stripe.CardError as exc:
        raise CardDeclined(exc.user_message or str(exc)) from exc
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe did not charge the saved card: {exc}") from exc
    if intent.status != "succeeded":
        raise StripeUnavailable(f"the off-session payment is {intent.status}, not succeeded")
    return str(intent.id)


def verified_event(*, payload: bytes, signature: str) -> dict[str, Any]:
    """The event a delivery carries, once its Stripe-Signature verifies against one of the configured secrets."""
    secrets = [s.strip() for s in settings.STRIPE_WEBHOOK_SECRET.split(",") if s.strip()]
    if not secrets:
        raise BadSignature("STRIPE_WEBHOOK_SECRET is not set: no delivery can be verified")
    if not signature:
        raise BadSignature("the Stripe-Signature header is missing")
    text = payload.decode("utf-8", "replace")
    problem = "no secret matched"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature, secret, SIGNATURE_TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            problem = str(exc.user_message or exc)
            continue
        try:
            event = loads_exact(text, constants="refuse")
        except ValueError as exc:
            raise BadSignature(f"the signed body is not JSON: {exc}") from exc
        if not isinstance(event, dict):
            raise BadSignature("the signed body is not a JSON object")
        return event
    raise BadSignature(f"the Stripe-Signature does not verify: {problem}")


def usd_cents(amount: Decimal) -> int:
    """Stripe's amounts are integer cents; a purchase amount has at most 2 decimals (checked before)."""
    return int((amount * 100).to_integral_value())
