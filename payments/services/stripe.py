"""Stripe Checkout purchases: open a Checkout, take every webhook delivery, settle its outcome once.

Money moves only through the ledger (accounts.services.grant_credits) with a payment reason and an
idempotency key derived from the Checkout Session id, so a paid session adds its credits once however many
times, in whatever order and however concurrently its events arrive. Each event locks its attempt's row
first (then the ledger locks the account), so two deliveries of one event are serialized.
"""

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts.models import BillingAccount, LedgerReason
from accounts.money import credits_per_usd, purchased_credits
from accounts.services import PAYMENT_REASONS, grant_credits
from billing_project.exactjson import loads_exact
from integrations.stripe.client import (
    BadSignature,
    StripeNotConfigured,
    StripeUnavailable,
    create_checkout_session,
    saved_card_of,
    session_for_payment_intent,
    usd_cents,
    verified_event,
)
from payments import metrics
from payments.exceptions import PaymentsUnavailable
from payments.models import (
    ALLOWED_TRANSITIONS,
    PAID_STATUSES,
    AttemptStatus,
    AutoRecharge,
    PaymentAttempt,
    Provider,
    ProviderEvent,
)
from payments.services.attempts import transition

logger = logging.getLogger(__name__)

# The request headers a stored delivery keeps (the signature is what was verified).
_KEPT_HEADERS = ("Stripe-Signature", "Content-Type", "User-Agent")


def stripe_purchase_start(
    *,
    account: BillingAccount,
    amount_usd: Decimal,
    created_by: AbstractBaseUser | None,
    return_url: Callable[[str], str],
    save_card: bool = False,
) -> PaymentAttempt:
    """Open a Checkout Session for `amount_usd`: the attempt is stored first, then Stripe is asked.

    `return_url(public id)` is the page Stripe sends the buyer back to (with ?cancelled=1 when they leave).
    If Stripe cannot be reached the attempt is kept as failed (with why) and PaymentsUnavailable is raised.
    """
    rate = credits_per_usd()
    attempt = PaymentAttempt.objects.create(
        account=account,
        provider=Provider.STRIPE,
        amount_usd=amount_usd,
        credits=purchased_credits(amount_usd),
        credits_per_usd=rate,
        save_card=save_card,
        created_by=created_by if created_by is not None and created_by.is_authenticated else None,
    )
    metrics.payment_attempts_total.labels(provider=Provider.STRIPE, status=AttemptStatus.CREATED).inc()
    reference = str(attempt.public_id)
    try:
        session = create_checkout_session(
            amount_cents=usd_cents(amount_usd),
            reference=reference,
            description=f"{attempt.credits:,} credits for {account.name}",
            success_url=return_url(reference),
            cancel_url=return_url(reference) + "?cancelled=1",
            idempotency_key=f"checkout-{reference}",
            save_card=save_card,
        )
    except (StripeNotConfigured, StripeUnavailable) as exc:
        with transaction.atomic():
            locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
            locked.failure_reason = str(exc)
            locked.save(update_fields=["failure_reason", "updated_at"])
            transition(locked, AttemptStatus.FAILED)
        raise PaymentsUnavailable(str(exc)) from exc
    with transaction.atomic():
        locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
        locked.provider_reference = session.session_id
        locked.checkout_url = session.url
        locked.payment_intent = session.payment_intent or None
        locked.save(update_fields=["provider_reference", "checkout_url", "payment_intent", "updated_at"])
        transition(locked, AttemptStatus.PENDING)
    return locked


# --- webhooks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripeOutcome:
    """What one event did (shown on its stored delivery), and to which attempt."""

    text: str
    attempt: PaymentAttempt | None = None


