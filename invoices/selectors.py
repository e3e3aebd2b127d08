"""Invoice reads: one month of one account, from the ledger's daily summary.

Every number here comes from invoices.LedgerDailySummary, which the ledger's
own INSERT trigger writes in the same transaction as each entry (trigger
ledger_summarise_statement, invoices/migrations/sql/0004_summary_trigger_index_join.sql), so the
invoice reads the ledger's sums without scanning the ledger: a month with a million usage entries is
a few hundred summary rows.

Identity (SPEC section 7): opening + added − used = closing, exactly, where
  opening = sum of every entry before the period,
  added   = sum of the non-usage entries in the period (top-ups, grants,
            refunds and adjustments, which may be negative),
  used    = − sum of the usage debits in the period.
Periods and days are UTC, like the summary's buckets.

Who spent the credits inside the account (by API key, by end user) comes from
invoices.LedgerPayerSummary, kept by the same trigger from each usage entry's
receipt: the top BILLING_INVOICE_TOP_N of each, then one "others" line, so
each breakdown sums to the credits used.
"""

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry
from accounts.money import credits_per_usd, credits_to_usd
from billing_project.dates import utc_midnight
from invoices.models import LedgerDailySummary, LedgerPayerSummary
from payers.models import shortened_key_hash
from receipts.selectors import usage_by_call_day

Reason = CreditLedgerEntry.Reason
# Credits added, in the order every surface lists them (all four, even at 0).
# The lines under "credits added", always shown, in this order; a payment reason (purchases, their refunds
# and disputes: accounts.services.PAYMENT_REASONS) gets its own line after them when the period has one,
# those that take credits as negative lines.
ADDED_REASONS: tuple[str, ...] = (Reason.TOP_UP, Reason.GRANT, Reason.REFUND, Reason.ADJUSTMENT)
_PERIOD_RE = re.compile(r"^(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])$")


class InvalidPeriod(ValueError):
    """A period that is not `YYYY-MM`, or a month that has not started yet."""


