"""``mattermailctl store migrate``: copy a SQLite store into a PostgreSQL database, idempotently, and verify it.

What is copied: every table that holds data (:data:`TABLES`), each row with its own key (ids included, so
filings, links and the records chain stay right), in key order, in batches of :data:`BATCH` rows, each
batch one transaction on the target: a run that is interrupted (killed, the network gone) leaves whole
batches behind, and the next run goes on from them. The search index is not copied but rebuilt from the
rows (PostgreSQL's ``tsvector``, schema_pg.py): a copied message is queued for indexing by the target's own
trigger and :func:`~mattermail.store.indexer.index_pending` indexes the queue before the run ends. The
identity sequences are then set past the largest id (and past SQLite's ``sqlite_sequence`` for the
outbox, whose ids are never reused).

Raw message files stay content-addressed by SHA-256. By default they are left where they are: the router
host keeps its ``messages_dir``, only the database moves. With ``target_dir`` they are copied there first
(durable before the rows that name them are committed, as a delivery does), and a file already there is
kept (verification re-hashes it).

The source is read in one snapshot (``begin_snapshot``: one SQLite read transaction), so a run while the
router, the milter or the web service write copies the store as of one commit and never half a delivery.
What arrives after that snapshot is copied by the next run: run it once while mail flows, stop the
daemons, run it again (it copies only what changed), set ``[store] url``, start them.

Which target is accepted: an empty database (any schema version: it is migrated first); or an earlier copy
of this source, recognised by its records chain being a prefix of the source's (entry by entry, hash by
hash) and its messages having the source's SHA-256 under the same ids. Such a copy is brought up to the
source's snapshot: new rows inserted, rows changed since (an outbox retry, a revoked token) updated, rows
gone from the source (a deleted message, an expired session) removed. A target whose chain is not a
prefix of the source's (another store's records, or mail filed there since), or a message id with another
SHA-256, is refused before anything is written, naming the table and the row. When the target has no chain
entry at all (a source that never stored a message), any row of the target that differs from the
source's, or that the source lacks, is refused the same way.

Afterwards the target is checked: the row count of every table equals the source snapshot's, its chain's
head is the source's, and :func:`~mattermail.store.verify.verify` (the chain replayed against the tables,
every raw file re-hashed) finds nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mattermail.atomicfile import sync_dir, write_atomic
from mattermail.store import chain, indexer, schema
from mattermail.store.connection import SQLITE, PgConnection, PgError, is_url, redact, without_nul
from mattermail.store.engine import Store, UserError, transaction
from mattermail.store.errors import describe_error

BATCH = 500  # rows per read and per target transaction


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    compare: tuple[str, ...] = ()  # the columns compared with the target's row (default: all)
    triggers_off: tuple[str, ...] = ()  # target triggers that must not fire for copied rows


# Foreign keys first (users before their addresses, messages before their filings); the chain first of all,
# so a target that holds any copied row holds the chain that recognises it as this source's copy.
TABLES: tuple[Table, ...] = (
    Table("chain", ("seq",)),
    Table("users", ("login",)),
    Table("user_addresses", ("login", "address")),
    Table("persons", ("id",)),
    Table("person_addresses", ("person", "address")),
    Table("matters", ("id",)),
    Table("matter_persons", ("matter", "person")),
    Table("aliases", ("address",)),
    Table("disclaimers", ("scope", "key")),
    Table("envelopes", ("ref",)),
    # a message row is never changed (only inserted and deleted): its id and SHA-256 say it all
    Table("messages", ("id",), compare=("id", "sha256")),
    Table("deliveries", ("id",)),
    Table("captures", ("message", "ref")),
    Table("webhooks", ("id",)),
    # the target's trigger would add webhook events for copied filings; the source's are copied instead
    Table("filings", ("id",), triggers_off=("filings_webhooks",)),
    Table("webhook_outbox", ("id",)),
    Table("events", ("id",)),
    Table("outbox", ("id",)),
    Table("holds", ("matter",)),
    Table("thread_keys", ("message", "kind", "key")),
    Table("api_tokens", ("id",)),
    Table("user_roles", ("login",)),
    Table("matter_access", ("matter", "mode", "address")),
    Table("access_log", ("id",)),
    Table("web_sessions", ("session_hash",)),
)

# Source tables not copied: the search index and its queue (rebuilt from the rows on the target), the
# lookup generation (the target's own triggers move it as the rows go in), and SQLite's own bookkeeping
# (sqlite_sequence is read for the outbox's sequence).
DERIVED = ("messages_fts", "messages_fts_data", "messages_fts_idx", "messages_fts_docsize", "messages_fts_config",
           "fts_pending", "lookup_generation", "sqlite_sequence")

# the tables whose ``id`` is an identity column on PostgreSQL (schema_pg.ID)
IDENTITY = ("messages", "deliveries", "persons", "filings", "events", "outbox", "api_tokens", "access_log",
            "webhooks", "webhook_outbox")


class Bar(Protocol):
    def update(self, n: int) -> None: ...


Progress = Callable[[str, int], contextlib.AbstractContextManager[Bar]]
"""``progress(label, length)``: a context manager whose ``update(n)`` advances a bar (ctl: click's)."""


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def no_progress(label: str, length: int) -> Iterator[Bar]:
    yield _NoBar()


@dataclass
class TableResult:
    name: str
    source: int = 0  # rows in the source's snapshot
    copied: int = 0  # inserted (dry run: would be)
    updated: int = 0
    removed: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.copied + self.updated + self.removed


@dataclass(frozen=True)
class Conflict:
    table: str
    key: dict[str, Any]
    what: str

    def line(self) -> str:
        key = ", ".join(f"{k} {v!r}" for k, v in self.key.items())
        return f"table {self.table}, {key}: {self.what}"


@dataclass
class Result:
    target: str  # the URL without its password
    tables: list[TableResult] = field(default_factory=list)
    dry_run: bool = False
    resumed: bool = False  # the target held a copy of this source already
    files_copied: int = 0
    files_dir: Path | None = None  # where the raw files are (the target's messages_dir)
    indexed: int = 0
    chain_length: int = 0
    chain_head: str = chain.GENESIS
    problems: list[str] = field(default_factory=list)  # verification failures
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(t.changed for t in self.tables)

    @property
    def ok(self) -> bool:
        return not self.problems


class ConflictError(UserError):
    """The target holds data that is not this source's: nothing was written."""

    def __init__(self, target: str, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        super().__init__(f"--to: the database {target} holds data that is not this store's: {conflicts[0].line()}"
                         f"{more}; nothing was copied. Migrate into an empty database (or drop and re-create "
                         f"this one if it holds nothing you need)")


# -- opening both ends ---------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` when it is a postgresql:// URL with a database name, else a UserError naming --to."""
    from urllib.parse import urlsplit

    if not is_url(url):
        raise UserError(f"--to: {redact(url)!r} is not a postgresql:// URL (e.g. "
                        "postgresql://mattermail:PASSWORD@db.example/mattermail)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise UserError(f"--to: {redact(url)!r} is not a valid URL: {e}") from None
    if not parts.path.strip("/"):
        raise UserError(f"--to: {redact(url)!r} names no database (postgresql://USER:PASSWORD@HOST/DATABASE)")
    return url


def _scrub(text: str, url: str) -> str:
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    return text.replace(password, "***").replace(unquote(password), "***") if password else text


def open_target(url: str, messages_dir: Path, migrate_schema: bool = True) -> Store | PgConnection:
    """The target store (its schema migrated), or for a dry run only a connection (nothing written)."""
    check_url(url)
    try:
        if migrate_schema:
            return Store(url, messages_dir)
        return PgConnection(url, readonly=True)
    except PgError as e:
        raise UserError(f"--to: cannot use the database {redact(url)}: {_scrub(str(e), url)}") from None


def open_source(path: Path, messages_dir: Path) -> Store:
    if is_url(str(path)):
        raise UserError(f"--from: {redact(str(path))!r} is a URL; the source is a SQLite store file")
    if not Path(path).is_file():
        raise UserError(f"--from: no store at {path} (the SQLite file, [store] path)")
    store = Store(path, messages_dir)
    if store.engine != SQLITE:  # pragma: no cover - a path is always SQLite
        raise UserError(f"--from: {path} is not a SQLite store")
    return store


# -- comparing ----------------------------------------------------------------------------------------


def _columns(src: Any, dst: Any, t: Table) -> list[str]:
    cols = [r[1] for r in src.execute(f"PRAGMA table_info({t.name})")]
    if not cols:
        raise UserError(f"the source store has no table {t.name} (schema version {schema.version(src)})")
    have = {r[0] for r in dst.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_schema = current_schema() AND table_name = ?", [t.name])}
    missing = [c for c in cols if c not in have]
    if missing:
        raise UserError(f"--to: the target's table {t.name} lacks column(s) {', '.join(missing)}: its schema is "
                        f"not this mattermail's (version {schema.version(dst)})")
    return cols


@dataclass
class _Batch:
    rows: list[tuple]  # the source's rows of this key range
    insert: list[tuple]
    update: list[tuple]
    extra: list[tuple]  # keys on the target only
    differ: list[tuple]  # keys whose row differs
    unchanged: int


def _scan(src: Any, dst: Any, t: Table, cols: list[str], extras: bool = True) -> Iterator[_Batch]:
    """The source's rows in key order, a batch at a time, each with the target's rows of the same keys; then
    (``extras``) one last batch of the target's keys that the source lacks (looked for only when the target
    has more rows than were matched).

    Rows are compared as PostgreSQL holds them: text with NUL as U+FFFD (connection.without_nul), so a
    subject or thread key with a NUL matches its copy."""
    keys = ", ".join(t.key)
    krow = f"({keys})"
    marks = "(" + ", ".join("?" * len(t.key)) + ")"
    compare = list(t.compare or cols)
    ci = [cols.index(c) for c in compare]
    ki = [cols.index(k) for k in t.key]
    tki = [compare.index(k) for k in t.key]
    select = ", ".join(cols)
    last: tuple | None = None
    matched = 0
    while True:
        where, params = ("", []) if last is None else (f" WHERE {krow} > {marks}", list(last))
        raw = src.execute(f"SELECT {select} FROM {t.name}{where} ORDER BY {keys} LIMIT ?",
                          [*params, BATCH]).fetchall()
        if not raw:
            break
        last = tuple(raw[-1][i] for i in ki)
        rows = [tuple(without_nul(r)) for r in raw]
        wanted = [tuple(r[i] for i in ki) for r in rows]
        there = {tuple(r[i] for i in tki): tuple(r) for r in dst.execute(
            f"SELECT {', '.join(compare)} FROM {t.name} WHERE {krow} IN ({', '.join([marks] * len(wanted))})",
            [v for k in wanted for v in k])}
        b = _Batch(rows, [], [], [], [], 0)
        for r, k in zip(rows, wanted):
            theirs = there.get(k)
            if theirs is None:
                b.insert.append(r)
            elif theirs == tuple(r[i] for i in ci):
                b.unchanged += 1
            else:
                b.update.append(r)
                b.differ.append(k)
        matched += len(there)
        yield b
    extra: list[tuple] = []
    if extras and int(dst.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0]) > matched:
        mine = {tuple(without_nul(r)) for r in src.execute(f"SELECT {keys} FROM {t.name}")}
        extra = [tuple(r) for r in dst.execute(f"SELECT {keys} FROM {t.name} ORDER BY {keys}")
                 if tuple(r) not in mine]
    yield _Batch([], [], [], extra, [], 0)


def _key(t: Table, k: tuple) -> dict[str, Any]:
    return dict(zip(t.key, k))


@dataclass
class _Plan:
    tables: dict[str, TableResult]
    extra: dict[str, list[tuple]]
    conflicts: list[Conflict]
    resumed: bool


def _plan(src: Any, dst: Any, bar: Bar) -> _Plan:
    """Compare every table (nothing written): what a run would insert, update and remove, or the conflicts."""
    plan = _Plan({}, {}, [], False)
    for t in TABLES:
        cols = _columns(src, dst, t)
        res = plan.tables[t.name] = TableResult(t.name)
        extra = plan.extra[t.name] = []
        for b in _scan(src, dst, t, cols):
            res.source += len(b.rows)
            res.copied += len(b.insert)
            res.unchanged += b.unchanged
            bar.update(len(b.rows))
            strict = t.name == "chain" or not plan.resumed
            for k in b.differ:
                if strict or t.name == "messages":
                    what = "holds another SHA-256" if t.name == "messages" else "differs from the source's row"
                    if t.name == "chain":
                        what = "differs from the source's entry (another store's records)"
                    plan.conflicts.append(Conflict(t.name, _key(t, k), what))
                else:
                    res.updated += 1
            for k in b.extra:
                if strict:
                    what = ("is on the target but not in the source (another store's records, or mail filed on "
                            "the target since)" if t.name == "chain" else "is on the target but not in the source")
                    plan.conflicts.append(Conflict(t.name, _key(t, k), what))
                else:
                    extra.append(k)
            res.removed = len(extra)
        if t.name == "chain":
            # the target's chain is a prefix of the source's: an earlier copy of this very store
            plan.resumed = not plan.conflicts and res.unchanged > 0
        if len(plan.conflicts) >= 20:
            break
    return plan


# -- copying -------------------------------------------------------------------------------------------


def _copy_files(source: Store, target_dir: Path, ids: list[tuple[int, str]], bar: Bar) -> int:
    """Copy each message's raw file into ``target_dir`` (content-addressed, as there), durable; files already
    there are kept. Returns how many were copied."""
    copied = 0
    dirs: set[Path] = set()
    for mid, sha in ids:
        dest = target_dir / sha[:2] / f"{sha}.eml"
        bar.update(1)
        if dest.exists():
            continue
        src = source.blob_path(sha)
        try:
            data = src.read_bytes()
        except FileNotFoundError:
            raise UserError(f"message {mid}: its raw file {src} is missing (run `mattermailctl store verify` on "
                            f"the source)") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise UserError(f"message {mid}: its raw file {src} does not hash to its SHA-256 (run "
                            f"`mattermailctl store verify` on the source)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data, mode=0o600, sync_directory=False)
        dirs.add(dest.parent)
        copied += 1
    for d in dirs:
        sync_dir(d)
    if dirs:
        sync_dir(target_dir)
    return copied


def _apply(src: Any, target: Store, plan: _Plan, bar: Bar) -> dict[str, TableResult]:
    db = target.db
    # rows gone from the source first, foreign keys last-in first-out (a unique value they hold may come back)
    for t in reversed(TABLES):
        keys = plan.extra.get(t.name) or []
        where = " AND ".join(f"{k} = ?" for k in t.key)
        for i in range(0, len(keys), BATCH):
            with transaction(target):
                db.executemany(f"DELETE FROM {t.name} WHERE {where}", keys[i:i + BATCH])
    done: dict[str, TableResult] = {}
    for t in TABLES:
        cols = _columns(src, db, t)
        res = done[t.name] = TableResult(t.name, removed=len(plan.extra.get(t.name) or []))
        insert = (f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})")
        others = [c for c in cols if c not in t.key]
        update = (f"UPDATE {t.name} SET {', '.join(f'{c} = ?' for c in others)} "
                  f"WHERE {' AND '.join(f'{k} = ?' for k in t.key)}")
        oi = [cols.index(c) for c in others]
        ki = [cols.index(k) for k in t.key]
        for b in _scan(src, db, t, cols, extras=False):  # (the plan's extras are removed already)
            res.source += len(b.rows)
            res.unchanged += b.unchanged
            if b.insert or b.update:
                with transaction(target):  # (a failure rolls the trigger switch back with the rows)
                    for trig in t.triggers_off:
                        db.execute(f"ALTER TABLE {t.name} DISABLE TRIGGER {trig}")
                    if b.insert:
                        _insert(db, insert, b.insert, t, ki)
                    if b.update:
                        db.executemany(update, [[r[i] for i in oi] + [r[i] for i in ki] for r in b.update])
                    for trig in t.triggers_off:
                        db.execute(f"ALTER TABLE {t.name} ENABLE TRIGGER {trig}")
                res.copied += len(b.insert)
                res.updated += len(b.update)
            bar.update(len(b.rows))
    return done


def _insert(db: Any, sql: str, rows: list[tuple], t: Table, ki: list[int]) -> None:
    try:
        db.executemany(sql, rows)
    except PgError as e:
        if describe_error(e)[0] == "unavailable":  # the server, not these rows: migrate_store says so
            raise
        first, last = (tuple(r[i] for i in ki) for r in (rows[0], rows[-1]))
        raise UserError(f"table {t.name}: the rows from {_key(t, first)} to {_key(t, last)} cannot be written to "
                        f"the target: {' '.join(str(e).split())}") from None


def _advance_sequences(src: Any, target: Store) -> None:
    """Every identity sequence past the largest id copied (the outbox's past SQLite's AUTOINCREMENT high-water
    mark, whose ids are never reused); never moved backwards."""
    autoinc = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    with transaction(target):
        for name in IDENTITY:
            top = target.db.execute(f"SELECT MAX(id) FROM {name}").fetchone()[0] or 0
            seq = target.db.execute("SELECT pg_get_serial_sequence(?, 'id')", [name]).fetchone()[0]
            used = target.db.execute("SELECT pg_sequence_last_value(?::regclass)", [seq]).fetchone()[0] or 0
            value = max(int(top), int(autoinc.get(name) or 0), int(used))
            if value > 0:
                target.db.execute("SELECT setval(?::regclass, ?)", [seq, value])


def _counts(db: Any) -> dict[str, int]:
    return {t.name: int(db.execute(f"SELECT COUNT(*) FROM {t.name}").fetchone()[0]) for t in TABLES}


def unknown_tables(source: Store) -> list[str]:
    """Tables of the source that migrate neither copies nor rebuilds (a new migration must be added to TABLES)."""
    names = [r[0] for r in source.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    known = {t.name for t in TABLES} | set(DERIVED)
    return [n for n in names if n not in known and not n.startswith("sqlite_")]


# -- the whole run -------------------------------------------------------------------------------------


def migrate_store(source: Store, url: str, target_dir: Path | None = None, dry_run: bool = False,
                  progress: Progress = no_progress) -> Result:
    """Copy ``source`` (SQLite) into the PostgreSQL database at ``url``; see the module docstring.

    ``target_dir``: copy the raw files there (None: they stay in ``source.messages_dir``). ``dry_run``:
    compare only and say what a run would copy (nothing written, not even the target's schema). Raises
    :class:`ConflictError` (nothing written) when the target holds other data, UserError naming the field
    for a bad URL or an unreachable database."""
    started = time.monotonic()
    if source.engine != SQLITE:
        raise UserError(f"--from: the store {source.path} is on PostgreSQL already; migrate copies a SQLite store")
    unknown = unknown_tables(source)
    if unknown:
        raise UserError(f"the source has table(s) {', '.join(unknown)} that store migrate does not know: this "
                        "mattermail is older than the store")
    files_dir = Path(target_dir) if target_dir is not None else source.messages_dir
    target = open_target(url, files_dir, migrate_schema=not dry_run)
    result = Result(redact(url), dry_run=dry_run, files_dir=files_dir)
    try:
        tdb = target.db if isinstance(target, Store) else target
        if dry_run and schema.version(tdb) == 0:  # a new database: everything is new
            src = source.db
            src.begin_snapshot()
            try:
                result.tables = [TableResult(n, source=c, copied=c) for n, c in _counts(src).items()]
            finally:
                src.execute("COMMIT")
            result.seconds = time.monotonic() - started
            return result
        if schema.version(tdb) != schema.version(source.db):
            raise UserError(f"--to: the target's schema is version {schema.version(tdb)}, this mattermail's "
                            f"{schema.version(source.db)}: a dry run cannot compare them (a run without "
                            "--dry-run upgrades the target's schema first)")
        _run(source, target, tdb, result, progress)
    except PgError as e:  # the target went away, or refused a statement: what was committed stays
        raise UserError(f"--to: the database {result.target} failed: {' '.join(_scrub(str(e), url).split())}; "
                        "the batches copied so far are kept: run store migrate again to go on from there") from None
    finally:
        with contextlib.suppress(PgError):
            target.close()
    result.seconds = time.monotonic() - started
    return result


def _run(source: Store, target: Store | PgConnection, tdb: Any, result: Result, progress: Progress) -> None:
    src = source.db
    src.begin_snapshot()  # one commit of the source throughout, while the router writes
    try:
        counts = _counts(src)
        total = sum(counts.values())
        with progress("comparing with the target", total) as bar:
            plan = _plan(src, tdb, bar)
        if plan.conflicts:
            raise ConflictError(result.target, plan.conflicts)
        result.resumed = plan.resumed
        if result.dry_run:
            result.tables = list(plan.tables.values())
            return
        assert isinstance(target, Store)
        # (a message kept in its row, messages.raw, has no file: it moves with the rows)
        live = src.execute("SELECT id, sha256 FROM messages WHERE raw IS NULL ORDER BY id").fetchall()
        if result.files_dir != source.messages_dir:
            with progress("copying raw messages", len(live)) as bar:
                result.files_copied = _copy_files(source, target.messages_dir, live, bar)
        with progress("copying rows", total) as bar:
            result.tables = list(_apply(src, target, plan, bar).values())
        _advance_sequences(src, target)
        head = chain.head_of(src)
    finally:
        if src.in_transaction:
            src.execute("COMMIT")
    with progress("indexing for search", indexer.pending_count(target)) as bar:
        while n := indexer.index_pending(target, BATCH):
            result.indexed += n
            bar.update(n)
    _check(target, counts, head, result, progress)


def _check(target: Store, counts: dict[str, int], head: tuple[int, str], result: Result,
           progress: Progress) -> None:
    """The target against the source's snapshot: counts, chain head, then store verify (chain, tables, files)."""
    from mattermail.store.verify import verify

    got = _counts(target.db)
    for name, n in counts.items():
        if got[name] != n:
            result.problems.append(f"table {name}: {got[name]} rows on the target, {n} in the source")
    result.chain_length, result.chain_head = chain.head_of(target.db)
    if (result.chain_length, result.chain_head) != head:
        result.problems.append(f"table chain: the target's head is entry {result.chain_length} "
                               f"{result.chain_head}, the source's entry {head[0]} {head[1]}")
    live = counts["messages"]

    def wrap(items):
        with progress("verifying (chain, raw files)", live) as bar:
            for item in items:
                bar.update(1)
                yield item

    rep = verify(target, wrap)
    result.problems += [p.line() for p in rep.problems]
    if rep.files != live:
        result.problems.append(f"{rep.files} raw files re-hashed for {live} messages")


__all__ = ["BATCH", "Conflict", "ConflictError", "DERIVED", "Result", "TABLES", "TableResult", "check_url",
           "migrate_store", "no_progress", "open_source"]