def stripe_delivery_receive(*, body: bytes, headers: dict[str, str]) -> ProviderEvent:
    """Store a Stripe webhook delivery (valid signature or not), then process it if its signature verifies.

    Processing failures keep their traceback on the stored event and are raised (Stripe retries a 5xx).
    """
    signature = headers.get("Stripe-Signature", "")
    try:
        event: dict[str, Any] | None = verified_event(payload=body, signature=signature)
        problem = ""
    except BadSignature as exc:
        event, problem = None, str(exc)
    stored = ProviderEvent.objects.create(
        provider=Provider.STRIPE,
        event_id=str(event.get("id", ""))[:255] if event else "",
        event_type=str(event.get("type", ""))[:100] if event else "",
        headers={name: headers[name][:1000] for name in _KEPT_HEADERS if name in headers},
        body=body.decode("utf-8", "replace"),
        signature_valid=event is not None,
        signature_error=problem,
    )
    if event is None:
        metrics.webhook_signature_failures_total.labels(provider=Provider.STRIPE).inc()
        return stored
    process_provider_event(event=stored)
    return stored


def process_provider_event(*, event: ProviderEvent) -> ProviderEvent:
    """(Re)process a stored, signature-verified event; idempotent, so staff may reprocess any delivery."""
    if not event.signature_valid:
        raise BadSignature("this delivery's signature did not verify: it is never processed")
    try:
        outcome = apply_stripe_event(event=loads_exact(event.body, constants="refuse"))
    except Exception as exc:
        ProviderEvent.objects.filter(pk=event.pk).update(
            error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-20000:]
        )
        metrics.provider_events_failed_total.labels(provider=event.provider).inc()
        raise
    event.outcome, event.attempt = outcome.text, outcome.attempt
    event.processed_at, event.error, event.traceback = timezone.now(), "", ""
    event.save(update_fields=["outcome", "attempt", "processed_at", "error", "traceback"])
    return event


@transaction.atomic
def apply_stripe_event(*, event: dict[str, Any]) -> StripeOutcome:
    """What a (verified) Stripe event does to its attempt and the ledger, once; also the demo's purchases."""
    return _dispatch(event)


def _dispatch(event: dict[str, Any]) -> StripeOutcome:
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object") or {}
    if kind == "checkout.session.completed":
        if obj.get("payment_status") == "paid":
            return _credit(obj)
        return StripeOutcome("completed, payment not settled yet (an async payment method): waiting")
    if kind == "checkout.session.async_payment_succeeded":
        return _credit(obj)
    if kind == "checkout.session.async_payment_failed":
        return _close(obj, AttemptStatus.FAILED)
    if kind == "checkout.session.expired":
        return _close(obj, AttemptStatus.EXPIRED)
    if kind == "payment_intent.succeeded":
        return _intent_paid(obj)
    if kind == "charge.refunded":
        return _refund(obj)
    if kind in ("charge.dispute.created", "charge.dispute.closed"):
        return _dispute(obj, opened=kind == "charge.dispute.created")
    return StripeOutcome(f"ignored: {kind!s:.60} is not an event this service acts on")


def _session_attempt(obj: dict[str, Any]) -> PaymentAttempt | None:
    """The attempt of a Checkout Session this service created (locked), or None for a foreign session."""
    named = str((obj.get("metadata") or {}).get("payment_attempt") or obj.get("client_reference_id") or "")
    attempt = PaymentAttempt.objects.select_for_update().filter(provider_reference=str(obj.get("id", ""))).first()
    return attempt if attempt is not None and str(attempt.public_id) == named else None


def _intent_attempt(payment_intent: str) -> PaymentAttempt | None:
    """The attempt a PaymentIntent paid (locked): by the intent, else by asking Stripe for its session."""
    if not payment_intent:
        return None
    attempt = PaymentAttempt.objects.select_for_update().filter(payment_intent=payment_intent).first()
    if attempt is None:
        session_id = session_for_payment_intent(payment_intent)
        attempt = (
            PaymentAttempt.objects.select_for_update().filter(provider_reference=session_id).first()
            if session_id
            else None
        )
        if attempt is not None and not attempt.payment_intent:
            attempt.payment_intent = payment_intent
            attempt.save(update_fields=["payment_intent", "updated_at"])
    return attempt


def _ledger_key(attempt: PaymentAttempt, *parts: object) -> str:
    return ":".join(("stripe", str(attempt.provider_reference), *(str(p) for p in parts)))


def _credit(obj: dict[str, Any]) -> StripeOutcome:
    attempt = _session_attempt(obj)
    if attempt is None:
        return StripeOutcome("no attempt of this service has this session: nothing credited")
    outcome = credit_paid_attempt(
        attempt=attempt,
        amount_cents=obj.get("amount_total"),
        currency=str(obj.get("currency") or "").lower(),
        payment_intent=str(obj.get("payment_intent") or ""),
    )
    if attempt.save_card and attempt.payment_intent and attempt.status in PAID_STATUSES:
        remember_saved_card(attempt=attempt)
    return outcome


