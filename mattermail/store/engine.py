"""The store: one SQLite file (WAL) or a PostgreSQL database, plus raw messages as files named by SHA-256.

Every reader and writer goes through this package (mattermail.store), so the database can be
replaced later without touching the router, the milter or the CLI.

Durability order for a delivery (see DESIGN.md "Store"): a message of at most ``store.inline_max`` bytes
goes into its database row (``messages.raw``) and is durable with the commit. A larger raw message is
written to a temp file and renamed to ``<sha256[:2]>/<sha256>.eml``; the file and
its rename are made durable (the router's batches: one syncfs(2) of the store's
file system, :meth:`Store.sync_blobs`; otherwise an fsync of the file and its
directory); only then is the database row committed, and only after the commit
does the LMTP server answer ``250``. A message delivered
twice (Postfix retrying after a crash) is stored once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mattermail.atomicfile import sync_dir, sync_filesystem, write_atomic
from mattermail.store import schema
from mattermail.store.connection import SQLITE, Connection, PgConnection, SqliteConnection, is_url, redact


class UserError(Exception):
    """A store operation that cannot be done; the message names the field."""


def normalise_address(address: str) -> str:
    """Lower-case the domain (local parts are case-sensitive in theory, not in practice)."""
    return address.strip().strip("<>").lower()


class Store:
    """An open store: the database and the directory of raw message files.

    ``location``: the SQLite file (a path; the default) or a ``postgresql://`` URL (connection.py). Raw
    message files live in ``messages_dir`` on this host with either engine.

    ``durable=True`` (the router, ctl): a commit is on disk before it returns, power cut included.
    ``durable=False`` (the milter's envelope records): a commit survives any process crash, but a
    power cut may lose the last ones (SQLite WAL with synchronous=NORMAL; PostgreSQL
    synchronous_commit=off; see milter/runtime.py).

    ``batches=True`` (the router's writer: a batch transaction with a savepoint per message, engine._Tx):
    on SQLite, what a savepoint must be able to undo stays in memory (``temp_store = MEMORY``). Otherwise
    SQLite writes it to a temp file in /var/tmp once it passes 64 KiB: the original of every page a
    message's rows touch (~80 KB per 4 KB capture copy: 40 writes per message, created and removed per
    batch, measured with strace in bench/outbound end to end). It is freed at each RELEASE.
    """

    def __init__(self, location: Path | str, messages_dir: Path, durable: bool = True,
                 batches: bool = False) -> None:
        # who the records chain names for changes made through this store (mattermailctl: the admin)
        self.actor = "router"
        self.messages_dir = Path(messages_dir)
        self._dirs: set[Path] = set()  # hash directories known to exist
        self._spool_dir = str(self.messages_dir / SPOOL_DIR)  # spool_dir as text, for each BlobWriter
        self._durable = durable
        self.db: Connection
        if is_url(location):
            self.location: Path | str = str(location)
            self.path: Path | str = redact(str(location))  # what messages name (no password)
            self.db = PgConnection(str(location), durable=durable)
            self._identity: tuple[int, int] | None = None
        else:
            self.location = self.path = Path(location)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db = SqliteConnection(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced (the router answers 250 only after it).
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            if batches:
                conn.execute("PRAGMA temp_store=MEMORY")
            self._identity = _identity(self.path)  # the file this connection reads (see replaced)
            self._wal_path = f"{self.path}-wal"
        self._wal_identity: tuple[int, int] | None = None
        try:
            self.migrate()
        except BaseException:
            self.db.close()
            raise

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.db.engine

    # -- schema ------------------------------------------------------------
    def schema_version(self) -> int:
        return schema.version(self.db)

    def migrate(self) -> None:
        schema.migrate(self.db)

    def close(self) -> None:
        self.db.close()

    def reconnect(self) -> bool:
        """A new PostgreSQL connection when the old one was lost (:attr:`PgConnection.lost`), for a long-lived
        process (the router) that would otherwise fail every statement until restarted; True when it made one.
        Call it only between transactions. Raises StoreError while the server is still unreachable."""
        if not self.db.lost:
            return False
        new = PgConnection(str(self.location), durable=self._durable)
        old, self.db = self.db, new
        old.close()
        return True

    def replaced(self) -> bool:
        """Whether the database file at :attr:`path` is no longer the one this connection opened (removed,
        or another file put in its place, as by a restore into a fresh store), or its WAL file was replaced
        or removed while this connection had it open (SQLite removes it only when the last connection
        closes): a long-lived reader (the milter) then reopens, or it would go on reading the old rows.
        Always False on PostgreSQL: the server owns its files, a connection always reads the live database."""
        if self.db.engine != SQLITE:
            return False
        assert isinstance(self.path, Path)
        if self._identity is None:  # created by this connection: remember the file it made
            self._identity = _identity(self.path)
            return False
        if _identity(self.path) != self._identity:
            return True
        wal = _identity(self._wal_path)
        if self._wal_identity is None:  # the WAL is made at the first read: remember it when seen
            self._wal_identity = wal
            return False
        return wal != self._wal_identity

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (SQLite ends one by itself on some errors: a batch checks)."""
        return self.db.in_transaction

    # -- raw messages --------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.messages_dir / sha256[:2] / f"{sha256}.eml"

    def write_blob(self, raw: bytes, sync_dir: bool = True, sync_file: bool = True,
                   sha256: str | None = None) -> tuple[str, Path]:
        """Write ``raw`` durably under its SHA-256 (tmp, fsync, rename, fsync dir).

        ``sync_dir=False`` leaves the directory fsync to the caller (:meth:`sync_blobs` before the
        commit): the router's batches sync once per batch. ``sync_file=False`` leaves the file's too.
        ``sha256``: ``raw``'s, when the caller computed it as it received the bytes (a BlobWriter's)."""
        sha = sha256 or hashlib.sha256(raw).hexdigest()
        dest = self.blob_path(sha)
        if dest.exists():
            return sha, dest
        self._hash_dir(dest)
        try:
            write_atomic(dest, raw, mode=0o600, sync_directory=sync_dir, sync_file=sync_file)
        except FileNotFoundError:  # the directory was removed since
            self._hash_dir(dest, again=True)
            write_atomic(dest, raw, mode=0o600, sync_directory=sync_dir, sync_file=sync_file)
        return sha, dest

    def _hash_dir(self, dest: Path, again: bool = False) -> None:
        """Make ``dest``'s hash directory once per process (mkdir of an existing directory still takes its
        parent's lock); ``again``: it was removed since, make it anew."""
        if again or dest.parent not in self._dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(dest.parent)

    @property
    def spool_dir(self) -> Path:
        """Where messages being received are written (``.tmp-*`` files) before :meth:`adopt`."""
        return self.messages_dir / SPOOL_DIR

    def spool(self) -> BlobWriter:
        """A writer for a message being received (see :class:`BlobWriter`): a temp file in the spool
        directory once the message outgrows its buffer (the directory made then if it is missing)."""
        return BlobWriter(self._spool_dir)

    def adopt(self, spooled: Spooled, sync_file: bool = True) -> Path:
        """Make a finished :class:`BlobWriter` file the durable blob of its SHA-256 (fsync, rename; the
        caller syncs with :meth:`sync_blobs` before its commit, as after ``write_blob(sync_dir=False)``;
        ``sync_file=False`` leaves the file's fsync to that too). When that blob exists already, the temp
        file is removed."""
        assert spooled.path is not None, "a message received in memory is stored with write_blob"
        dest = self.blob_path(spooled.sha256)
        if dest.exists():
            Path(spooled.path).unlink(missing_ok=True)
            return dest
        self._hash_dir(dest)
        if sync_file:
            fd = os.open(spooled.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.rename(spooled.path, dest)
        except FileNotFoundError:
            if not Path(spooled.path).exists():
                raise
            self._hash_dir(dest, again=True)  # the hash directory was removed under us
            os.rename(spooled.path, dest)
        return dest

    @property
    def durable(self) -> bool:
        return self._durable

    def sync_wal(self) -> None:
        """fdatasync the SQLite WAL file: every commit written to it so far is on disk (see :class:`_Tx`).
        Without a WAL file (it is removed only when the last connection closes), the database file. Its data
        and size, not its times: what SQLite's own WAL sync does on Linux, and no journal commit of the file
        system for a WAL that only changed in place."""
        assert isinstance(self.path, Path)
        try:
            fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def sync_blobs(self, dirs: Iterable[Path], whole_filesystem: bool) -> None:
        """Make the blobs written with ``sync_dir=False`` durable before the commit that names them:
        ``whole_filesystem`` — one syncfs(2) of the store's file system (the files were written with
        ``sync_file=False``: their data, inodes and renames in one flush); else an fsync of each
        directory (the files were fsynced one by one)."""
        if whole_filesystem:
            sync_filesystem(self.messages_dir)
            return
        for d in dirs:
            sync_dir(d)

    def count(self, table: str) -> int:
        if not table.isidentifier():
            raise ValueError(f"table: {table!r}")
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


SPOOL_DIR = ".spool"  # under messages_dir: messages being received (``.tmp-*`` files, see recover_stale_tmp)


@dataclass(frozen=True)
class Spooled:
    """A message received by :class:`BlobWriter`: in a temp file (``path``), not durable until
    :meth:`Store.adopt`; or, when it was smaller than the writer's buffer, in memory (``data``, ``path`` None),
    for :meth:`Store.write_blob`."""

    path: Path | None
    sha256: str
    size: int
    data: bytes | None = None


class BlobWriter:
    """A message received while its SHA-256 is computed, so the receiver never holds more than ``_FLUSH``
    bytes of it: buffered, and once the buffer reaches ``_FLUSH``, streamed to
    ``<messages_dir>/.spool/.tmp-*.eml``. A message that never fills the buffer never makes a file here
    (:meth:`finish` gives its bytes); the one that does is written with os.write from the buffer, its name
    the process id, a counter and a random part, created with O_EXCL (another name is tried if it exists).
    :meth:`finish` closes it (a :class:`Spooled`); :meth:`discard` removes it. A process killed meanwhile
    leaves a ``.tmp-*`` file that :func:`recover_stale_tmp` removes."""

    _FLUSH = 256 * 1024
    _count = itertools.count()

    def __init__(self, spool_dir: Path | str) -> None:
        self._dir = str(spool_dir)  # made when the first file finds it missing
        self._fd, self._path = -1, ""
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self.size = 0

    @property
    def path(self) -> Path | None:
        """The temp file, once the message outgrew the buffer (else None)."""
        return Path(self._path) if self._path else None

    def _open(self) -> None:
        made = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(100):
            path = f"{self._dir}/.tmp-{os.getpid()}-{next(self._count)}-{os.urandom(4).hex()}.eml"
            try:
                self._fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError:  # no directory (yet, or removed since): make it, once
                if made:
                    raise
                made = True
                os.makedirs(self._dir, exist_ok=True)
                continue
            self._path = path
            return
        raise FileExistsError(f"no free spool file name in {self._dir}")  # pragma: no cover

    def write(self, data: bytes | bytearray) -> None:
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= self._FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._fd < 0:
            self._open()
        self._hash.update(self._buf)
        done = os.write(self._fd, self._buf)  # (no memoryview: an error must leave the buffer resizable)
        while done < len(self._buf):
            done += os.write(self._fd, self._buf[done:])
        self._buf.clear()

    def finish(self) -> Spooled:
        if not self._path:  # never outgrew the buffer: no file
            data = bytes(self._buf)
            self._buf.clear()
            self._hash.update(data)
            return Spooled(None, self._hash.hexdigest(), self.size, data)
        try:
            self._flush()
            fd, self._fd = self._fd, -1
            os.close(fd)
        except BaseException:
            self.discard()
            raise
        return Spooled(Path(self._path), self._hash.hexdigest(), self.size)

    def discard(self) -> None:
        self._buf.clear()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if self._path:
            Path(self._path).unlink(missing_ok=True)


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def lookup_generation(store: Store) -> int:
    """Moves with every committed change to the users, their addresses or the disclaimers (triggers, schema
    migration 13), and with nothing else: the milter's "reload what I keep?" check."""
    return int(store.db.execute("SELECT n FROM lookup_generation").fetchone()[0])


# -- start-up recovery ------------------------------------------------------------------


def recover_stale_tmp(messages_dir: Path | str) -> int:
    """Remove the temp files of blob writes that never finished; returns how many. Call at start-up.

    :meth:`Store.write_blob` writes ``<sha256[:2]>/.tmp-*.eml`` and renames it into place; a process killed
    in between (SIGKILL, power loss) leaves a half-written ``.tmp-*`` file that nothing ever renames or
    removes (the redelivery writes a temp file of its own). Such a delivery was never answered ``250``, so
    Postfix still has the message and the file is safe to delete. A blob write in progress in another
    process (``mattermailctl import``) whose temp file this removes fails cleanly (its rename raises and
    nothing is committed); re-running the import stores it.
    """
    root = Path(messages_dir)
    if not root.is_dir():
        return 0
    # (also the spool files of messages the router was receiving: ``.spool/.tmp-*``, never answered 250)
    removed = 0
    for sub in root.iterdir():
        if not sub.is_dir() or sub.is_symlink():
            continue
        for tmp in sub.glob(".tmp-*"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    return removed


# -- the one way to run a transaction -------------------------------------------------


class _Tx:
    """BEGIN (SQLite: BEGIN IMMEDIATE, the write lock at once) ... COMMIT, rolled back on any error; inside a
    transaction already (the router's batches, router/lmtp.py), a SAVEPOINT ... RELEASE instead, rolled
    back to the savepoint on error (on PostgreSQL that also clears the failed state, so the batch goes on).

    ``sync_after_unlock`` (a durable SQLite store; the router's batches): the same durability, with the
    write lock held for less. With ``synchronous = FULL`` SQLite fsyncs the WAL inside COMMIT, holding the
    store's one write lock through the flush (a median 3 ms, a p90 of 7-31 ms in bench/outbound end to
    end, while the milter's envelope records waited). Here the commit runs with ``synchronous = NORMAL``
    (its frames written to the WAL, not flushed), and the WAL is fsynced right after the lock is released,
    before the transaction returns: the frames are durable before anything is answered, as with FULL. A
    checkpoint in between syncs the WAL before it copies frames and the database file after (SQLite's
    NORMAL), and the WAL is only reused after a complete checkpoint, so the frames are on disk in one or
    the other. The connection is back to FULL afterwards."""

    _names = itertools.count(1)

    def __init__(self, store: Store, sync_after_unlock: bool = False) -> None:
        self.store = store
        self.db = store.db
        self.savepoint: str | None = None
        self.sync_after = sync_after_unlock and store.engine == SQLITE and store.durable and not store.db.in_transaction

    def __enter__(self) -> None:
        if self.db.in_transaction:
            self.savepoint = f"tx{next(self._names)}"
            self.db.defer(f"SAVEPOINT {self.savepoint}")  # PostgreSQL: sent with the first statement in it
            return
        if self.sync_after:
            self.db.execute("PRAGMA synchronous = NORMAL")
        try:
            self.db.begin()
        except BaseException:
            self._full()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.savepoint is None:
            try:
                if exc_type is None:
                    try:
                        self.db.execute("COMMIT")
                    except BaseException:
                        self._rollback()
                        raise
                    if self.sync_after:
                        self.store.sync_wal()
                    return
                self._rollback()
                return
            finally:
                self._full()
        if exc_type and self.db.in_transaction:
            self.db.execute(f"ROLLBACK TO {self.savepoint}")
            self.db.chain_head = None  # an append of this savepoint may be undone
        if self.db.in_transaction:
            try:
                self.db.execute(f"RELEASE {self.savepoint}")
            except BaseException:  # a deferred statement of this savepoint failed (db.defer): undo it alone
                if exc_type or not self.db.in_transaction:
                    raise
                self.db.execute(f"ROLLBACK TO {self.savepoint}")
                self.db.execute(f"RELEASE {self.savepoint}")
                self.db.chain_head = None
                raise

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite ends a transaction by itself on some errors
            self.db.execute("ROLLBACK")

    def _full(self) -> None:
        if self.sync_after:
            self.db.execute("PRAGMA synchronous = FULL")


def transaction(store: Store, *, sync_after_unlock: bool = False) -> _Tx:
    """``with transaction(store):`` — the one way to group changes; nested, a savepoint.
    ``sync_after_unlock``: see :class:`_Tx` (only a durable SQLite store's top-level transaction)."""
    return _Tx(store, sync_after_unlock)
