"""The reconciled time window: [since, until) in UTC, from --since/--until or the schedule."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.utils import timezone


class ReconcileInputError(ValueError):
    """A bad --since/--until/--account."""


@dataclass(frozen=True)
class Window:
    """[since, until) in UTC."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ReconcileInputError("window bounds must be timezone-aware")
        if self.since >= self.until:
            raise ReconcileInputError(f"--since ({self.since.isoformat()}) must be before --until")

    def as_dict(self) -> dict[str, str]:
        return {"since": _iso(self.since), "until": _iso(self.until)}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_moment(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 datetime (UTC when it names no zone)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReconcileInputError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def default_window(now: datetime | None = None) -> Window:
    """The previous UTC day."""
    today = (now or timezone.now()).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(today - timedelta(days=1), today)


def window_from_options(*, since: str | None, until: str | None, now: datetime | None = None) -> Window:
    """--since/--until: both default to the previous UTC day; one alone spans a day from it (or to now)."""
    now = (now or timezone.now()).astimezone(UTC).replace(microsecond=0)
    if since is None and until is None:
        return default_window(now)
    if since is None:
        end = parse_moment(until or "")
        return Window(end - timedelta(days=1), end)
    start = parse_moment(since)
    end = parse_moment(until) if until is not None else min(start + timedelta(days=1), now)
    return Window(start, end)


def scheduled_window(now: datetime | None = None) -> Window:
    """The schedule's window: BILLING_RECONCILE_WINDOW_SECONDS ending BILLING_RECONCILE_LAG_SECONDS ago."""
    now = (now or timezone.now()).astimezone(UTC)
    until = (now - timedelta(seconds=settings.BILLING_RECONCILE_LAG_SECONDS)).replace(second=0, microsecond=0)
    return Window(until - timedelta(seconds=settings.BILLING_RECONCILE_WINDOW_SECONDS), until)


def month_bounds(first_day: date, last_day: date) -> list[tuple[date, date]]:
    """(first day, first day of the next month) of every month from first_day's to last_day's."""
    months = []
    start = first_day.replace(day=1)
    while start <= last_day:
        following = (start + timedelta(days=32)).replace(day=1)
        months.append((start, following))
        start = following
    return months
