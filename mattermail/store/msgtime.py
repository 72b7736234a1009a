"""A message's time: its ``Date`` header in UTC (a header without a zone is read as UTC), or the time it was
stored when the header is missing or unreadable; and that time as fixed-width text that sorts as the time
does (``messages.sort_time``, written with the row, indexed: listings filter and order by it in SQL on any
engine, and an index serves "newest N")."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def message_datetime(date_header: str, received: float) -> datetime:
    """The Date header in UTC (naive = UTC); the store time when it is missing or unreadable."""
    try:
        dt = parsedate_to_datetime(date_header) if date_header else None
    except (TypeError, ValueError, IndexError, OverflowError):
        dt = None
    if dt is None:
        return datetime.fromtimestamp(received, UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return datetime.fromtimestamp(received, UTC)


def time_key(dt: datetime) -> str:
    """``dt`` as YYYYMMDDHHMMSSffffff in UTC (naive = UTC)."""
    dt = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    return (f"{dt.year:04d}{dt.month:02d}{dt.day:02d}{dt.hour:02d}{dt.minute:02d}{dt.second:02d}"
            f"{dt.microsecond:06d}")


def sort_time(date_header: str | None, received: float | None) -> str:
    """:func:`message_datetime` as :func:`time_key` text; "" (oldest) for an absurd stored time."""
    try:
        return time_key(message_datetime(date_header or "", received or 0.0))
    except (OverflowError, ValueError, OSError):
        return ""
