"""The store, through the path production takes: the router's batches (router/batch.py ``file_batch``
-> ``Store.write_blob`` + router/filing.py ``file_stored``, answered by router/lmtp.py ``replies``)."""

import hashlib
import os

import pytest

from mattermail.config import from_dict
from mattermail.router import batch, filing, lmtp
from mattermail.router.message import MessageData
from mattermail.router.rules import RouterRules
from mattermail.store import directory
from mattermail import store as storemod

RAW = (b"Received: from mx.lawfirm.test by mx.lawfirm.test (Postfix) with ESMTP id 4ABC123\r\n"
       b"\tfor <1234@matters.lawfirm.test>; Mon, 23 Nov 2026 12:00:00 +0000\r\n"
       b"From: a@example.test\r\nTo: 1234@matters.lawfirm.test\r\nSubject: Hello\r\n"
       b"Message-ID: <m1@example.test>\r\n\r\nbody\r\n")
TABLES = ("messages", "deliveries", "filings", "events")


@pytest.fixture
def store(store_location, tmp_path):
    s = storemod.Store(store_location, tmp_path / "messages")
    yield s
    s.close()


def deliver(store, *messages: tuple[bytes, list[str]], sync: str = "syncfs", inline_max: int = 0) -> list[str]:
    """One router batch (one transaction, a savepoint per message), as the LMTP server runs it. Every message
    in a file of its own unless ``inline_max`` (store.inline_max) keeps the small ones in their rows."""
    cfg = from_dict({"router": {"sync": sync}, "store": {"inline_max": inline_max}})
    items = [batch.Item(MessageData.from_bytes(raw), "a@example.test", rcpts, lmtp.queue_id_of(raw))
             for raw, rcpts in messages]
    outcomes = batch.file_batch(store, cfg, RouterRules.from_config(cfg), batch.CaptureSettings(), items)
    assert not store.in_transaction
    return [lmtp.replies(o) for o in outcomes]


