"""Can they pay: pre-call authorization with credit holds (SPEC: HOLDS_NEVER_OVERSPEND, POST_CALL_NEVER_BLOCKS).

authorize_call() decides under the paying account's row lock (SELECT … FOR UPDATE on BillingAccount)
against available = balance − open holds, so concurrent authorizations are serialized per account and can
never together reserve more than the balance. The open holds' total is kept on the row (held_credits, moved
by the holds' trigger, accounts migration 0006): the decision is O(1) in the calls in flight, after taking
off only this account's holds past their expiry. A new call's decision is one SQL statement
(billing_authorize_hold(), holds migration 0002): lock, expiry, check and hold in one round trip. Every
path that changes a hold's open amount locks the account first, then the hold (the ledger does the same),
so none deadlocks with another. Holds are not ledger money: they never move the balance.
The call's receipt settles its hold in the same transaction (settle_holds(), called by
receipts.services.billing.commit_usage_facts, the one writer of charges), however far the charge exceeds
the hold; a hold whose call never reports expires (expire_holds(), run by the sweep).
"""

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from accounts.models import BillingAccount
from accounts.money import credits_per_usd, current_charge_rate, fits_bigint, fits_cost_column, usd_text
from billing_project.text_rules import call_id_problem
from holds import metrics
from holds.exceptions import AuthorizeTooLate, CallIdReused, HoldConflict, InvalidAuthorization
from holds.models import CreditHold
from holds.selectors import recent_completion_tokens
from payers.selectors import PayerDecision, resolve_payer

Status = CreditHold.Status
INSUFFICIENT_CREDITS = "insufficient_credits"
UNKNOWN_PAYER = "unknown_payer"
UNPRICED_MODEL = "unpriced_model"
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for lock_timeout
ACCOUNT_BUSY = "the account stayed busy past the caller's deadline; nothing was held"


@dataclass(frozen=True)
class AuthorizeDecision:
    """The answer to one authorize: a hold (allowed), or a refusal with its reason.

    `hold` is None when refused, and when an unknown payer is let through (BILLING_AUTHORIZE_UNKNOWN_PAYER=allow).
    `available_credits` is None for an unknown payer (there is no balance to show).
    """

    allowed: bool
    required_credits: int
    available_credits: int | None
    hold: CreditHold | None = None
    reason: str = ""
    replayed: bool = False
    model: str = ""

    def refusal_sentence(self, *, shows_balance: bool, topup_url: str) -> str:
        """What a refused caller reads, in USD (README, "What a refused caller reads")."""
        needs = usd_text(_exact_usd(self.required_credits), rounding=ROUND_CEILING)
        if self.reason == UNPRICED_MODEL:
            sentence = (
                f"Model {self.model or '(none)'!r} has no known price, so this call could not be billed: "
                "it was refused before reaching the model."
            )
        elif self.reason == UNKNOWN_PAYER:
            sentence = "No billing account pays for this API key yet: the operator must bind it to an account."
        elif shows_balance and self.available_credits is not None:
            available = usd_text(_exact_usd(self.available_credits), rounding=ROUND_FLOOR)
            state = "is used up" if self.available_credits <= 0 else "is too low for this call"
            sentence = f"This account's prepaid credit {state}: {available} available, this call needs up to {needs}."
        else:
            sentence = f"This account's prepaid credit does not cover this call, which needs up to {needs}."
        return f"{sentence} Top up at {topup_url}" if topup_url and self.reason != UNPRICED_MODEL else sentence


def _exact_usd(amount_credits: int) -> Decimal:
    return Decimal(amount_credits) / credits_per_usd()


def _validate_estimate(estimated_cost_usd: Decimal) -> int:
    """The credits to hold: the estimate rounded up by the one rounding function (accounts.money)."""
    if not isinstance(estimated_cost_usd, Decimal) or not estimated_cost_usd.is_finite():
        raise InvalidAuthorization("estimated_cost_usd must be a finite decimal number", field="estimated_cost_usd")
    if estimated_cost_usd < 0:
        raise InvalidAuthorization("estimated_cost_usd must not be negative", field="estimated_cost_usd")
    if not fits_cost_column(estimated_cost_usd):
        raise InvalidAuthorization(
            "estimated_cost_usd has more digits than a cost can have (at most 30 after the point, 18 before)",
            field="estimated_cost_usd",
        )
    required = current_charge_rate().credits_for(estimated_cost_usd)
    if not fits_bigint(required):
        raise InvalidAuthorization("estimated_cost_usd is beyond any balance", field="estimated_cost_usd")
    return required


