"""USDC on-chain purchases: the owner opens an attempt for an amount and the wallet it pays from, submits the
transaction hash, and a worker verifies it on the chain before any credit moves.

Verified: the receipt succeeded; it holds a Transfer log emitted by BILLING_USDC_TOKEN_ADDRESS from the
attempt's wallet to BILLING_USDC_RECEIVER; it has BILLING_USDC_CONFIRMATIONS confirmations; the hash was never
used by another attempt (a unique index). What actually arrived is credited (the intended and the received
amounts are both kept; an under- or over-payment is flagged for staff). A transaction that leaves the chain
before its confirmations (a reorg) keeps the attempt pending; an attempt pending past
BILLING_USDC_PENDING_TTL_SECONDS expires.
"""

import re
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import BillingAccount, LedgerReason
from accounts.money import credits_per_usd, purchased_credits
from accounts.services import PAYMENT_REASONS, grant_credits
from integrations.usdc.client import ChainUnavailable, transaction_outcome
from payments import metrics
from payments.exceptions import InvalidPurchase
from payments.models import AttemptStatus, PaymentAttempt, Provider
from payments.services.attempts import transition

USDC_DECIMALS = 6
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def wallet_address(value: object) -> str:
    text = str(value or "").strip()
    if not _ADDRESS.match(text):
        raise InvalidPurchase("wallet must be an 0x-prefixed address of 40 hex digits", field="wallet")
    return text.lower()


def transaction_hash(value: object) -> str:
    text = str(value or "").strip()
    if not _TX_HASH.match(text):
        raise InvalidPurchase("tx_hash must be an 0x-prefixed hash of 64 hex digits", field="tx_hash")
    return text.lower()


def usdc_units(amount_usd: Decimal) -> int:
    return int((amount_usd * 10**USDC_DECIMALS).to_integral_value())


def eip681_link(attempt: PaymentAttempt) -> str:
    """The payment request a wallet understands: transfer `amount` of the token to the receiver, on the chain."""
    return (
        f"ethereum:{settings.BILLING_USDC_TOKEN_ADDRESS}@{settings.BILLING_USDC_CHAIN_ID}/transfer"
        f"?address={settings.BILLING_USDC_RECEIVER}&uint256={usdc_units(attempt.amount_usd)}"
    )


def usdc_purchase_start(
    *, account: BillingAccount, amount_usd: Decimal, wallet: str, created_by: AbstractBaseUser | None
) -> PaymentAttempt:
    if not (settings.BILLING_USDC_RPC_URLS and settings.BILLING_USDC_TOKEN_ADDRESS and settings.BILLING_USDC_RECEIVER):
        raise InvalidPurchase("USDC payments are not set up on this service", field="provider")
    attempt = PaymentAttempt.objects.create(
        account=account,
        provider=Provider.USDC,
        amount_usd=amount_usd,
        credits=purchased_credits(amount_usd),
        credits_per_usd=credits_per_usd(),
        payer_wallet=wallet_address(wallet),
        chain_id=settings.BILLING_USDC_CHAIN_ID,
        created_by=created_by if created_by is not None and created_by.is_authenticated else None,
    )
    with transaction.atomic():
        transition(attempt, AttemptStatus.PENDING)
    return attempt


@transaction.atomic
def usdc_transaction_submit(*, attempt: PaymentAttempt, tx_hash: str) -> PaymentAttempt:
    """Record the hash that pays `attempt` (once); verification happens in verify_usdc_attempt()."""
    value = transaction_hash(tx_hash)
    locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
    if locked.provider != Provider.USDC or locked.status != AttemptStatus.PENDING:
        raise InvalidPurchase(f"this attempt is {locked.status}: it takes no transaction", field="tx_hash")
    if locked.provider_reference:
        if locked.provider_reference == value:
            return locked
        raise InvalidPurchase("this attempt already has its transaction", field="tx_hash")
    locked.provider_reference = value
    try:
        with transaction.atomic():
            locked.save(update_fields=["provider_reference", "updated_at"])
    except IntegrityError as exc:
        metrics.verification_failures_total.labels(reason="reused_hash").inc()
        raise InvalidPurchase("this transaction already paid another attempt", field="tx_hash") from exc
    return locked