def credit_paid_attempt(
    *, attempt: PaymentAttempt, amount_cents: object, currency: str, payment_intent: str
) -> StripeOutcome:
    """Credit a (locked) attempt that Stripe says was paid `amount_cents` in `currency`, once."""
    amount = amount_cents
    if amount != attempt.amount_cents or currency != attempt.currency:
        metrics.payment_mismatches_total.labels(provider=attempt.provider).inc()
        attempt.failure_reason = (
            f"paid {amount!r} {currency or '?'} (cents) for an attempt of {attempt.amount_cents} {attempt.currency}"
        )[:2000]
        attempt.save(update_fields=["failure_reason", "updated_at"])
        return StripeOutcome(
            f"amount or currency differs from the attempt: nothing credited ({attempt.failure_reason})", attempt
        )
    if attempt.status not in (AttemptStatus.CREATED, AttemptStatus.PENDING, *PAID_STATUSES):
        return StripeOutcome(f"ignored: the attempt is already {attempt.status}", attempt)
    if payment_intent and not attempt.payment_intent:
        attempt.payment_intent = payment_intent
        attempt.save(update_fields=["payment_intent", "updated_at"])
    result = grant_credits(
        account=attempt.account,
        amount_credits=attempt.credits,
        reason=LedgerReason.PURCHASE,
        idempotency_key=_ledger_key(attempt, "purchase"),
        memo=f"Stripe {attempt.get_kind_display()} {attempt.provider_reference}: {attempt.amount_usd} USD",
        reasons=PAYMENT_REASONS,
    )
    if attempt.status not in PAID_STATUSES:
        transition(attempt, AttemptStatus.SUCCEEDED)
    _settle_status(attempt)
    return StripeOutcome(f"credited {attempt.credits:,} credits" if result.created else "already credited", attempt)


def _intent_paid(intent: dict[str, Any]) -> StripeOutcome:
    """An off-session charge (auto-recharge) Stripe confirms; a Checkout's own intent is credited by its session."""
    attempt = (
        PaymentAttempt.objects.select_for_update()
        .filter(provider_reference=str(intent.get("id", "")), kind=PaymentAttempt.Kind.AUTO_RECHARGE)
        .first()
    )
    if attempt is None:
        return StripeOutcome(
            "not an auto-recharge of this service: nothing credited (a Checkout credits by its session)"
        )
    return credit_paid_attempt(
        attempt=attempt,
        amount_cents=intent.get("amount"),
        currency=str(intent.get("currency") or "").lower(),
        payment_intent=str(intent.get("id", "")),
    )


def remember_saved_card(*, attempt: PaymentAttempt) -> None:
    """Keep the card a Checkout saved on the account's auto-recharge (set up, or waiting for a card)."""
    card = saved_card_of(str(attempt.payment_intent))
    if card is None:
        return
    order, _ = AutoRecharge.objects.get_or_create(
        account=attempt.account,
        defaults={
            "enabled": False,
            "below_usd": Decimal(0),
            "amount_usd": attempt.amount_usd,
            "disabled_reason": "not turned on yet (a card is saved)",
        },
    )
    order.stripe_customer, order.stripe_payment_method = card.customer, card.payment_method
    order.save(update_fields=["stripe_customer", "stripe_payment_method", "updated_at"])


def _close(obj: dict[str, Any], status: str) -> StripeOutcome:
    attempt = _session_attempt(obj)
    if attempt is None:
        return StripeOutcome("no attempt of this service has this session: nothing to close")
    if attempt.status not in (AttemptStatus.CREATED, AttemptStatus.PENDING):
        return StripeOutcome(f"ignored: the attempt is already {attempt.status}", attempt)
    transition(attempt, status)
    return StripeOutcome(f"attempt {status}", attempt)


