"""What differs between the SQLite and PostgreSQL stores, and what must not: one schema, one error vocabulary."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mattermail.config import ConfigError, from_dict
from mattermail.store import (EnvelopeRecord, Store, StoreError, UserError, add_user, describe_error,
                              lookup_generation, record_envelopes, remove_disclaimer, remove_user,
                              set_password)
from mattermail.store import backup, schema, schema_pg, set_disclaimer, status
from mattermail.store import directory as d
from mattermail.store.connection import PgConnection, pg_sql, redact


def test_both_engines_have_the_same_migrations():
    assert len(schema_pg.PG_MIGRATIONS) == len(schema.MIGRATIONS)
    names = [fn.__name__ for fn in schema.MIGRATIONS]
    assert [fn.__name__ for fn in schema_pg.PG_MIGRATIONS] == names


def test_both_engines_make_the_same_tables_and_columns(pg_cluster, tmp_path):
    """Every table of a new SQLite store exists in a new PostgreSQL store with the same columns in the same
    order (PostgreSQL's ``messages.fts`` aside: its search index lives in the row), at the same version."""
    lite = Store(tmp_path / "s.sqlite", tmp_path / "m")
    url = pg_cluster.create_database("mm_columns")
    pg = Store(url, tmp_path / "m")
    assert lite.schema_version() == pg.schema_version() == len(schema.MIGRATIONS)
    tables = [t for (t,) in lite.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                            "'sqlite%' AND name NOT LIKE 'messages_fts%' ORDER BY name")]
    want = {t: [r[1] for r in lite.db.execute(f"PRAGMA table_info({t})")] for t in tables}
    got = {t: [r[0] for r in pg.db.execute("SELECT column_name FROM information_schema.columns WHERE "
                                           "table_schema = 'public' AND table_name = ? ORDER BY ordinal_position", [t])
               if r[0] != "fts"] for t in tables}
    assert got == want
    assert "thread_keys" in want and want["messages"][:3] == ["id", "sha256", "size"]
    lite.close()
    pg.close()
    pg_cluster.drop_database("mm_columns")


def test_the_lookup_generation_moves_with_users_and_disclaimers_only(store_location, tmp_path):
    """The milter re-reads users and disclaimers when the lookup generation moves: it must move with every
    change to them, made by any connection, and not with the envelope records and filings of every message."""
    milter = Store(store_location, tmp_path / "m", durable=False)
    ctl = Store(store_location, tmp_path / "m")
    seen = [lookup_generation(milter)]

    def moved() -> bool:
        seen.append(lookup_generation(milter))
        return seen[-1] != seen[-2]

    record_envelopes(ctl, [EnvelopeRecord("r1", "Q1", "a@x.test", ("b@y.test",), "", "local", 1.0)])
    assert not moved()
    add_user(ctl, "alice@lawfirm.test", "{ARGON2ID}x")
    assert moved()
    set_password(ctl, "alice@lawfirm.test", "{ARGON2ID}y")
    assert moved()
    set_disclaimer(ctl, "default", "", "Confidential.", None)
    assert moved()
    set_disclaimer(ctl, "default", "", "Privileged.", None)
    assert moved()
    remove_disclaimer(ctl, "default", "")
    assert moved()
    remove_user(ctl, "alice@lawfirm.test")
    assert moved() and not moved()
    milter.close()
    ctl.close()


def test_the_store_orders_text_as_sqlite_does(store_location, tmp_path):
    """Byte order, not a locale's: upper case before lower case, digits and '-' before letters."""
    s = Store(store_location, tmp_path / "m")
    matters = ["b-1", "B-2", "a-3", "A-4", "a3", "9-z", "ab"]
    for m in matters:
        d.add_matter(s, m, "t")
    assert [m.id for m in d.list_matters(s)] == sorted(matters) == ["9-z", "A-4", "B-2", "a-3", "a3", "ab", "b-1"]
    s.close()


