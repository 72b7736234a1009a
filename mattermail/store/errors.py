"""What a store failure is: ``StoreError`` (the one class callers catch) and :func:`describe_error`.

SQLite's errors are sqlite3.Error; PostgreSQL's are re-raised as connection.PgError, a subclass of it.
"""

from __future__ import annotations

import sqlite3

from mattermail.store.connection import PgError

# What a store operation raises when the database itself fails (locked past the timeout, disk full,
# unreadable, a broken file, a PostgreSQL server refusing or gone): callers catch this name, never the
# driver's. PostgreSQL errors are re-raised as connection.PgError, a subclass of it.
StoreError: type[Exception] = sqlite3.Error

# What :func:`describe_error` says a StoreError is: the three an admin acts on differently.
BUSY = "busy"            # locked by another process past the timeout: try again
DAMAGED = "damaged"      # not a database, malformed, a bad WAL: verify / restore a backup
UNAVAILABLE = "unavailable"  # cannot be opened or written: permissions, missing directory, disk full, I/O
OTHER = "other"

_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_DAMAGED_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_UNAVAILABLE_CODES = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY,
                      sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_AUTH}


def describe_error(e: BaseException) -> tuple[str, str]:
    """``(kind, text)`` for a store failure: kind is BUSY, DAMAGED, UNAVAILABLE or OTHER, text the
    driver's own words (``database disk image is malformed``). The CLI and the daemons word their
    message from the kind and never name the driver."""
    text = str(e) or type(e).__name__
    if isinstance(e, PgError):
        return _describe_pg(e.sqlstate), text
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        code &= 0xFF  # the primary result code (SQLITE_IOERR_SHORT_READ -> SQLITE_IOERR, ...)
        for kind, codes in ((BUSY, _BUSY_CODES), (DAMAGED, _DAMAGED_CODES), (UNAVAILABLE, _UNAVAILABLE_CODES)):
            if code in codes:
                return kind, text
    low = text.lower()
    if "locked" in low or "busy" in low:
        return BUSY, text
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return DAMAGED, text
    if "unable to open" in low or "readonly" in low or "permission" in low or "disk i/o" in low or "full" in low:
        return UNAVAILABLE, text
    if isinstance(e, OSError):
        return UNAVAILABLE, text
    return OTHER, text


# PostgreSQL SQLSTATE classes and codes (Appendix A of its manual)
_PG_BUSY = {"40001", "40P01", "55P03", "57014"}  # serialization failure, deadlock, lock not available, timeout
_PG_DAMAGED = {"XX001", "XX002"}  # data corrupted, index corrupted
# connection exception, invalid authorization, insufficient resources (disk full, too many connections),
# operator intervention (shutdown, cannot connect now), system error (I/O), no such database, privilege
_PG_UNAVAILABLE_CLASSES = {"08", "28", "53", "57", "58", "3D"}


def _describe_pg(sqlstate: str | None) -> str:
    if sqlstate is None:  # never reached the server: refused, unknown host, timed out
        return UNAVAILABLE
    if sqlstate in _PG_BUSY:
        return BUSY
    if sqlstate in _PG_DAMAGED:
        return DAMAGED
    if sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in ("42501", "25006"):  # privilege, read-only
        return UNAVAILABLE
    return OTHER