def _refund(charge: dict[str, Any]) -> StripeOutcome:
    attempt = _intent_attempt(str(charge.get("payment_intent") or ""))
    if attempt is None:
        return StripeOutcome("no attempt of this service was paid by this charge: nothing taken back")
    if str(charge.get("currency") or "").lower() != attempt.currency:
        return StripeOutcome("refund in another currency than the attempt: nothing taken back", attempt)
    refunded = int(charge.get("amount_refunded") or 0)  # cumulative: only what is new is taken back
    refunded = min(refunded, attempt.amount_cents)
    if refunded <= attempt.refunded_cents:
        return StripeOutcome(f"already taken back ({attempt.refunded_cents} cents refunded)", attempt)
    newly = refunded - attempt.refunded_cents
    credits = _credits_of_cents(newly)
    grant_credits(
        account=attempt.account,
        amount_credits=-credits,
        reason=LedgerReason.PURCHASE_REFUND,
        idempotency_key=_ledger_key(attempt, "refund", refunded),
        memo=f"Stripe refund of {Decimal(newly) / 100} USD of {attempt.provider_reference}",
        reasons=PAYMENT_REASONS,
    )
    attempt.refunded_cents = refunded
    attempt.save(update_fields=["refunded_cents", "updated_at"])
    _settle_status(attempt)
    return StripeOutcome(f"took back {credits:,} credits ({newly} cents refunded)", attempt)


def _dispute(dispute: dict[str, Any], *, opened: bool) -> StripeOutcome:
    attempt = _intent_attempt(str(dispute.get("payment_intent") or ""))
    if attempt is None:
        return StripeOutcome("no attempt of this service was paid by the disputed charge: nothing moved")
    dispute_id, cents = str(dispute.get("id", "")), min(int(dispute.get("amount") or 0), attempt.amount_cents)
    credits = _credits_of_cents(cents)
    if opened:
        result = grant_credits(
            account=attempt.account,
            amount_credits=-credits,
            reason=LedgerReason.DISPUTE,
            idempotency_key=_ledger_key(attempt, "dispute", dispute_id),
            memo=f"Stripe dispute {dispute_id} of {attempt.provider_reference}",
            reasons=PAYMENT_REASONS,
        )
        if result.created:
            attempt.disputed_cents += cents
            attempt.save(update_fields=["disputed_cents", "updated_at"])
        _settle_status(attempt)
        return StripeOutcome(
            f"took back {credits:,} credits while disputed" if result.created else "already taken", attempt
        )
    if dispute.get("status") != "won":
        return StripeOutcome(f"dispute closed {dispute.get('status')!s:.20}: the credits stay taken back", attempt)
    taken = attempt.account.ledger_entries.filter(idempotency_key=_ledger_key(attempt, "dispute", dispute_id)).exists()
    if not taken:
        return StripeOutcome("dispute won, but its opening was never taken: nothing to give back", attempt)
    result = grant_credits(
        account=attempt.account,
        amount_credits=credits,
        reason=LedgerReason.DISPUTE_REVERSAL,
        idempotency_key=_ledger_key(attempt, "dispute_won", dispute_id),
        memo=f"Stripe dispute {dispute_id} won",
        reasons=PAYMENT_REASONS,
    )
    if result.created:
        attempt.disputed_cents = max(0, attempt.disputed_cents - cents)
        attempt.save(update_fields=["disputed_cents", "updated_at"])
    _settle_status(attempt)
    return StripeOutcome(
        f"gave back {credits:,} credits (dispute won)" if result.created else "already given back", attempt
    )


def _credits_of_cents(cents: int) -> int:
    return purchased_credits(Decimal(cents) / 100)


def _settle_status(attempt: PaymentAttempt) -> None:
    """A paid attempt's status from what was taken back; an unpaid one waits for its payment first."""
    if attempt.status not in PAID_STATUSES:
        return
    if attempt.refunded_cents >= attempt.amount_cents:
        wanted = AttemptStatus.REFUNDED
    elif attempt.disputed_cents > 0:
        wanted = AttemptStatus.DISPUTED
    elif attempt.refunded_cents > 0:
        wanted = AttemptStatus.PARTIALLY_REFUNDED
    else:
        wanted = AttemptStatus.SUCCEEDED
    if wanted != attempt.status and wanted in ALLOWED_TRANSITIONS[attempt.status]:
        transition(attempt, wanted)