def test_backup_of_a_postgresql_store_is_a_pg_dump_of_one_snapshot(pg_cluster, tmp_path):
    url = pg_cluster.create_database("mm_backup_pg", "mattermail_template")
    s = Store(url, tmp_path / "m")
    d.add_matter(s, "1234", "Smith v Jones")
    res = backup.backup(s, tmp_path / "b")
    manifest = backup.read_manifest(tmp_path / "b")
    assert manifest["engine"] == "postgresql" and manifest["database"]["file"] == "store.dump", manifest
    assert (tmp_path / "b" / "store.dump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert res.messages == 0
    s.db.execute("INSERT INTO messages (sha256, size) VALUES ('x', 1)")
    with pytest.raises(UserError, match="not empty"):  # restore goes onto an empty store only
        backup.restore(s, tmp_path / "b")
    s.close()
    pg_cluster.drop_database("mm_backup_pg")


def test_status_reads_a_postgresql_store(pg_cluster, tmp_path):
    url = pg_cluster.create_database("mm_status", "mattermail_template")
    s = Store(url, tmp_path / "m")
    d.add_matter(s, "1234", "Smith v Jones")
    assert status.counts(url)["matters"] == 1
    s.close()
    pg_cluster.drop_database("mm_status")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: nothing listens there


def test_a_server_that_refuses_is_unavailable(tmp_path):
    url = f"postgresql://mattermail:s3cret@127.0.0.1:{_closed_port()}/mattermail"
    with pytest.raises(StoreError) as exc:
        Store(url, tmp_path / "m")
    kind, text = describe_error(exc.value)
    assert kind == "unavailable" and text, (kind, text)
    assert "s3cret" not in redact(url) and redact(url).startswith("postgresql://mattermail:***@127.0.0.1:")


def test_postgresql_errors_are_classified_by_sqlstate(pg_cluster):
    db = PgConnection(pg_cluster.url())
    with pytest.raises(StoreError) as exc:
        db.execute("SELECT * FROM no_such_table")
    assert describe_error(exc.value)[0] == "other" and "no_such_table" in str(exc.value)
    with pytest.raises(StoreError) as exc:
        db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert describe_error(exc.value)[0] == "unavailable", describe_error(exc.value)
    with pytest.raises(StoreError) as exc:
        PgConnection(pg_cluster.url("no_such_database"))
    assert describe_error(exc.value)[0] == "unavailable", describe_error(exc.value)


def test_a_tcp_connection_gives_up_on_a_silent_server_unless_the_url_says_otherwise(pg_cluster):
    """libpq's keepalives and tcp_user_timeout are set (a partition fails a statement in 15 s, not ~15 min);
    a URL that sets one keeps its own value."""
    db = PgConnection(pg_cluster.url())
    params = db.conn.info.get_parameters()
    assert params.get("tcp_user_timeout") == "15000" and params.get("keepalives_idle") == "10", params
    db.close()
    sep = "&" if "?" in pg_cluster.url() else "?"
    db = PgConnection(pg_cluster.url() + f"{sep}tcp_user_timeout=4000&connect_timeout=3")
    params = db.conn.info.get_parameters()
    assert params.get("tcp_user_timeout") == "4000" and params.get("connect_timeout") == "3", params
    db.close()


def test_placeholders_and_percent_signs_reach_postgresql_intact(pg_cluster):
    assert pg_sql("SELECT ? WHERE 'a%' LIKE ?") == "SELECT %s WHERE 'a%%' LIKE %s"
    db = PgConnection(pg_cluster.url())
    assert db.execute("SELECT ?::text || '%'", ["100"]).fetchone()[0] == "100%"
    db.close()


@pytest.mark.parametrize("url, ok", [("", True), ("postgresql://mm@db.example/mm", True),
                                     ("postgres://mm@db.example/mm", True), ("mysql://x", False),
                                     ("/var/lib/mattermail/store.sqlite", False)])
def test_store_url_config(url, ok):
    if not ok:
        with pytest.raises(ConfigError, match="store.url"):
            from_dict({"store": {"url": url}})
        return
    cfg = from_dict({"store": {"url": url, "path": "/srv/mm.sqlite"}}).store
    assert cfg.location == (url or cfg.path)
    assert from_dict({"store": {"url": "postgresql://mm:pw@db/mm"}}).store.where == "postgresql://mm:***@db/mm"


def test_a_database_with_a_linguistic_collation_still_orders_as_sqlite(pg_cluster, tmp_path):
    """The columns carry COLLATE "C": a database created with an ICU English locale (case-insensitive first,
    '-' ignored at first) sorts the store's text as SQLite does all the same."""
    pg_cluster.sql('CREATE DATABASE mm_icu TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE "en-US" '
                   "LOCALE 'C.UTF-8'")
    s = Store(pg_cluster.url("mm_icu"), tmp_path / "m")
    assert s.db.execute("SELECT 'a-3' < 'A-4', 'ab' < 'a3'").fetchone() == (True, False)  # the locale's own order
    matters = ["b-1", "B-2", "a-3", "A-4", "a3", "9-z", "ab"]
    for m in matters:
        d.add_matter(s, m, "t")
    assert [m.id for m in d.list_matters(s)] == sorted(matters)
    s.close()
    pg_cluster.drop_database("mm_icu")


def _milter_runtime(store_location, tmp_path):
    from mattermail.milter.runtime import Runtime

    url = store_location if isinstance(store_location, str) else ""
    path = store_location if not url else tmp_path / "unused.sqlite"
    return Runtime(from_dict({"store": {"path": str(path), "url": url, "messages_dir": str(tmp_path / "m")}}))


def test_the_milter_runtime_sees_ctl_changes_and_records_envelopes(store_location, tmp_path):
    from mattermail.store import EnvelopeRecord, add_user, get_envelope

    rt = _milter_runtime(store_location, tmp_path)
    ctl = Store(store_location, tmp_path / "m")
    add_user(ctl, "alice@lawfirm.test", "{ARGON2ID}x", ["info@lawfirm.test"])
    assert rt.owned_addresses("alice@lawfirm.test") == {"alice@lawfirm.test", "info@lawfirm.test"}
    assert rt.disclaimer_for("alice@lawfirm.test") is None
    set_disclaimer(ctl, "domain", "lawfirm.test", "Confidential.", None)  # no restart, no reopen
    assert rt.disclaimer_for("alice@lawfirm.test").text == "Confidential."
    env = EnvelopeRecord("0123456789ab", "4QX1", "alice@lawfirm.test", ("bob@example.test",), "alice@lawfirm.test",
                         "127.0.0.1", 1.5)
    rt.record_envelope(env)
    assert get_envelope(ctl, "0123456789ab") == env
    ctl.close()


def test_the_milter_keeps_users_and_disclaimers_across_envelope_records(tmp_path, monkeypatch):
    """SQLite: the milter's own envelope records (and any other commit) leave what it keeps in memory alone;
    a user added by mattermailctl is seen at the next look-up."""
    import mattermail.store as storemod
    from mattermail.store import EnvelopeRecord

    rt = _milter_runtime(tmp_path / "s.sqlite", tmp_path)
    ctl = Store(tmp_path / "s.sqlite", tmp_path / "m")
    add_user(ctl, "alice@lawfirm.test", "{ARGON2ID}x")
    loads = []
    real = storemod.list_users
    monkeypatch.setattr(storemod, "list_users", lambda store: loads.append(1) or real(store))
    for i in range(5):
        assert rt.sender_lookups("alice@lawfirm.test", "alice@lawfirm.test")[0] == {"alice@lawfirm.test"}
        rt.record_envelope(EnvelopeRecord(f"ref{i}", f"Q{i}", "alice@lawfirm.test", ("b@example.test",),
                                          "alice@lawfirm.test", "127.0.0.1", 1.0))
    assert len(loads) == 1
    add_user(ctl, "bob@lawfirm.test", "{ARGON2ID}x")
    assert rt.any_user_address(["bob@lawfirm.test"]) and len(loads) == 2
    ctl.close()


def test_a_milter_whose_connection_is_cut_reconnects_within_the_look_up(pg_cluster, tmp_path, caplog):
    """The server drops the milter's idle connection (restart, failover): the look-up that finds it lost
    opens a new connection and answers, so the first message after a database restart is not deferred."""
    from mattermail.store import EnvelopeRecord, get_envelope

    url = pg_cluster.create_database("mm_milter_cut", "mattermail_template")
    rt = _milter_runtime(url, tmp_path)
    assert rt.owned_addresses("nobody@lawfirm.test") == set()
    for n, look_up in enumerate((lambda: rt.owned_addresses("nobody@lawfirm.test") == set(),
                                 lambda: rt.disclaimer_for("nobody@lawfirm.test") is None,
                                 lambda: rt.is_user_address("nobody@lawfirm.test") is False)):
        pid = rt.store().db.conn.info.backend_pid
        pg_cluster.sql(f"SELECT pg_terminate_backend({pid})")
        assert look_up(), n
        assert rt.store().db.conn.info.backend_pid != pid, n
    assert caplog.text.count("closing it, the next look-up reopens it") == 3  # each loss is logged

    # the envelope records' own connection (milter/envelopes.py) too
    def envelope(ref: str) -> EnvelopeRecord:
        return EnvelopeRecord(ref, "4QX1", "a@lawfirm.test", ("b@example.test",), "a@lawfirm.test", "127.0.0.1", 1.5)

    rt.record_envelope(envelope("warm"))
    pid = rt.envelopes._store.db.conn.info.backend_pid
    assert pid != rt.store().db.conn.info.backend_pid
    pg_cluster.sql(f"SELECT pg_terminate_backend({pid})")
    rt.record_envelope(envelope("cut"))
    assert rt.envelopes._store.db.conn.info.backend_pid != pid
    assert get_envelope(rt.store(), "cut") is not None
    assert caplog.text.count("envelope record failed (") == 1, caplog.text
    rt.store().close()
    pg_cluster.drop_database("mm_milter_cut")


def test_a_milter_whose_database_is_unreachable_raises_every_time(tmp_path):
    """Connection refused (the server down, a dead port): every look-up raises StoreError, which the
    milter answers with 451, and nothing is retried in a loop."""
    from mattermail_dev.pgcluster import free_port

    rt = _milter_runtime(f"postgresql://postgres@127.0.0.1:{free_port()}/mattermail", tmp_path)
    for _ in range(2):
        with pytest.raises(StoreError) as exc:
            rt.owned_addresses("alice@lawfirm.test")
        assert describe_error(exc.value)[0] == "unavailable", describe_error(exc.value)


def test_the_chain_lock_is_taken_once_per_transaction_and_never_assumed_after_a_rollback(pg_cluster, tmp_path):
    """PostgreSQL: appends serialise on an advisory lock held to the commit; a lock taken inside a savepoint
    that is rolled back is gone (the server releases it), and the next append takes it again."""
    from mattermail.store import chain, transaction

    url = pg_cluster.create_database("mm_chain_lock", "mattermail_template")
    s = Store(url, tmp_path / "m")

    def held() -> int:
        return s.db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND pid = pg_backend_pid() AND objid = ?", [chain.PG_CHAIN_LOCK]).fetchone()[0]

    with transaction(s):
        with pytest.raises(RuntimeError):
            with transaction(s):  # a message of a batch that fails after its entry
                chain.append(s, "hold", None, "", {"matter": "x"})
                assert held() == 1 and s.db.chain_locked
                raise RuntimeError("filing failed")
        assert held() == 0 and not s.db.chain_locked
        with transaction(s):
            chain.append(s, "hold", None, "", {"matter": "y"})
        chain.append(s, "release", None, "", {"matter": "y"})  # the lock the savepoint handed over
        assert held() == 1
    assert held() == 0 and not s.db.chain_locked
    assert [(e.seq, e.kind) for e in chain.entries(s.db)] == [(1, "hold"), (2, "release")]
    s.close()
    pg_cluster.drop_database("mm_chain_lock")


def test_two_routers_storing_the_same_message_at_once_store_it_once(store_location, tmp_path):
    """The second waits for the first's commit, then finds its row: (same id, not new), no error."""
    import hashlib
    import threading

    from mattermail.store import insert_message, transaction

    first, second = Store(store_location, tmp_path / "m"), Store(store_location, tmp_path / "m")
    raw = b"From: a@example.test\r\nSubject: once\r\nMessage-ID: <once@x>\r\n\r\nbody\r\n"
    sha = hashlib.sha256(raw).hexdigest()
    got: list = []
    with transaction(first):
        mine = insert_message(first, raw, sha)
        t = threading.Thread(target=lambda: got.append(_in_tx(second, lambda: insert_message(second, raw, sha))))
        t.start()
        t.join(0.5)
        assert t.is_alive(), "the second router must wait for the first one's commit"
    t.join(30)
    assert mine[1] and got == [(mine[0], False)], (mine, got)
    assert first.count("messages") == 1
    first.close()
    second.close()


def _in_tx(store, fn):
    from mattermail.store import transaction

    with transaction(store):
        return fn()


def test_the_web_services_store_functions_on_both_engines(store_location, tmp_path):
    """Tokens, roles, walls, a webhook's outbox row written by the filing trigger, a walled matter's page."""
    import hashlib

    from mattermail.store import access, add_user, insert_message, tokens, transaction, webhooks, webview

    s = Store(store_location, tmp_path / "m")
    add_user(s, "alice@lawfirm.test", "{ARGON2ID}x")
    add_user(s, "bob@lawfirm.test", "{ARGON2ID}x")
    access.set_role(s, "alice@lawfirm.test", "admin")
    token, secret = tokens.create_token(s, "bob@lawfirm.test")
    assert token.id >= 1 and tokens.authenticate_token(s, secret).login == "bob@lawfirm.test"
    d.add_matter(s, "1234", "Smith v Jones")
    hook = webhooks.add_webhook(s, "https://hooks.example/x", "/etc/secret", matter="1234")
    raw = b"From: a@example.test\r\nSubject: walled\r\nDate: Mon, 01 Jan 2024 09:00:00 +0000\r\n\r\nbody\r\n"
    with transaction(s):
        mid, _ = insert_message(s, raw, hashlib.sha256(raw).hexdigest())
        d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", "1234@m.test", ""))
    [event] = webhooks.due(s, now=1e12)
    assert (event.webhook, event.message, event.matter) == (hook.id, mid, "1234")
    access.deny(s, "1234", ["bob@lawfirm.test"])
    bob, alice = access.viewer(s, "bob@lawfirm.test"), access.viewer(s, "alice@lawfirm.test")
    assert webview.visible_message(s, bob, mid) is None and webview.visible_message(s, alice, mid).id == mid
    page = webview.matter_messages(s, alice, "1234")
    assert page.total == 1 and [m.id for m in page.items] == [mid]
    s.close()


def test_a_message_with_nul_characters_is_filed_on_both_engines(write_config, tmp_path, store_location):
    """Header and body text may carry NUL (attacker-controlled); PostgreSQL's text cannot hold it: it is stored
    as U+FFFD there instead of failing the delivery again and again."""
    import json

    from click.testing import CliRunner

    from mattermail.ctl.cli import cli

    cfg = write_config('[general]\ncatchall_domains = ["matters.lawfirm.test"]\n', store=store_location)

    def run(*args):
        r = CliRunner().invoke(cli, ["--config", str(cfg), *map(str, args)])
        assert r.exit_code == 0, r.output
        return r.stdout

    run("matter", "add", "1234", "--title", "Smith v Jones")
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.eml").write_bytes(b"Delivered-To: 1234@matters.lawfirm.test\r\nFrom: jane\x00@client.example\r\n"
                                b"Subject: deed\x00 of trust\r\nMessage-ID: <n\x00ul@client.example>\r\n\r\n"
                                b"the deed \x00 is signed\r\n")
    assert "imported 1: filed 1" in run("import", src)
    [hit] = json.loads(run("messages", "search", "deed", "--json"))
    shown = json.loads(run("messages", "show", hit["id"], "--json"))
    nul = "\x00" if isinstance(store_location, Path) else "\ufffd"
    assert shown["subject"] == f"deed{nul} of trust", shown["subject"]
    assert json.loads(run("store", "verify", "--json"))["ok"]