def _replay(
    hold: CreditHold, *, payer: PayerDecision | None, estimated_cost_usd: Decimal, now: datetime
) -> AuthorizeDecision:
    """The same call asked again (a retry of an authorize): the same answer for the same estimate.

    Only an open hold of the same payer is replayed. A call id whose hold was settled, released or
    expired, or that another payer holds, is not this call: a new call with a reused id must never ride
    on the old hold (A_SERVED_CALL_IS_BILLED), so it is refused (CallIdReused, 409).
    """
    if payer is None or hold.account_id != payer.account_id:
        raise CallIdReused(f"litellm_call_id {hold.litellm_call_id!r} is already held by another caller")
    if hold.status != Status.HELD or hold.expires_at <= now:
        state = hold.status if hold.status != Status.HELD else "expired"
        raise CallIdReused(f"litellm_call_id {hold.litellm_call_id!r} was already used (its hold is {state})")
    if hold.estimated_cost_usd != estimated_cost_usd:
        raise HoldConflict(
            f"call {hold.litellm_call_id} already holds credits for an estimate of {hold.estimated_cost_usd} USD, "
            f"not {estimated_cost_usd}",
            field="estimated_cost_usd",
        )
    balance, held = BillingAccount.objects.values_list("balance_credits", "held_credits").get(pk=hold.account_id)
    return AuthorizeDecision(
        allowed=True,
        required_credits=hold.held_credits,
        available_credits=balance - held,
        hold=hold,
        replayed=True,
    )


@dataclass(frozen=True)
class OutputSizing:
    """The output part of a worst-case estimate whose bound is only the model's limit (no max_tokens)."""

    max_output_tokens: int
    output_cost_per_token_usd: Decimal


# Per process, for a minute: the recent output of (account, key, model group). Bounded: an authorize stays
# one indexed query at most, most often none.
_HISTORY_SECONDS = 60.0
_HISTORY_MAX = 10_000
_history: dict[tuple[int, str, str], tuple[float, int | None]] = {}
_history_lock = threading.Lock()


def _p99_output_tokens(*, account_id: int, key_hash: str, model: str) -> int | None:
    """The p99 of the completion tokens of the key's recent charges on the model group, or None (too few)."""
    cache_key = (account_id, key_hash, model)
    now = time.monotonic()
    with _history_lock:
        cached = _history.get(cache_key)
    if cached is not None and now - cached[0] < _HISTORY_SECONDS:
        return cached[1]
    p99 = p99_output_tokens(
        recent_completion_tokens(
            account_id=account_id, key_hash=key_hash, model_group=model, limit=settings.BILLING_HOLD_HISTORY_CALLS
        )
    )
    with _history_lock:
        if len(_history) >= _HISTORY_MAX:
            _history.clear()
        _history[cache_key] = (now, p99)
    return p99


def p99_output_tokens(history: Sequence[int], *, percentile: int | None = None) -> int | None:
    """The BILLING_HOLD_OUTPUT_PERCENTILE-th percentile (99 by default) of recent completion tokens, or None
    with fewer than BILLING_HOLD_HISTORY_MIN_CALLS of them."""
    if len(history) < max(1, settings.BILLING_HOLD_HISTORY_MIN_CALLS):
        return None
    share = (percentile or settings.BILLING_HOLD_OUTPUT_PERCENTILE) / 100
    ordered = sorted(history)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def held_output_tokens(p99: int | None, *, max_output_tokens: int) -> int:
    """The output a call without max_tokens is held for: the key's p99, else the default, within the limit."""
    return min(max_output_tokens, settings.BILLING_HOLD_DEFAULT_OUTPUT_TOKENS if p99 is None else p99)


