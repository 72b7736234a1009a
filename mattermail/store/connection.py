"""The engine seam: one small connection wrapper per database engine, with the few dialect differences.

Query modules speak to ``store.db``, an :class:`SqliteConnection` or a :class:`PgConnection`, and write
portable SQL with ``?`` placeholders:

* ``db.execute(sql, params)`` returns a cursor (``fetchone``, ``fetchall``, iteration, ``rowcount``);
  ``db.executemany(sql, rows)``;
* ``db.defer(sql, params)`` runs a statement whose result nobody reads (an ``INSERT`` of a log row, a
  ``SAVEPOINT``) inside a transaction: SQLite runs it at once; PostgreSQL queues it and sends it in one
  pipeline with the next statement (one round trip for both, the router's per-message cost): an error in
  it is raised by that next statement (at the latest the ``RELEASE`` or ``COMMIT``, which engine.py's
  transaction handles). Outside a transaction it runs at once on both. ``merge=True`` (a plain ``INSERT
  ... VALUES (?, ...)`` of independent rows, e.g. chain entries): PostgreSQL adds the row to the same
  statement queued earlier in this savepoint, one multi-row ``INSERT`` for all;
* ``db.insert(sql, params)`` runs an ``INSERT`` into a table whose key is ``id`` and returns the new id
  (SQLite: ``lastrowid``; PostgreSQL: ``RETURNING id``);
* ``db.in_transaction``; ``db.begin()`` (the write transaction: SQLite ``BEGIN IMMEDIATE``, PostgreSQL
  ``BEGIN``) and ``db.begin_snapshot()`` (a read transaction that sees one commit throughout);
* ``db.engine`` (``"sqlite"`` or ``"postgresql"``): the modules that need engine-specific SQL (schema,
  full-text search, the records chain's lock, date order) branch on it, and nothing else does.

Portable SQL: ``INSERT ... ON CONFLICT DO NOTHING`` (never ``INSERT OR IGNORE``), ``ON CONFLICT (...) DO
UPDATE SET x = excluded.x``, ``COALESCE``, ``LIMIT ?``; no ``rowid``, no ``PRAGMA``, no ``%`` outside a
string literal is needed (it is escaped for psycopg).

The SQLite wrapper binds the driver's own methods (``execute = conn.execute``): no call in between, so the
router's per-row cost is what it was. psycopg is imported only when a PostgreSQL store is opened (its
import costs ~0.1 s, which every ``mattermailctl`` run would pay), and its errors are re-raised as
:class:`PgError` (a :data:`~mattermail.store.errors.StoreError`), keeping the SQLSTATE.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_PG_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: object) -> bool:
    """Whether a store location is a PostgreSQL URL (else a SQLite file path)."""
    return isinstance(location, str) and location.startswith(_PG_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class SqliteConnection:
    """A sqlite3 connection in autocommit mode (transactions are explicit, engine.transaction)."""

    engine = SQLITE
    lost = False  # a file: there is no server connection to lose

    def __init__(self, conn: sqlite3.Connection, busy_timeout: float = 30.0) -> None:
        self.conn = conn
        self.busy_timeout = busy_timeout  # seconds :meth:`begin` waits for the write lock (as connect's timeout)
        # the driver's bound methods: no wrapper call per statement
        self.execute = conn.execute
        self.defer = lambda sql, params=(), merge=False: conn.execute(sql, params)  # no round trips to save
        self.executemany = conn.executemany
        self._functions: set[str] = set()

    def function(self, name: str, nargs: int, fn: Callable[..., Any]) -> None:
        """Make the Python function ``fn`` callable in SQL as ``name`` (deterministic), once per connection."""
        if name not in self._functions:
            self.conn.create_function(name, nargs, fn, deterministic=True)
            self._functions.add(name)

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.execute(sql, params).lastrowid)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    # The records chain's head as this connection's write transaction left it (``chain_head``: (seq, hash) of
    # its last append, so the next append needs no SELECT: nobody else can append while it holds the write
    # lock). Forgotten when a transaction begins and when a savepoint is rolled back (engine._Tx); read only
    # inside a transaction.
    chain_head: tuple[int, str] | None = None

    def begin(self) -> None:
        """``BEGIN IMMEDIATE``: the write lock now (one writer at a time), waiting up to ``busy_timeout``.

        The wait is ours, not SQLite's busy handler's: that one sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between
        tries, so a writer that finds the lock held for 3 ms (a router batch's commit) sleeps 8 ms, with the
        CPU idle and its SMTP session or LMTP delivery waiting (bench/outbound end to end: the milter's
        envelope records took a median 10-25 ms, 0.3 ms without the router writing). Here the tries are
        0.1 ms apart at first, growing to 1 ms; the connection's busy timeout is 0 for the ``BEGIN`` only."""
        conn = self.conn
        self.chain_head = None
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline, pause = 0.0, 0.0001
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if e.sqlite_errorcode != sqlite3.SQLITE_BUSY:  # type: ignore[attr-defined]
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self.busy_timeout
                    if now >= deadline:
                        raise
                time.sleep(pause)
                pause = min(pause * 1.5, 0.001)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def begin_snapshot(self) -> None:
        self.chain_head = None
        self.conn.execute("BEGIN")  # deferred: the first read fixes the WAL snapshot

    def close(self) -> None:
        self.conn.close()


class PgError(sqlite3.Error):
    """A PostgreSQL failure (re-raised from psycopg): ``sqlstate`` is its SQLSTATE code, or None when the
    server was never reached (connection refused, bad host). A subclass of the class callers already catch
    as ``StoreError`` (sqlite3.Error), so that name stays one class (``except``, ``raise StoreError(...)``)."""

    def __init__(self, text: str, sqlstate: str | None = None) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


def _pg_error(e: BaseException) -> PgError:
    diag = getattr(e, "diag", None)
    text = (getattr(diag, "message_primary", None) or str(e) or type(e).__name__).strip()
    return PgError(text, getattr(e, "sqlstate", None))


NUL_STANDIN = "\ufffd"  # what a NUL character in text becomes on PostgreSQL (its text type cannot hold one)


def without_nul(values: Sequence[Any]) -> list[Any]:
    """``values`` with every NUL character in a string replaced by :data:`NUL_STANDIN`.

    PostgreSQL's ``text`` cannot hold U+0000, which attacker-controlled text (a header, a body part) may carry:
    such a value is stored with U+FFFD in its place instead of failing the delivery (4xx, forever). SQLite
    stores it as given."""
    return [v.replace("\x00", NUL_STANDIN) if isinstance(v, str) else v for v in values]


def _nul_free(values: Sequence[Any] | None) -> Sequence[Any]:
    """``values`` as they are, or :func:`without_nul` of them when a string holds a NUL: for statements whose
    refusal cannot be retried (queued in a pipeline, or one row of several)."""
    if values and any(isinstance(v, str) and "\x00" in v for v in values):
        return without_nul(values)
    return values or ()


def _has_nul(e: BaseException) -> bool:
    # psycopg refuses the value while adapting it, before anything is sent: the transaction is untouched
    return "NUL (0x00)" in str(e)


@functools.lru_cache(maxsize=1024)  # bounded: some texts are one-offs (SAVEPOINT tx<n>, IN lists of any length)
def pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (``%`` escaped), cached per statement text."""
    return sql.replace("%", "%%").replace("?", "%s")


# libpq settings the URL may override. Over TCP a server that stops answering (a network partition, a host
# gone) would otherwise hold a statement until the kernel gives up (~15 min): the milter's sessions queue
# behind its connection. With these, a connection that has sent data unacknowledged for 15 s, or an idle one
# whose keepalives go unanswered for ~40 s, fails (StoreError: the milter defers, the next look-up reconnects).
# Unix-socket connections ignore them.
TCP_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "10",
                "keepalives_count": "3", "tcp_user_timeout": "15000"}


class PgConnection:
    """A psycopg 3 connection in autocommit mode (transactions are explicit, as on SQLite).

    ``durable=False`` sets ``synchronous_commit = off`` for the session: a commit survives any process
    crash but a server crash may lose the last ones, as SQLite's synchronous=NORMAL (the milter)."""

    engine = POSTGRESQL

    def __init__(self, url: str, durable: bool = True, readonly: bool = False) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - install_requires has it
            raise PgError(f"psycopg is not installed ({e}): a postgresql:// store needs it") from None
        from psycopg.pq import TransactionStatus

        self._psycopg = psycopg
        self._open = (TransactionStatus.INTRANS, TransactionStatus.INERROR)  # INERROR: failed, not yet rolled back
        try:
            given = psycopg.conninfo.conninfo_to_dict(url)
            self.conn = psycopg.connect(url, autocommit=True, application_name="mattermail",
                                        **{k: v for k, v in TCP_DEFAULTS.items() if k not in given})
            if not durable:
                self.conn.execute("SET synchronous_commit = off")
            if readonly:
                self.conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as e:
            raise _pg_error(e) from e

    # Whether this transaction holds the records chain's advisory lock (chain.append_db takes it once per
    # transaction), and while it does, the chain's head as this transaction left it (``chain_head``: (seq,
    # hash) of its last append, so the next append needs no SELECT). A lock taken inside a savepoint that is
    # rolled back is released with it, so any BEGIN, COMMIT or ROLLBACK (TO) forgets both; RELEASE hands
    # them to the enclosing transaction.
    chain_locked = False
    chain_head: tuple[int, str] | None = None

    def execute(self, sql: str, params: Sequence[Any] | None = ()) -> Any:
        if self.chain_locked and sql.startswith(("ROLLBACK", "COMMIT", "BEGIN")):
            self.chain_locked, self.chain_head = False, None
        if self._later:
            return self._pipelined(sql, params)
        try:
            return self.conn.execute(pg_sql(sql), params or ())
        except self._psycopg.DataError as e:
            if not _has_nul(e):
                raise _pg_error(e) from e
        except self._psycopg.Error as e:
            raise _pg_error(e) from e
        try:  # (the rare value with a NUL: not checked for on every statement)
            return self.conn.execute(pg_sql(sql), without_nul(params or ()))
        except self._psycopg.Error as e:
            raise _pg_error(e) from e

    # deferred statements, in order: [sql, params, rows] (rows > 1: a merged multi-row INSERT); an instance
    # list once one is queued
    _later: list[list[Any]] = []

    def defer(self, sql: str, params: Sequence[Any] | None = (), merge: bool = False) -> None:
        """Queue a statement whose result nobody reads, sent with the next :meth:`execute` (module docstring)."""
        if not self.in_transaction:  # nothing would send it before the caller moves on
            self.execute(sql, params)
            return
        if not self._later:
            self._later = []
        params = _nul_free(params)  # (a failed adaptation inside the pipeline would end the transaction)
        q = pg_sql(sql)
        if merge:  # join the same INSERT queued since the last savepoint: rows of other tables may lie between
            for item in reversed(self._later):
                if item[0] == q:
                    item[1] = [*item[1], *params]
                    item[2] += 1
                    return
                if item[0].startswith("SAVEPOINT"):
                    break
        self._later.append([q, params, 1])

    def _pipelined(self, sql: str, params: Sequence[Any] | None) -> Any:
        """The queued statements and ``sql`` in one pipeline (one round trip); ``sql``'s cursor. Before a
        ROLLBACK the queued statements are sent on their own and their error, if any, is the reason for the
        rollback: it is not raised (the rollback clears it)."""
        later, self._later = self._later, []
        rollback = sql.startswith("ROLLBACK")  # ("": the queued statements alone, for executemany)
        cur = None
        try:
            with self.conn.pipeline():
                for q, p, rows in later:
                    self.conn.execute(_rows(q, rows), p)
                if sql and not rollback:
                    cur = self.conn.execute(pg_sql(sql), _nul_free(params))
        except self._psycopg.Error as e:
            if not rollback:
                raise _pg_error(e) from e
        if rollback:
            return self.execute(sql, params)
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        if self._later:  # the deferred statements first, in order
            self._pipelined("", ())
        # checked before any row is sent: a row refused half-way through would leave the rows before it sent
        rows = [_nul_free(r) for r in rows]
        try:
            cur = self.conn.cursor()
            cur.executemany(pg_sql(sql), rows)
            return cur
        except self._psycopg.Error as e:
            raise _pg_error(e) from e

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.execute(sql + " RETURNING id", params).fetchone()[0])

    @property
    def lost(self) -> bool:
        """Whether the server connection is gone (the server was stopped or restarted, the network cut):
        psycopg closes it at the first statement that meets the loss; only a new connection helps."""
        return self.conn.closed or self.conn.broken

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status in self._open

    def begin(self) -> None:
        self.execute("BEGIN")

    def begin_snapshot(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def close(self) -> None:
        self._later = []
        self.conn.close()


def _rows(sql: str, rows: int) -> str:
    """``INSERT ... VALUES (%s, ...) [suffix]`` with its VALUES tuple ``rows`` times."""
    if rows == 1:
        return sql
    i = sql.index(" VALUES (") + len(" VALUES ")
    j = sql.index(")", i) + 1
    return sql[:i] + ", ".join([sql[i:j]] * rows) + sql[j:]


Connection = SqliteConnection | PgConnection