@transaction.atomic
def verify_usdc_attempt(*, attempt: PaymentAttempt) -> str:
    """Check the attempt's transaction on the chain and credit what arrived, once. Returns what it found."""
    locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
    if locked.status != AttemptStatus.PENDING or not locked.provider_reference:
        return f"nothing to verify: {locked.status}" + ("" if locked.provider_reference else ", no transaction yet")
    try:
        outcome = transaction_outcome(locked.provider_reference)
    except ChainUnavailable as exc:
        metrics.verification_failures_total.labels(reason="rpc_unavailable").inc()
        return _note(locked, f"the chain could not be read: {exc}")
    if outcome is None:
        return _note(locked, "transaction not in the chain (not mined yet, or dropped by a reorg): waiting")
    if not outcome.succeeded:
        return _fail(locked, "reverted", "the transaction reverted")
    token = settings.BILLING_USDC_TOKEN_ADDRESS.lower()
    receiver = settings.BILLING_USDC_RECEIVER.lower()
    moves = [t for t in outcome.transfers if t.token.lower() == token]
    if not moves:
        return _fail(locked, "wrong_token", "no transfer of the configured token in this transaction")
    moves = [t for t in moves if t.receiver.lower() == receiver]
    if not moves:
        return _fail(locked, "wrong_receiver", "the token was not sent to this service's receiver")
    moves = [t for t in moves if t.sender.lower() == locked.payer_wallet]
    if not moves:
        return _fail(locked, "wrong_sender", "the transfer did not come from the attempt's wallet")
    if outcome.confirmations < settings.BILLING_USDC_CONFIRMATIONS:
        return _note(locked, f"{outcome.confirmations} of {settings.BILLING_USDC_CONFIRMATIONS} confirmations: waiting")
    received_units = sum(t.units for t in moves)
    received_usd = Decimal(received_units) / 10**USDC_DECIMALS
    credits = purchased_credits(received_usd)
    if credits > 0:
        grant_credits(
            account=locked.account,
            amount_credits=credits,
            reason=LedgerReason.ONCHAIN_DEPOSIT,
            idempotency_key=f"usdc:{locked.chain_id}:{locked.provider_reference}:deposit",
            memo=f"USDC {received_usd} from {locked.payer_wallet} in {locked.provider_reference}",
            reasons=PAYMENT_REASONS,
        )
    locked.received_usd = received_usd
    locked.credits = credits or locked.credits
    locked.confirmations = outcome.confirmations
    locked.mismatch = (
        "" if received_usd == locked.amount_usd else ("underpaid" if received_usd < locked.amount_usd else "overpaid")
    )
    locked.save(update_fields=["received_usd", "credits", "confirmations", "mismatch", "updated_at"])
    if credits <= 0:
        return _fail(locked, "nothing_arrived", "the transfer moved no whole credit")
    transition(locked, AttemptStatus.SUCCEEDED)
    flagged = f" ({locked.mismatch}: {locked.amount_usd} USD asked)" if locked.mismatch else ""
    return f"credited {credits:,} credits for {received_usd} USDC{flagged}"


def _note(attempt: PaymentAttempt, text: str) -> str:
    attempt.failure_reason = text[:2000]
    attempt.save(update_fields=["failure_reason", "updated_at"])
    return text


def _fail(attempt: PaymentAttempt, reason: str, text: str) -> str:
    metrics.verification_failures_total.labels(reason=reason).inc()
    attempt.failure_reason = text
    attempt.save(update_fields=["failure_reason", "updated_at"])
    transition(attempt, AttemptStatus.FAILED)
    return text


def verify_pending_usdc(*, now: datetime) -> dict[str, int]:
    """The worker's sweep: verify every pending USDC attempt with a hash; expire those past their TTL."""
    counts = {"verified": 0, "waiting": 0, "expired": 0}
    cutoff = now - timedelta(seconds=settings.BILLING_USDC_PENDING_TTL_SECONDS)
    pending = PaymentAttempt.objects.filter(provider=Provider.USDC, status=AttemptStatus.PENDING).order_by("id")
    for attempt in pending:
        if attempt.provider_reference:
            found = verify_usdc_attempt(attempt=attempt)
            counts["verified" if found.startswith("credited") else "waiting"] += 1
            attempt.refresh_from_db(fields=["status"])
        if attempt.status == AttemptStatus.PENDING and attempt.created_at < cutoff:
            with transaction.atomic():
                locked = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
                if locked.status == AttemptStatus.PENDING:
                    transition(locked, AttemptStatus.EXPIRED)
                    counts["expired"] += 1
    return counts


@transaction.atomic
def resolve_mismatch(*, attempt: PaymentAttempt, by: AbstractBaseUser) -> None:
    """Staff marked an under- or over-payment as dealt with."""
    PaymentAttempt.objects.filter(pk=attempt.pk).exclude(mismatch="").update(
        mismatch_resolved_at=timezone.now(), mismatch_resolved_by=by
    )