def test_deferred_statements_keep_their_order_and_their_errors(store_location, tmp_path):
    """db.defer (PostgreSQL: sent with the next statement, rows of one INSERT merged): the transaction reads
    what it deferred, executemany comes after it, and a failing one fails the next statement (at the latest
    the savepoint's RELEASE, which rolls back to the savepoint) — never silently."""
    from mattermail.store import StoreError, transaction

    s = Store(store_location, tmp_path / "m")
    sql = "INSERT INTO holds (matter, reason, actor, since) VALUES (?, ?, ?, ?)"
    d.add_matter(s, "1", "one")
    d.add_matter(s, "2", "two")
    with transaction(s):
        s.db.defer("INSERT INTO matters (id, title) VALUES (?, ?)", ["3", "three"], merge=True)
        s.db.defer("INSERT INTO matters (id, title) VALUES (?, ?)", ["4", "four"], merge=True)
        assert s.count("matters") == 4  # read after the deferred rows
        s.db.defer(sql, ["1", "r", "a", 1.0])
        s.db.defer("INSERT INTO matters (id, title) VALUES (?, ?)", ["5", "five"])
        s.db.executemany(sql, [["5", "r", "a", 2.0]])  # after the deferred matter it holds (a foreign key)
        with pytest.raises(StoreError):
            with transaction(s):
                s.db.defer(sql, ["1", "again", "a", 3.0])  # a duplicate key: refused only once sent
        assert s.count("holds") == 2  # the savepoint was rolled back, the transaction goes on
    assert sorted(r[0] for r in s.db.execute("SELECT matter FROM holds")) == ["1", "5"]
    assert s.count("matters") == 5
    s.close()
