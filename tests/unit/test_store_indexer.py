"""Full-text indexing after the commit (store/indexer.py, migration 8): the queue of messages not indexed yet."""

from __future__ import annotations

import hashlib

import pytest

from mattermail.store import Store, index_pending, insert_message, pending_count, search, transaction
from mattermail.store import records, schema


def raw(subject: str, body: str) -> bytes:
    return f"From: a@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}\r\n".encode()


def add(store: Store, subject: str, body: str) -> int:
    data = raw(subject, body)
    with transaction(store):
        mid, new = insert_message(store, data, hashlib.sha256(data).hexdigest(), body_text=body)
    assert new
    return mid


def found(store: Store, text: str) -> list[int]:
    return [h.message.id for h in search(store, text)]


def fts_intact(store: Store) -> None:
    """SQLite: FTS5's own check of its index structure (a 'delete' of a row never indexed breaks it).
    PostgreSQL: a message is indexed (``fts`` set, and current) exactly when it is not queued."""
    if store.engine == "sqlite":
        store.db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        return
    bad = store.db.execute(
        "SELECT id FROM messages m WHERE (m.fts IS NULL) <> EXISTS (SELECT 1 FROM fts_pending p WHERE p.message = m.id) "
        "OR (m.fts IS NOT NULL AND m.fts <> mattermail_fts(m.subject, m.body_text))").fetchall()
    assert bad == [], bad


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "messages")
    yield s
    s.close()


def test_the_queue_entry_is_written_and_rolled_back_with_its_message(store):
    mid = add(store, "kept", "the okapi report")
    assert pending_count(store) == 1 and found(store, "okapi") == []  # stored, not indexed yet
    with pytest.raises(RuntimeError), transaction(store):
        data = raw("lost", "a narwhal")
        insert_message(store, data, hashlib.sha256(data).hexdigest(), body_text="a narwhal")
        assert pending_count(store) == 2  # same transaction
        raise RuntimeError("delivery failed")
    assert pending_count(store) == 1 and store.count("messages") == 1, (pending_count(store), store.count("messages"))
    assert index_pending(store) == 1 and found(store, "okapi") == [mid]


def test_index_pending_indexes_in_batches_empties_the_queue_and_is_idempotent(store):
    ids = [add(store, f"s{i}", f"shared word{i}") for i in range(5)]
    assert pending_count(store) == 5
    assert index_pending(store, limit=2) == 2 and pending_count(store) == 3
    assert sorted(found(store, "shared")) == ids[:2]  # the oldest first
    assert index_pending(store, limit=10) == 3 and pending_count(store) == 0
    assert index_pending(store) == 0  # nothing left: nothing indexed twice
    assert sorted(found(store, "shared")) == ids and found(store, "word4") == [ids[4]]
    fts_intact(store)


def test_deleting_an_unindexed_message_leaves_no_queue_entry_and_a_sound_index(store):
    indexed = add(store, "indexed", "the capybara memo")
    index_pending(store)
    queued = add(store, "queued", "the capybara draft")
    records.delete_message(store, queued, "sent by mistake")
    assert pending_count(store) == 0 and found(store, "capybara") == [indexed]
    fts_intact(store)
    records.delete_message(store, indexed, "duplicate")
    assert found(store, "capybara") == [] and store.count("messages") == 0
    fts_intact(store)
    assert index_pending(store) == 0


def test_updating_a_message_keeps_the_index_in_step_indexed_or_not(store):
    a = add(store, "a", "original wombat")
    index_pending(store)
    b = add(store, "b", "original wombat")
    with transaction(store):  # (nothing in the product rewrites text today; the triggers must still hold)
        store.db.execute("UPDATE messages SET body_text = 'revised quoll' WHERE id IN (?, ?)", [a, b])
    assert found(store, "quoll") == [a] and found(store, "wombat") == []
    index_pending(store)
    assert sorted(found(store, "quoll")) == [a, b]
    fts_intact(store)


def test_a_crash_before_indexing_leaves_the_queue_for_the_next_store(store_location, tmp_path):
    first = Store(store_location, tmp_path / "messages")
    mid = add(first, "crash", "the axolotl notes")
    first.db.conn.close()  # the process dies: no indexing, no clean close
    again = Store(store_location, tmp_path / "messages")
    assert pending_count(again) == 1 and found(again, "axolotl") == []
    assert index_pending(again) == 1 and found(again, "axolotl") == [mid] and pending_count(again) == 0
    again.close()


def test_migration_8_counts_existing_messages_as_indexed(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:7])
    old = Store(tmp_path / "store.sqlite", tmp_path / "messages")
    assert old.schema_version() == 7
    data = raw("old", "the pangolin letter")  # a row as version 7 wrote it (insert_message writes today's)
    mid = old.db.insert("INSERT INTO messages (sha256, size, message_id, subject, body_text, received) "
                        "VALUES (?, ?, '<old@x>', 'old', 'the pangolin letter', 0)",
                        [hashlib.sha256(data).hexdigest(), len(data)])  # indexed by the version-7 trigger
    old.close()
    monkeypatch.undo()
    new = Store(tmp_path / "store.sqlite", tmp_path / "messages")
    assert new.schema_version() >= 8
    assert pending_count(new) == 0 and found(new, "pangolin") == [mid]
    later = add(new, "new", "the pangolin reply")
    assert pending_count(new) == 1 and found(new, "pangolin") == [mid]
    records.delete_message(new, mid, "test")
    fts_intact(new)
    assert index_pending(new) == 1 and found(new, "pangolin") == [later]
    new.close()


def test_status_counts_the_messages_not_indexed_yet(store, store_location):
    from mattermail.store import status

    add(store, "one", "first")
    add(store, "two", "second")
    assert status.counts(store_location)["not_indexed"] == 2
    index_pending(store)
    assert status.counts(store_location)["not_indexed"] == 0