@dataclass(frozen=True, order=True)
class Period:
    """A calendar month in UTC: [start, end)."""

    year: int
    month: int

    @property
    def start(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def end(self) -> date:
        """The first day after the period (exclusive bound)."""
        return date(self.year + self.month // 12, self.month % 12 + 1, 1)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def previous(self) -> "Period":
        return Period(self.year - 1, 12) if self.month == 1 else Period(self.year, self.month - 1)

    @property
    def next(self) -> "Period":
        return Period(self.year + 1, 1) if self.month == 12 else Period(self.year, self.month + 1)

    def __str__(self) -> str:
        return self.label


def current_period(*, now: datetime | None = None) -> Period:
    today = (now or timezone.now()).astimezone(UTC).date()
    return Period(today.year, today.month)


def parse_period(text: str | None, *, now: datetime | None = None) -> Period:
    """`YYYY-MM` → Period; None or "" → the current month. Raises InvalidPeriod."""
    if not text:
        return current_period(now=now)
    match = _PERIOD_RE.match(text)
    if match is None:
        raise InvalidPeriod(f"period must look like YYYY-MM (e.g. 2025-01), got {text[:20]!r}")
    period = Period(int(match["year"]), int(match["month"]))
    if period.year < 1970:
        raise InvalidPeriod("period is before 1970")
    if period > current_period(now=now):
        raise InvalidPeriod(f"period {period.label} has not started yet")
    return period


class _CreditsInUsd:
    """A line's credits and their USD value at the configured rate."""

    credits: int

    @property
    def usd(self) -> Decimal:
        return credits_to_usd(self.credits)


@dataclass(frozen=True)
class ReasonLine(_CreditsInUsd):
    reason: str
    label: str
    entries: int
    credits: int


@dataclass(frozen=True)
class ModelGroupLine(_CreditsInUsd):
    model_group: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: int


@dataclass(frozen=True)
class DayLine:
    day: date
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    used_credits: int
    added_credits: int
    # Balance at the end of the day (opening + everything up to and including it).
    closing_balance_credits: int

    @property
    def used_usd(self) -> Decimal:
        return credits_to_usd(self.used_credits)

    @property
    def added_usd(self) -> Decimal:
        return credits_to_usd(self.added_credits)

    @property
    def closing_balance_usd(self) -> Decimal:
        return credits_to_usd(self.closing_balance_credits)


@dataclass(frozen=True)
class UsageTotals(_CreditsInUsd):
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: int


@dataclass(frozen=True)
class PayerLine(_CreditsInUsd):
    """One API key or end user of the breakdown, or (is_others) the rest folded into one line."""

    # The API key hash or the end user; None on the "others" line.
    key: str | None
    label: str
    # The key's alias as LiteLLM logged it ("" when unknown; always "" for end users).
    alias: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    credits: int
    # How many keys / end users the "others" line folds together (0 on a named line).
    others_count: int = 0

    @property
    def is_others(self) -> bool:
        return self.key is None


@dataclass(frozen=True)
class Invoice:
    account: BillingAccount
    period: Period
    opening_credits: int
    added_by_reason: list[ReasonLine]
    added_credits: int
    used_credits: int
    closing_credits: int
    by_model_group: list[ModelGroupLine]
    by_day: list[DayLine]
    totals: UsageTotals
    # Usage by API key and by end user: the top `breakdown_top_n` of each, then "others".
    by_api_key: list[PayerLine]
    by_end_user: list[PayerLine]
    breakdown_top_n: int
    credits_per_usd: Decimal
    # The last day the invoice covers (today for the running month).
    through: date
    # The period has not ended: the closing balance is the balance so far.
    is_running: bool
    # The balance the ledger trigger wrote (balance_after) on the account's last entry before the period,
    # and before its end: read apart from the summed movements above, so the two can disagree.
    ledger_opening_credits: int
    ledger_closing_credits: int

    @property
    def ties_out(self) -> bool:
        """opening and closing (the summary's sums) equal the ledger's own balance at both edges."""
        return (self.opening_credits, self.closing_credits) == (
            self.ledger_opening_credits,
            self.ledger_closing_credits,
        )

    @property
    def opening_usd(self) -> Decimal:
        return credits_to_usd(self.opening_credits)

    @property
    def added_usd(self) -> Decimal:
        return credits_to_usd(self.added_credits)

    @property
    def used_usd(self) -> Decimal:
        return credits_to_usd(self.used_credits)

    @property
    def closing_usd(self) -> Decimal:
        return credits_to_usd(self.closing_credits)


def _days(start: date, through: date) -> Iterable[date]:
    day = start
    while day <= through:
        yield day
        day += timedelta(days=1)


def invoice_for_account(*, account: BillingAccount, period: Period, now: datetime | None = None) -> Invoice:
    """The invoice of `account` for `period`: two indexed queries over the daily summary, one over the payer one."""
    start, end = period.start, period.end
    summaries = LedgerDailySummary.objects.filter(account=account)
    opening = int(summaries.filter(day__lt=start).aggregate(s=Sum("amount_credits"))["s"] or 0)
    rows = summaries.filter(day__gte=start, day__lt=end).values_list(
        "day",
        "reason",
        "model_group",
        "entries",
        "amount_credits",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    )

    added: dict[str, list[int]] = {reason: [0, 0] for reason in ADDED_REASONS}
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    days: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for day, reason, model_group, entries, amount, prompt, completion, total in rows:
        bucket = days[day]
        if reason == Reason.USAGE:
            group = groups[model_group]
            for values in (group, bucket):
                values[0] += entries
                values[1] += prompt
                values[2] += completion
                values[3] += total
                values[4] -= amount  # usage debits are ≤ 0; "used" is their magnitude
        else:
            line = added.setdefault(reason, [0, 0])
            line[0] += entries
            line[1] += amount
            bucket[5] += amount

    added_lines = [
        ReasonLine(reason=reason, label=_reason_label(reason), entries=entries, credits=credits)
        for reason, (entries, credits) in sorted(added.items(), key=lambda item: _added_order(item[0]))
        if reason in ADDED_REASONS or entries
    ]
    added_credits = sum(line.credits for line in added_lines)
    by_model_group = sorted(
        (ModelGroupLine(name, *values) for name, values in groups.items()),
        key=lambda line: (-line.credits, -line.calls, line.model_group),
    )
    used_credits = sum(line.credits for line in by_model_group)

    today = (now or timezone.now()).astimezone(UTC).date()
    is_running = today < end
    through = min(end - timedelta(days=1), max(today, start))
    by_day = []
    balance = opening
    for day in _days(start, max([through, *days])):
        calls, prompt, completion, total, used, day_added = days.get(day, (0, 0, 0, 0, 0, 0))
        balance += day_added - used
        by_day.append(DayLine(day, calls, prompt, completion, total, used, day_added, balance))

    totals = UsageTotals(
        calls=sum(line.calls for line in by_model_group),
        prompt_tokens=sum(line.prompt_tokens for line in by_model_group),
        completion_tokens=sum(line.completion_tokens for line in by_model_group),
        total_tokens=sum(line.total_tokens for line in by_model_group),
        credits=used_credits,
    )
    top_n = max(0, int(settings.BILLING_INVOICE_TOP_N))
    by_api_key, by_end_user = payer_breakdown(account=account, period=period, top_n=top_n)
    closing = opening + added_credits - used_credits
    return Invoice(
        account=account,
        period=period,
        opening_credits=opening,
        added_by_reason=added_lines,
        added_credits=added_credits,
        used_credits=used_credits,
        closing_credits=closing,
        by_model_group=by_model_group,
        by_day=by_day,
        totals=totals,
        by_api_key=by_api_key,
        by_end_user=by_end_user,
        breakdown_top_n=top_n,
        credits_per_usd=credits_per_usd(),
        through=through,
        is_running=is_running,
        ledger_opening_credits=ledger_balance_before(account=account, moment=utc_midnight(start)),
        ledger_closing_credits=ledger_balance_before(account=account, moment=utc_midnight(end)),
    )


def ledger_balance_before(*, account: BillingAccount, moment: datetime) -> int:
    """The account's balance_after on its last ledger entry before `moment` (0 before its first).

    Latest by created_at, the time the summary buckets by (index ledger_account_time, read backwards): one
    index probe, whatever the account's size. created_at order is the balance_after chain's order because
    entries are stamped as they are written; an entry written later with an earlier created_at (an import,
    a test's frozen clock) would show ✗ for the months in between, as it should: the chain says otherwise.
    """
    balance = (
        CreditLedgerEntry.objects.filter(account=account, created_at__lt=moment)
        .order_by("-created_at", "-id")
        .values_list("balance_after", flat=True)
        .first()
    )
    return int(balance or 0)


def _added_order(reason: str) -> int:
    return ADDED_REASONS.index(reason) if reason in ADDED_REASONS else len(ADDED_REASONS) + Reason.values.index(reason)


def _reason_label(reason: str) -> str:
    try:
        return str(Reason(reason).label)
    except ValueError:
        return reason


# Both breakdowns in one statement: the month's payer rows grouped by key and by end user
# (GROUPING SETS), ranked by credits used, the ranks after `top` folded into one "others" line.
_BREAKDOWN_SQL = f"""
WITH grouped AS (
    SELECT GROUPING(api_key_hash) AS dimension,
           CASE WHEN GROUPING(api_key_hash) = 0 THEN api_key_hash ELSE end_user END AS key,
           max(api_key_alias) AS alias, sum(entries) AS calls, -sum(amount_credits) AS credits,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(total_tokens) AS total_tokens
      FROM {LedgerPayerSummary._meta.db_table}
     WHERE account_id = %(account)s AND day >= %(start)s AND day < %(end)s
     GROUP BY GROUPING SETS ((api_key_hash), (end_user))
), ranked AS (
    SELECT *, least(row_number() OVER (PARTITION BY dimension ORDER BY credits DESC, calls DESC, key),
                    %(top)s + 1) AS place
      FROM grouped
)
SELECT dimension, place, min(key), max(alias), count(*), sum(calls), sum(prompt_tokens),
       sum(completion_tokens), sum(total_tokens), sum(credits)
  FROM ranked
 GROUP BY dimension, place
 ORDER BY dimension, place
"""
_BY_API_KEY, _BY_END_USER = 0, 1


def payer_breakdown(*, account: BillingAccount, period: Period, top_n: int) -> tuple[list[PayerLine], list[PayerLine]]:
    """Usage of `period` by API key and by end user: top `top_n` of each by credits, then "others"."""
    params = {"account": account.pk, "start": period.start, "end": period.end, "top": top_n}
    with connection.cursor() as cursor:
        cursor.execute(_BREAKDOWN_SQL, params)
        rows = cursor.fetchall()
    lines: dict[int, list[PayerLine]] = {_BY_API_KEY: [], _BY_END_USER: []}
    for dimension, place, key, alias, members, *sums in rows:
        calls, prompt, completion, total, credits = (int(v) for v in sums)
        if place > top_n:
            line = PayerLine(None, f"others ({members})", "", calls, prompt, completion, total, credits, members)
        elif dimension == _BY_API_KEY:
            line = PayerLine(key, api_key_label(key, alias), alias, calls, prompt, completion, total, credits)
        else:
            line = PayerLine(key, key or "(none)", "", calls, prompt, completion, total, credits)
        lines[dimension].append(line)
    return lines[_BY_API_KEY], lines[_BY_END_USER]


def api_key_label(key_hash: str, alias: str) -> str:
    """The key's alias if LiteLLM logged one, else its hash shortened (a sha256 is 64 characters)."""
    if alias:
        return alias
    if not key_hash:
        return "(no key)"
    return shortened_key_hash(key_hash)


def call_day_lines(*, account_id: int, start: date, end: date) -> list[DayLine]:
    """Billed usage per UTC day of LiteLLM's call time in [start, end), every day present (the "by call day"
    view beside the booking-date one; balances are the ledger's, so they stay 0 here)."""
    usage = usage_by_call_day(account_id=account_id, start=utc_midnight(start), end=utc_midnight(end))
    lines = []
    for day in _days(start, end - timedelta(days=1)):
        u = usage.get(day)
        sums = (
            (0, 0, 0, 0, 0) if u is None else (u.calls, u.prompt_tokens, u.completion_tokens, u.total_tokens, u.credits)
        )
        lines.append(DayLine(day, *sums, 0, 0))
    return lines