def counts(store) -> dict[str, int]:
    return {t: store.count(t) for t in TABLES}


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
def test_delivery_writes_the_file_then_commits_the_rows(store, monkeypatch, sync):
    sha = hashlib.sha256(RAW).hexdigest()
    path = store.blob_path(sha)
    seen = []  # at each COMMIT: is the file there, and was it synced (syncfs, or its directory) before?
    synced = []
    fsynced_files = []
    real_execute, real_sync = store.db.execute, store.sync_blobs
    real_fsync, real_fdatasync = storemod.engine.os.fsync, storemod.engine.os.fdatasync
    monkeypatch.setattr(store, "sync_blobs", lambda dirs, whole: (synced.append("fs" if whole else "dirs"),
                                                                   synced.extend(dirs), real_sync(dirs, whole)))
    monkeypatch.setattr(storemod.engine.os, "fsync",
                        lambda fd: (fsynced_files.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(storemod.engine.os, "fdatasync",  # (the WAL: its data and size)
                        lambda fd: (fsynced_files.append(os.readlink(f"/proc/self/fd/{fd}")), real_fdatasync(fd)))
    sqlite = store.engine == "sqlite"

    def execute(sql, *a, **k):
        if sql == "COMMIT":
            seen.append((path.read_bytes() == RAW, path.parent in synced, synced[0]))
            if sqlite:  # the commit does not flush the WAL itself, holding the write lock: it is flushed after
                assert real_execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
                fsynced_files.append("COMMIT")
        return real_execute(sql, *a, **k)

    monkeypatch.setattr(store.db, "execute", execute)
    [reply] = deliver(store, (RAW, ["1234@Matters.Lawfirm.test"]), sync=sync)
    monkeypatch.undo()
    assert reply == f"250 2.0.0 <1234@Matters.Lawfirm.test> stored as {sha[:16]}"
    # syncfs: one flush of the file system, no fsync per file; fsync: the file, then its directory
    assert seen == [(True, True, "fs" if sync == "syncfs" else "dirs")], seen
    files = [f for f in fsynced_files if not f.endswith("-wal") and f != "COMMIT"]
    assert bool(files) == (sync == "fsync"), fsynced_files
    if sqlite:  # the WAL fsynced after the COMMIT, before the reply; the connection back to FULL
        assert fsynced_files[-2:] == ["COMMIT", f"{store.path}-wal"], fsynced_files
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert path.name == f"{sha}.eml" and not list(path.parent.glob(".tmp-*"))
    row = store.db.execute("SELECT sha256, size, message_id, subject FROM messages").fetchone()
    assert row == (sha, len(RAW), "<m1@example.test>", "Hello")
    assert store.db.execute("SELECT recipient, queue_id FROM deliveries").fetchall() == [
        ("1234@matters.lawfirm.test", "4ABC123")]


def test_a_small_message_is_kept_in_its_row_without_a_file_or_a_file_system_flush(store, monkeypatch):
    """store.inline_max: a message at most that long goes into its row (messages.raw) in the batch's commit:
    no file, no syncfs (only the commit's own flush); a longer one in the same batch still gets its file,
    synced before the commit. Both read back the same through read_raw."""
    synced = []
    real_sync = store.sync_blobs
    monkeypatch.setattr(store, "sync_blobs", lambda dirs, whole: (synced.append(sorted(dirs)), real_sync(dirs, whole)))
    sha = hashlib.sha256(RAW).hexdigest()
    assert deliver(store, (RAW, ["1234@matters.lawfirm.test"]), inline_max=len(RAW))[0].startswith("250 ")
    assert synced == [] and not store.blob_path(sha).parent.exists()
    assert storemod.inline_raw(store, sha) == RAW and storemod.read_raw(store, sha) == RAW

    small, big = RAW.replace(b"body", b"tiny"), RAW.replace(b"body", b"x" * 4096)
    replies = deliver(store, (small, ["1234@matters.lawfirm.test"]), (big, ["1234@matters.lawfirm.test"]),
                      inline_max=len(RAW))
    assert [r[:3] for r in replies] == ["250", "250"], replies
    s_sha, b_sha = hashlib.sha256(small).hexdigest(), hashlib.sha256(big).hexdigest()
    assert synced == [[store.blob_path(b_sha).parent]]  # the one file, flushed before the commit
    assert not store.blob_path(s_sha).exists() and store.blob_path(b_sha).read_bytes() == big
    assert storemod.inline_raw(store, b_sha) is None
    assert storemod.read_raw(store, s_sha) == small and storemod.read_raw(store, b_sha) == big
    with pytest.raises(FileNotFoundError):
        storemod.read_raw(store, "0" * 64)


def test_a_failed_sync_defers_the_batch_and_commits_nothing(store, monkeypatch):
    """syncfs reports a write-back error (EIO): no row is committed and every message is deferred."""
    def failing(path):
        raise OSError(5, f"syncfs {path}: Input/output error")

    monkeypatch.setattr(storemod.engine, "sync_filesystem", failing)
    replies = deliver(store, (RAW, ["1234@matters.lawfirm.test"]), (RAW + b"2", ["m-5@matters.lawfirm.test"]))
    assert [r[:10] for r in replies] == ["451 4.3.0 "] * 2, replies
    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_redelivery_stores_once_and_records_nothing_twice(store):
    directory.add_matter(store, "1234", "Smith v Jones")
    assert deliver(store, (RAW, ["1234@matters.lawfirm.test"]))[0].startswith("250 ")
    assert deliver(store, (RAW, ["1234@matters.lawfirm.test"]))[0].startswith("250 ")  # Postfix retrying
    # the event log keeps both attempts; the message, its delivery and its filing are there once
    assert counts(store) == {"messages": 1, "deliveries": 1, "filings": 1, "events": 2}
    assert deliver(store, (RAW, ["y@matters.lawfirm.test"]))[0].startswith("250 ")
    assert store.count("messages") == 1 and store.count("deliveries") == 2 and store.count("filings") == 1


def test_a_failed_commit_leaves_no_row_and_defers(store, monkeypatch):
    """The rows are inserted (the transaction is open), then COMMIT fails: everything is rolled back."""
    real_execute = store.db.execute
    inserted = {}

    def execute(sql, *a, **k):
        if sql == "COMMIT":
            inserted.update({t: real_execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES})
            raise storemod.sqlite3.OperationalError("disk I/O error")
        return real_execute(sql, *a, **k)

    monkeypatch.setattr(store.db, "execute", execute)
    replies = deliver(store, (RAW, ["1234@matters.lawfirm.test"]), (RAW + b"2", ["m-5@matters.lawfirm.test"]))
    monkeypatch.undo()
    assert inserted["messages"] == 2 and inserted["deliveries"] == 2 and inserted["events"] == 2, inserted
    assert [r[:10] for r in replies] == ["451 4.3.0 "] * 2, replies
    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_a_filing_failing_midway_rolls_back_to_its_savepoint(store, monkeypatch):
    """The second message of a batch fails after its messages, deliveries and filings rows were
    inserted (at its event): only its rows go (ROLLBACK TO its savepoint), the others commit."""
    directory.add_matter(store, "1234", "Smith v Jones")
    real_log_event, partial = filing.log_event, {}

    def log_event(store_, kind, detail, mid, queue_id, *rest):
        if queue_id == "4FAIL":
            partial.update({t: store.count(t) for t in TABLES})
            raise RuntimeError("disk I/O error")
        return real_log_event(store_, kind, detail, mid, queue_id, *rest)

    monkeypatch.setattr(filing, "log_event", log_event)
    raws = [RAW.replace(b"4ABC123", qid).replace(b"body", b"body " + qid) for qid in (b"4OK1", b"4FAIL", b"4OK2")]
    replies = deliver(store, *[(raw, ["1234@matters.lawfirm.test"]) for raw in raws])
    assert [r[:3] for r in replies] == ["250", "451", "250"], replies
    # When it failed, the first message's rows and the second's own (but its event) were there:
    assert partial == {"messages": 2, "deliveries": 2, "filings": 2, "events": 1}, partial
    assert counts(store) == {"messages": 2, "deliveries": 2, "filings": 2, "events": 2}
    failed_sha = hashlib.sha256(raws[1]).hexdigest()
    assert storemod.find_message(store, failed_sha) is None
    assert store.blob_path(failed_sha).exists()  # the file stays: Postfix's retry finds it written
    assert {r[0] for r in store.db.execute("SELECT queue_id FROM deliveries")} == {"4OK1", "4OK2"}


def test_a_deferred_statement_failing_rolls_back_only_its_message(store, monkeypatch):
    """A statement sent later (db.defer: on PostgreSQL with the next one, here the savepoint's RELEASE) that
    fails defers its own message only: its savepoint is rolled back, the batch's other messages commit."""
    directory.add_matter(store, "1234", "Smith v Jones")
    real = filing.record_deliveries

    def record_deliveries(store_, mid, sender, rcpts, queue_id=""):
        real(store_, mid, sender, rcpts, queue_id)
        if queue_id == "4FAIL":  # refused by the database (no such table), only once it is sent
            store_.db.defer("INSERT INTO no_such_table (x) VALUES (?)", [1])

    monkeypatch.setattr(filing, "record_deliveries", record_deliveries)
    raws = [RAW.replace(b"4ABC123", qid).replace(b"body", b"body " + qid) for qid in (b"4OK1", b"4FAIL", b"4OK2")]
    replies = deliver(store, *[(raw, ["1234@matters.lawfirm.test"]) for raw in raws])
    assert [r[:3] for r in replies] == ["250", "451", "250"], replies
    assert counts(store) == {"messages": 2, "deliveries": 2, "filings": 2, "events": 2}
    assert storemod.find_message(store, hashlib.sha256(raws[1]).hexdigest()) is None
    assert {r[0] for r in store.db.execute("SELECT queue_id FROM deliveries")} == {"4OK1", "4OK2"}
    from mattermail.store import verify

    assert verify.verify(store).ok  # the chain holds the two filed messages' entries, linked


def _temp_files() -> set[str]:
    """SQLite's temp files this process has open (created in /var/tmp and unlinked at once: ``(deleted)``)."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "etilqs_" in target:
            names.add(target)
    return names


@pytest.mark.parametrize("batches", [True, False])
def test_the_routers_batch_keeps_its_savepoints_undo_in_memory(tmp_path, monkeypatch, batches):
    """Each message of a batch is written in a savepoint; what it must be able to undo (the original of every
    page its rows change) passes SQLite's 64 KiB spill limit within a few messages of a grown store. The
    router's store (``batches=True``) keeps it in memory: no temp file written and removed per batch (in
    bench/outbound end to end, ~80 KB and 40 writes per message). Any other store still spills: SQLite's
    default, for the big sorts of mattermailctl on a large store."""
    s = storemod.Store(tmp_path / "store.sqlite", tmp_path / "messages", batches=batches)
    try:
        def msg(n: int) -> tuple[bytes, list[str]]:
            raw = RAW.replace(b"<m1@example.test>", f"<m{n}.{'x' * 40}@example.test>".encode())
            raw = raw.replace(b"Subject: Hello", f"Subject: Hello {n} {'word ' * 30}".encode())
            return raw, [f"{1000 + n % 97}@matters.lawfirm.test", f"p{n}@matters.lawfirm.test"]

        for start in range(0, 400, 100):  # grown: its indexes span many pages
            assert all(r.startswith("250") for rs in deliver(s, *(msg(n) for n in range(start, start + 100)))
                       for r in rs.splitlines())
        seen: set[str] = set()
        real = batch.write_filing

        def write_filing(plan, store):
            result = real(plan, store)
            seen.update(_temp_files())  # inside the batch's transaction, its savepoint released
            return result

        monkeypatch.setattr(batch, "write_filing", write_filing)
        replies = deliver(s, *(msg(n) for n in range(400, 430)))
        assert all(r.startswith("250") for rs in replies for r in rs.splitlines()), replies
        assert s.count("messages") == 430
        if batches:
            assert seen == set(), seen
        else:  # the case the router avoids (and proof this test sees a spilled journal)
            assert seen, "no SQLite temp file seen without batches=True"
    finally:
        s.close()


def test_schema_is_migrated_once(tmp_path, store):
    version = store.schema_version()
    assert version == len(storemod.MIGRATIONS) >= 1
    again = storemod.Store(store.location, store.messages_dir)
    assert again.schema_version() == version
    again.close()
    if store.engine == "sqlite":
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_users(store):
    storemod.add_user(store, "Alice@LawFirm.test", "{ARGON2ID}x", ["info@lawfirm.test"])
    with pytest.raises(storemod.UserError, match="already exists"):
        storemod.add_user(store, "alice@lawfirm.test", "{ARGON2ID}y")
    assert storemod.list_users(store) == [storemod.User("alice@lawfirm.test", ("alice@lawfirm.test", "info@lawfirm.test"))]
    storemod.set_password(store, "alice@lawfirm.test", "{ARGON2ID}z")
    assert storemod.password_hashes(store) == [("alice@lawfirm.test", "{ARGON2ID}z")]
    storemod.remove_user(store, "alice@lawfirm.test")
    assert storemod.list_users(store) == []
    with pytest.raises(storemod.UserError, match="no such user"):
        storemod.remove_user(store, "alice@lawfirm.test")


def test_blob_directory_removed_under_a_running_store(store):
    """write_blob remembers the hash directories it made; one removed since is made again."""
    import shutil

    _sha, path = store.write_blob(b"Subject: one\r\n\r\nfirst\r\n")
    shutil.rmtree(path.parent)
    raw = b"Subject: two\r\n\r\nsecond\r\n"
    while hashlib.sha256(raw).hexdigest()[:2] != path.parent.name:  # a message for the same directory
        raw += b"."
    _sha2, path2 = store.write_blob(raw)
    assert path2.parent == path.parent and path2.read_bytes() == raw


def test_spool_directory_removed_under_a_running_store(store):
    """The spool directory is made once per process; removed since, the next message's spool file makes it
    again, and the message is stored."""
    import shutil

    big = b"Subject: one\r\n\r\n" + b"x" * store.spool()._FLUSH  # outgrows the buffer: a spool file
    first = store.spool()
    first.write(big)
    store.adopt(first.finish())
    shutil.rmtree(store.spool_dir)
    second = store.spool()
    second.write(big + b"2")
    spooled = second.finish()
    assert spooled.path is not None and store.adopt(spooled).read_bytes() == big + b"2"
    small = store.spool()  # a message that stays in its buffer makes no file at all
    small.write(b"Subject: two\r\n\r\nsecond\r\n")
    kept = small.finish()
    assert kept.path is None and kept.data == b"Subject: two\r\n\r\nsecond\r\n" and not list(store.spool_dir.iterdir())


def test_migration_5_marks_planted_outbound_records_unverified(tmp_path, monkeypatch):
    """Rows a store of schema 4 recorded as outbound without a verified capture become inbound, unverified."""
    n = [i for i, fn in enumerate(storemod.MIGRATIONS, 1) if fn.__name__ == "_m005_capture_verification"]
    assert n == [5]
    from mattermail.store import schema

    monkeypatch.setattr(schema, "MIGRATIONS", storemod.MIGRATIONS[:4])
    old = storemod.Store(tmp_path / "s.sqlite", tmp_path / "m")
    assert old.schema_version() == 4
    rows = {}
    for name, direction in (("verified", "outbound"), ("forged", "outbound"), ("bare", "outbound"),
                            ("inbound", "inbound")):
        cur = old.db.execute("INSERT INTO messages (sha256, size, received, direction) VALUES (?, 1, 0, ?)",
                             [name, direction])
        rows[name] = cur.lastrowid
    old.db.execute("INSERT INTO envelopes (ref, queue_id, mail_from, recipients, login, client, created) "
                   "VALUES ('aaaaaaaaaaaa', 'Q', 'a@x.test', '[]', 'a@x.test', '127.0.0.1', 0)")
    old.db.execute("INSERT INTO captures (message, ref, verified, recorded) VALUES (?, 'aaaaaaaaaaaa', 1, 0)",
                   [rows["verified"]])
    old.db.execute("INSERT INTO captures (message, ref, verified, recorded) VALUES (?, 'bbbbbbbbbbbb', 0, 0)",
                   [rows["forged"]])
    old.close()
    monkeypatch.undo()
    new = storemod.Store(tmp_path / "s.sqlite", tmp_path / "m")
    assert new.schema_version() == len(storemod.MIGRATIONS) >= 5
    got = {name: new.db.execute("SELECT direction, capture FROM messages WHERE id = ?", [mid]).fetchone()
           for name, mid in rows.items()}
    assert got == {"verified": ("outbound", "verified"), "forged": ("inbound", "unverified"),
                   "bare": ("inbound", "unverified"), "inbound": ("inbound", "")}, got
    new.close()
