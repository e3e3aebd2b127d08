"""Days are UTC days everywhere in billing (the ledger's summaries bucket by them)."""

from datetime import UTC, date, datetime


def utc_midnight(day: date) -> datetime:
    """The moment `day` starts, in UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