def sized_estimate(
    estimated_cost_usd: Decimal, sizing: OutputSizing, *, account_id: int, key_hash: str, model: str
) -> Decimal:
    """The estimate a call without max_tokens is held at: its worst case with the model's whole output limit
    replaced by what this key has used on this model group (the p99 of its recent completion tokens, else
    BILLING_HOLD_DEFAULT_OUTPUT_TOKENS), never above the worst case. A charge above the hold still lands in
    full (POST_CALL_NEVER_BLOCKS); a stream renews its hold while it runs."""
    p99 = _p99_output_tokens(account_id=account_id, key_hash=key_hash, model=model) if key_hash else None
    spare = sizing.max_output_tokens - held_output_tokens(p99, max_output_tokens=sizing.max_output_tokens)
    return max(Decimal(0), estimated_cost_usd - spare * sizing.output_cost_per_token_usd)


def _remaining_ms(deadline: float | None) -> int | None:
    """Milliseconds left before the caller stops waiting; AuthorizeTooLate once there are none."""
    if deadline is None:
        return None
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0:
        raise AuthorizeTooLate("the caller's deadline passed before its authorization could be decided")
    return remaining_ms


def _decide(
    *,
    litellm_call_id: str,
    estimated_cost_usd: Decimal,
    required: int,
    payer: PayerDecision,
    model: str,
    now: datetime,
    deadline: float | None,
) -> AuthorizeDecision:
    """Hold `required` credits of the payer's account if they are available, under its row lock.

    One statement, billing_authorize_hold() (holds/migrations/sql/0002_authorize_function.sql): it locks the
    account row (waiting no longer than the caller does), expires that account's overdue holds, decides
    against available = balance − held_credits (O(1): the open total is kept on the row by the holds'
    trigger) and inserts the hold. Outside a transaction it is its own: one round trip, no BEGIN or COMMIT
    of ours. A call id that already has a hold (a retry, or a retry racing its original) is replayed.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT outcome, available, hold_pk, hold_id, expires_at, expired_holds "
                "FROM billing_authorize_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    payer.account_id,
                    litellm_call_id,
                    required,
                    estimated_cost_usd,
                    model,
                    payer.source,
                    now,
                    settings.BILLING_HOLD_TTL_SECONDS,
                    _remaining_ms(deadline),
                ],
            )
            outcome, available, hold_pk, hold_id, expires_at, expired_holds = cursor.fetchone()
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            raise AuthorizeTooLate(ACCOUNT_BUSY) from exc
        raise
    if expired_holds:
        transaction.on_commit(lambda: metrics.holds_expired_total.inc(expired_holds))
    if outcome == "too_late":
        # A decision the caller will no longer hear must not hold credits it never learns about.
        raise AuthorizeTooLate(ACCOUNT_BUSY)
    if outcome == "exists":
        return _replay(
            CreditHold.objects.get(litellm_call_id=litellm_call_id),
            payer=payer,
            estimated_cost_usd=estimated_cost_usd,
            now=now,
        )
    if outcome == "refused":
        return AuthorizeDecision(
            allowed=False, required_credits=required, available_credits=available, reason=INSUFFICIENT_CREDITS
        )
    hold = CreditHold(
        id=hold_pk,
        hold_id=hold_id,
        account_id=payer.account_id,
        litellm_call_id=litellm_call_id,
        model=model,
        payer_source=payer.source,
        estimated_cost_usd=estimated_cost_usd,
        held_credits=required,
        status=Status.HELD,
        expires_at=expires_at,
        created_at=now,
    )
    hold._state.adding = False  # the row exists: billing_authorize_hold() inserted it
    return AuthorizeDecision(allowed=True, required_credits=required, available_credits=available, hold=hold)


def authorize_call(
    *,
    litellm_call_id: str,
    estimated_cost_usd: Decimal,
    key_hash: str = "",
    team_id: str = "",
    end_user: str = "",
    run_id: str = "",
    model: str = "",
    priced: bool = True,
    sizing: OutputSizing | None = None,
    deadline: float | None = None,
    now: datetime | None = None,
) -> AuthorizeDecision:
    """Hold the call's worst-case cost if the payer can afford it; idempotent per litellm_call_id.

    The payer comes from the one resolver (payers.selectors.resolve_payer). A refusal writes nothing.
    `priced=False` (LiteLLM knows no price for the model) is refused with BILLING_UNPRICED_CALLS=refuse.
    `sizing` (a call without max_tokens): hold for the output this key really uses (sized_estimate).
    `deadline` (time.monotonic()) is when the caller stops waiting: past it nothing is held.
    Raises InvalidAuthorization (bad estimate), HoldConflict (the call holds another estimate),
    CallIdReused (the call id was used before) and AuthorizeTooLate (the deadline passed).
    """
    started = time.perf_counter()
    result = "error"
    try:
        decision = _authorize(
            litellm_call_id=litellm_call_id,
            estimated_cost_usd=estimated_cost_usd,
            payer_query={"key_hash": key_hash, "team_id": team_id, "end_user": end_user, "run_id": run_id},
            model=model,
            priced=priced,
            sizing=sizing,
            deadline=deadline,
            now=now or timezone.now(),
        )
        if decision.replayed:
            result = "replayed"
        elif decision.allowed:
            result = "allowed" if decision.hold is not None else "unknown_payer_allowed"
        else:
            result = decision.reason
        return decision
    except InvalidAuthorization:
        result = "invalid"
        raise
    except (HoldConflict, CallIdReused):
        result = "conflict"
        raise
    except AuthorizeTooLate:
        result = "too_late"
        raise
    finally:
        metrics.authorize_decisions_total.labels(result=result).inc()
        metrics.authorize_seconds.observe(time.perf_counter() - started)


def _authorize(
    *,
    litellm_call_id: str,
    estimated_cost_usd: Decimal,
    payer_query: dict[str, str],
    model: str,
    priced: bool,
    sizing: OutputSizing | None,
    deadline: float | None,
    now: datetime,
) -> AuthorizeDecision:
    problem = call_id_problem(litellm_call_id)
    if problem:
        raise InvalidAuthorization(f"litellm_call_id {problem}", field="litellm_call_id")
    required = _validate_estimate(estimated_cost_usd)
    if sizing is not None and sizing.max_output_tokens * sizing.output_cost_per_token_usd > estimated_cost_usd:
        raise InvalidAuthorization(
            "max_output_tokens × output_cost_per_token_usd is more than estimated_cost_usd, which includes it",
            field="output_cost_per_token_usd",
        )
    if not priced and settings.BILLING_UNPRICED_CALLS == "refuse":
        # A_SERVED_CALL_IS_BILLED: a call nobody can price would be served for free; refuse it before it runs.
        return AuthorizeDecision(
            allowed=False, required_credits=required, available_credits=None, reason=UNPRICED_MODEL, model=model
        )
    payer = resolve_payer(**payer_query)
    if payer is None:
        # A call id used before is refused even for an unknown payer (_replay); else the unknown-payer rule.
        existing = CreditHold.objects.filter(litellm_call_id=litellm_call_id).first()
        if existing is not None:
            return _replay(existing, payer=payer, estimated_cost_usd=estimated_cost_usd, now=now)
        allow = settings.BILLING_AUTHORIZE_UNKNOWN_PAYER == "allow"
        return AuthorizeDecision(
            allowed=allow, required_credits=required, available_credits=None, reason="" if allow else UNKNOWN_PAYER
        )
    if sizing is not None:
        required = current_charge_rate().credits_for(
            sized_estimate(
                estimated_cost_usd, sizing, account_id=payer.account_id, key_hash=payer_query["key_hash"], model=model
            )
        )
    return _decide(
        litellm_call_id=litellm_call_id,
        estimated_cost_usd=estimated_cost_usd,
        required=required,
        payer=payer,
        model=model,
        now=now,
        deadline=deadline,
    )


@transaction.atomic
def release_hold(*, litellm_call_id: str, now: datetime | None = None) -> CreditHold | None:
    """Free the hold of a call that will not be charged (it failed before the provider billed it).

    Returns the released hold, or None when the call has no open hold (none, or already settled,
    released or expired). A receipt that arrives later still bills in full.
    """
    now = now or timezone.now()
    open_hold = CreditHold.objects.filter(litellm_call_id=litellm_call_id, status=Status.HELD)
    account_id = open_hold.values_list("account_id", flat=True).first()
    if account_id is None:
        return None
    # The account first, then the hold: every path that changes a hold's open amount locks in that order.
    _lock_accounts([account_id])
    hold = open_hold.select_for_update().first()
    if hold is None:
        return None
    hold.status = Status.RELEASED
    hold.closed_at = now
    hold.save(update_fields=["status", "closed_at"])
    transaction.on_commit(metrics.holds_released_total.inc)
    return hold


@transaction.atomic
def renew_hold(*, litellm_call_id: str, now: datetime | None = None) -> CreditHold | None:
    """Extend an open hold by BILLING_HOLD_TTL_SECONDS from now: its call is still running (a long stream).

    Only a hold that still reserves credits is renewed: one past its expiry already stopped counting and
    others may have reserved those credits since. Returns the renewed hold, or None.
    """
    now = now or timezone.now()
    hold = CreditHold.objects.reserving(now=now).select_for_update().filter(litellm_call_id=litellm_call_id).first()
    if hold is None:
        return None
    hold.expires_at = now + timedelta(seconds=settings.BILLING_HOLD_TTL_SECONDS)
    hold.save(update_fields=["expires_at"])
    transaction.on_commit(metrics.holds_renewed_total.inc)
    return hold


@transaction.atomic
def expire_holds(*, now: datetime) -> int:
    """Mark expired every open hold past its expiry (they already stopped counting against available)."""
    overdue = CreditHold.objects.overdue(now=now)
    accounts = sorted(set(overdue.values_list("account_id", flat=True)))
    if not accounts:
        return 0
    _lock_accounts(accounts)  # in id order, as the ledger locks them: no deadlock with charges
    expired = overdue.filter(account_id__in=accounts).update(status=Status.EXPIRED, closed_at=now)
    if expired:
        transaction.on_commit(lambda: metrics.holds_expired_total.inc(expired))
    return expired


def _lock_accounts(account_ids: Sequence[int]) -> None:
    list(BillingAccount.objects.select_for_update().filter(pk__in=account_ids).order_by("id").values_list("id"))


def settle_holds(*, receipts_by_call_id: Mapping[str, tuple[int, int]], now: datetime | None = None) -> int:
    """Link each call's new receipt to its hold, inside the caller's transaction (commit_usage_facts).

    `receipts_by_call_id`: call id -> (receipt id, the receipt's account). Only a hold of the same account
    is touched: a record billed to another payer under the same call id never settles this hold.
    An open hold becomes settled, whatever the charge (POST_CALL_NEVER_BLOCKS: the receipt has already
    landed in full). A hold that was released or had expired keeps its status and just gets its receipt
    (a late callback is billed normally). Returns how many holds were settled.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("settle_holds() runs inside the transaction that writes the receipts")
    call_ids = sorted(receipts_by_call_id)
    if not call_ids:
        return 0
    now = now or timezone.now()
    table = CreditHold._meta.db_table
    with connection.cursor() as cursor:
        # Rows in call-id order: concurrent batches lock holds in one order.
        cursor.execute(
            f"""
            UPDATE {table} AS h
               SET receipt_id = u.receipt_id,
                   settled_at = CASE WHEN h.status = %s THEN %s ELSE h.settled_at END,
                   status = CASE WHEN h.status = %s THEN %s ELSE h.status END
              FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u(call_id, receipt_id, account_id)
             WHERE h.litellm_call_id = u.call_id AND h.account_id = u.account_id AND h.receipt_id IS NULL
            RETURNING h.status = %s
            """,
            [
                Status.HELD,
                now,
                Status.HELD,
                Status.SETTLED,
                call_ids,
                [receipts_by_call_id[c][0] for c in call_ids],
                [receipts_by_call_id[c][1] for c in call_ids],
                Status.SETTLED,
            ],
        )
        flags = [row[0] for row in cursor.fetchall()]
    settled, late = sum(flags), len(flags) - sum(flags)
    transaction.on_commit(lambda: _count_settled(settled, late))
    return settled


def _count_settled(settled: int, late: int) -> None:
    if settled:
        metrics.holds_settled_total.labels(outcome="settled").inc(settled)
    if late:
        metrics.holds_settled_total.labels(outcome="late").inc(late)
