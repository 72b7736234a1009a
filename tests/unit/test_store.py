import hashlib

import pytest

from mattermail.router import store as storemod

RAW = b"From: a@example.test\r\nTo: 1234@matters.lawfirm.test\r\nSubject: Hello\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path):
    s = storemod.Store(tmp_path / "store.sqlite", tmp_path / "messages")
    yield s
    s.close()


def test_deliver_writes_file_and_row(store):
    m = store.deliver(RAW, "a@example.test", ["1234@Matters.Lawfirm.test"], queue_id="ABC123")
    sha = hashlib.sha256(RAW).hexdigest()
    assert m.sha256 == sha and m.new
    assert m.path.read_bytes() == RAW
    assert m.path.name == f"{sha}.eml"
    row = store.db.execute("SELECT sha256, size, message_id, subject FROM messages").fetchone()
    assert row == (sha, len(RAW), "<m1@example.test>", "Hello")
    assert store.db.execute("SELECT recipient, queue_id FROM deliveries").fetchall() == [
        ("1234@matters.lawfirm.test", "ABC123")]
    assert not list(m.path.parent.glob(".tmp-*"))


def test_redelivery_stores_once_and_records_nothing_twice(store):
    store.deliver(RAW, "a@example.test", ["x@matters.lawfirm.test"], queue_id="Q1")
    again = store.deliver(RAW, "a@example.test", ["x@matters.lawfirm.test"], queue_id="Q1")
    assert not again.new
    assert store.count("messages") == 1 and store.count("deliveries") == 1
    store.deliver(RAW, "a@example.test", ["y@matters.lawfirm.test"], queue_id="Q1")
    assert store.count("messages") == 1 and store.count("deliveries") == 2


def test_failed_commit_leaves_no_row(store, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_blob", boom)
    with pytest.raises(OSError):
        store.deliver(RAW, "a@example.test", ["x@matters.lawfirm.test"])
    assert store.count("messages") == 0


def test_schema_is_migrated_once(tmp_path, store):
    version = store.schema_version()
    assert version == len(storemod.MIGRATIONS) >= 1
    again = storemod.Store(store.path, store.messages_dir)
    assert again.schema_version() == version
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


def test_migration_5_marks_planted_outbound_records_unverified(tmp_path, monkeypatch):
    """Rows a store of schema 4 recorded as outbound without a verified capture become inbound, unverified."""
    n = [i for i, fn in enumerate(storemod.MIGRATIONS, 1) if fn.__name__ == "_m005_capture_verification"]
    assert n == [5]
    monkeypatch.setattr(storemod, "MIGRATIONS", storemod.MIGRATIONS[:4])
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
