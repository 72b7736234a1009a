"""mattermailctl store migrate: a populated SQLite store copied into the session's PostgreSQL cluster."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from mattermail.ctl.cli import cli
from mattermail.store import EnvelopeRecord, Store, queue_forward, record_capture, record_envelope, transaction
from mattermail.store import migrate, sessions, tokens

CA = "matters.lawfirm.test"
_names = itertools.count(1)


def eml(n: int, to: str, subject: str, body: str, attachment: bytes | None = None) -> bytes:
    head = (f"Delivered-To: {to}\r\nFrom: jane@client.example\r\nTo: x@else.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 0{n % 9 + 1} Jan 2024 09:00:00 +0000\r\nMessage-ID: <{n}@test>\r\n")
    if attachment is None:
        return (head + f"\r\n{body}\r\n").encode()
    import base64

    return (head + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
            f"Content-Type: text/plain\r\n\r\n{body}\r\n--b1\r\nContent-Type: application/pdf\r\n"
            "Content-Disposition: attachment; filename=deed.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(attachment).decode().replace("\n", "\r\n") + "--b1--\r\n").encode()


class Env:
    def __init__(self, tmp: Path, cfg: Path) -> None:
        self.tmp, self.cfg = tmp, cfg

    def run(self, *args, input=None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], input=input)

    def ok(self, *args, input=None):
        r = self.run(*args, input=input)
        assert r.exit_code == 0, r.output
        return r

    def json(self, *args):
        return json.loads(self.ok(*args, "--json").stdout)

    def store(self) -> Store:
        return Store(self.tmp / "store.sqlite", self.tmp / "messages")


def _populate(e: Env) -> None:
    """Every kind of row: users, persons, matters, aliases, disclaimers, messages with an attachment, filings,
    a refile, a delete, a hold, envelopes and captures, an outbox notice, tokens, sessions, walls, webhooks."""
    e.ok("user", "add", "alice@lawfirm.test", "--send-as", "partners@lawfirm.test", input="correct-horse\n")
    e.ok("person", "add", "bob@partner.example", "--name", "Bob Partner")
    e.ok("matter", "add", "1234", "--title", "Smith v Jones")
    e.ok("matter", "add", "5678", "--title", "Estate of Brown")
    e.ok("alias", "add", f"smith@{CA}", "--matter", "1234")
    (e.tmp / "disclaimer.txt").write_text("Confidential.\n")
    e.ok("disclaimer", "set", "--text", e.tmp / "disclaimer.txt")
    secret = e.tmp / "hook.key"
    secret.write_text("s3cret-hook-key\n")
    e.ok("webhook", "add", "https://pms.example/hook", "--secret-file", secret)
    src = e.tmp / "src"
    src.mkdir()
    mails = [(f"1234@{CA}", "Hearing bundle", "the hearing is adjourned", b"%PDF-1.4 deed"),
             (f"5678@{CA}", "Inventory", "the inventory of the estate", None),
             (f"smith@{CA}", "Settlement draft", "settlement figures attached", b"%PDF-1.4 figures"),
             (f"1234@{CA}", "Costs", "costs schedule", None),
             (f"5678@{CA}", "Valuation", "valuation of the house", None)]
    for n, (to, subj, body, att) in enumerate(mails, start=1):
        (src / f"{n}.eml").write_bytes(eml(n, to, subj, body, att))
    (src / "6.eml").write_bytes(eml(6, f"5678@{CA}", "Nul\x00 subject", "a NUL\x00 in the body", None))
    assert "imported 6: filed 6" in e.ok("import", src).stdout
    e.ok("messages", "refile", 4, "--matter", "5678", "--reason", "wrong matter")
    e.ok("messages", "delete", 2, "--reason", "sent in error")
    e.ok("matter", "hold", "1234", "--reason", "litigation")
    e.ok("matter", "access", "5678", "--deny", "alice@lawfirm.test")
    e.ok("api", "token", "create", "--user", "alice@lawfirm.test")
    s = e.store()
    try:
        record_envelope(s, EnvelopeRecord("ref1", "4ABC", "alice@lawfirm.test", ("bob@partner.example",),
                                          "alice@lawfirm.test", "127.0.0.1", time.time(), "1@test"))
        with transaction(s):
            record_capture(s, 1, "ref1", True)
            queue_forward(s, 3, "4ABC", "failed@lawfirm.test", [("no match", "x")], "jane@client.example", "Costs")
        sessions.create_session(s, "alice@lawfirm.test", 8)
        tokens.create_token(s, "alice@lawfirm.test")
    finally:
        s.close()


@pytest.fixture
def env(write_config, tmp_path) -> Env:
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\n')
    e = Env(tmp_path, cfg)
    _populate(e)
    return e


@pytest.fixture
def pg_url(pg_cluster):
    name = f"mm_migrate_{next(_names)}"
    url = pg_cluster.create_database(name)  # empty: migrate makes the schema
    yield url
    pg_cluster.drop_database(name)


def counts(location, tmp: Path) -> dict[str, int]:
    s = Store(location, tmp / "messages")
    try:
        return {t.name: s.count(t.name) for t in migrate.TABLES}
    finally:
        s.close()


def pg_config(e: Env, url: str, messages_dir: Path | None = None) -> Env:
    """A config that names the PostgreSQL store (what the admin writes after the migration)."""
    cfg = e.tmp / "pg.toml"
    text = e.cfg.read_text().replace("[store]\n", f'[store]\nurl = "{url}"\n', 1)
    if messages_dir is not None:
        text = text.replace(f'messages_dir = "{e.tmp}/messages"', f'messages_dir = "{messages_dir}"')
    cfg.write_text(text)
    return Env(e.tmp, cfg)


def test_migrate_copies_every_table_and_the_copy_verifies_and_searches_the_same(env, pg_url):
    before = counts(env.tmp / "store.sqlite", env.tmp)
    assert all(before[t] > 0 for t in ("users", "messages", "filings", "chain", "envelopes", "captures", "outbox",
                                       "holds", "api_tokens", "web_sessions", "webhooks", "webhook_outbox",
                                       "matter_access", "aliases", "disclaimers", "thread_keys")), before
    r = env.ok("store", "migrate", "--to", pg_url)
    assert "verified: every table's count" in r.stdout, r.stdout
    assert f'url = "{pg_url}"' in r.stdout and "raw files: left in" in r.stdout, r.stdout
    assert counts(pg_url, env.tmp) == before
    pg = pg_config(env, pg_url)
    # ids kept: the same messages, filings and links under the same numbers; the chain verifies there
    # (a NUL in text is U+FFFD on PostgreSQL: connection.without_nul)
    assert pg.ok("messages", "list", "--json").stdout == env.ok("messages", "list", "--json").stdout.replace(
        "\\u0000", "\\ufffd")
    assert pg.json("messages", "show", 3) == env.json("messages", "show", 3)
    assert pg.json("messages", "show", 6)["subject"] == "Nul\ufffd subject"
    assert pg.json("store", "verify")["ok"]
    assert pg.json("store", "verify", "--head") == env.json("store", "verify", "--head")
    for q in ("hearing", "settlement", "subject:valuation", "estate"):
        assert [h["id"] for h in pg.json("messages", "search", q)] == \
            [h["id"] for h in env.json("messages", "search", q)], q
    assert [h["id"] for h in pg.json("messages", "search", "inventory")] == []  # message 2 was deleted
    # the sequences are past the copied ids: a new message, filing and webhook event get fresh ids
    src = env.tmp / "src2"
    src.mkdir()
    (src / "9.eml").write_bytes(eml(9, f"1234@{CA}", "After the move", "filed on postgresql", None))
    assert "imported 1: filed 1" in pg.ok("import", src).stdout
    assert max(m["id"] for m in pg.json("messages", "list")) == 7
    assert pg.json("store", "verify")["ok"]
    # the outbox's next id is past SQLite's high-water mark (AUTOINCREMENT: ids never reused)
    s = Store(pg_url, env.tmp / "messages")
    try:
        with transaction(s):
            assert queue_forward(s, 7, "5X", "failed@lawfirm.test", [("r", "x")]) == 2
    finally:
        s.close()


def test_a_second_run_copies_nothing_and_says_so(env, pg_url):
    env.ok("store", "migrate", "--to", pg_url)
    r = env.ok("store", "migrate", "--to", pg_url)
    rows = sum(counts(env.tmp / "store.sqlite", env.tmp).values())
    assert f"nothing new to copy: the {rows} rows of the source are on" in r.stdout, r.stdout
    j = env.json("store", "migrate", "--to", pg_url)
    assert j["ok"] and j["changed"] == 0 and j["resumed"], j
    dry = env.json("store", "migrate", "--to", pg_url, "--dry-run")
    assert dry["changed"] == 0 and all(t["copied"] == 0 for t in dry["tables"]), dry


def test_a_later_run_copies_what_changed_since(env, pg_url):
    env.ok("store", "migrate", "--to", pg_url)
    src = env.tmp / "src3"
    src.mkdir()
    (src / "7.eml").write_bytes(eml(7, f"5678@{CA}", "Late arrival", "probate papers", None))
    env.ok("import", src)
    env.ok("messages", "delete", 5, "--reason", "duplicate")
    env.ok("api", "token", "revoke", 1)
    dry = env.json("store", "migrate", "--to", pg_url, "--dry-run")
    by = {t["table"]: t for t in dry["tables"]}
    assert by["messages"]["copied"] == 1 and by["messages"]["removed"] == 1, by["messages"]
    assert by["api_tokens"]["updated"] == 1, by["api_tokens"]
    assert counts(pg_url, env.tmp)["messages"] == 5  # the dry run wrote nothing
    j = env.json("store", "migrate", "--to", pg_url)
    assert j["ok"] and j["resumed"] and j["changed"] == dry["changed"], j
    assert counts(pg_url, env.tmp) == counts(env.tmp / "store.sqlite", env.tmp)
    pg = pg_config(env, pg_url)
    assert [h["id"] for h in pg.json("messages", "search", "probate")] == [7]
    assert pg.json("store", "verify", "--head") == env.json("store", "verify", "--head")


def test_an_interrupted_run_resumes(env, pg_url, pg_cluster, monkeypatch):
    monkeypatch.setattr(migrate, "BATCH", 3)
    calls = itertools.count(1)
    real = migrate._insert

    def cut_off(db, *args):
        if next(calls) == 6:  # the server ends this session in the middle of the copy
            pg_cluster.sql(f"SELECT pg_terminate_backend({db.conn.info.backend_pid})")
        return real(db, *args)

    monkeypatch.setattr(migrate, "_insert", cut_off)
    r = env.run("store", "migrate", "--to", pg_url)
    assert r.exit_code == 1 and "run store migrate again to go on from there" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    part = counts(pg_url, env.tmp)
    full = counts(env.tmp / "store.sqlite", env.tmp)
    assert 0 < sum(part.values()) < sum(full.values()), part
    monkeypatch.setattr(migrate, "_insert", real)
    j = env.json("store", "migrate", "--to", pg_url)
    assert j["ok"] and j["resumed"], j
    assert sum(t["copied"] for t in j["tables"]) == sum(full.values()) - sum(part.values()), j
    assert sum(t["unchanged"] for t in j["tables"]) == sum(part.values())
    assert counts(pg_url, env.tmp) == full


def test_a_database_with_another_stores_data_is_refused_naming_the_row(env, pg_url, tmp_path):
    other = Store(pg_url, tmp_path / "other-messages")  # another store's first message on the target
    try:
        sha, _ = other.write_blob(b"Subject: elsewhere\r\n\r\nnot this firm's\r\n")
        from mattermail.store import insert_message

        with transaction(other):
            insert_message(other, b"Subject: elsewhere\r\n\r\nnot this firm's\r\n", sha)
    finally:
        other.close()
    r = env.run("store", "migrate", "--to", pg_url)
    assert r.exit_code == 1 and "holds data that is not this store's: table chain, seq 1: differs" in r.output, \
        r.output
    assert counts(pg_url, env.tmp)["messages"] == 1 and counts(pg_url, env.tmp)["users"] == 0  # nothing written
    assert "Traceback" not in r.output


def test_a_row_changed_on_a_chainless_target_is_refused(write_config, tmp_path, pg_url):
    e = Env(tmp_path, write_config())
    e.ok("matter", "add", "1234", "--title", "Smith v Jones")
    e.ok("store", "migrate", "--to", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("UPDATE matters SET title = 'Something else'")
    r = e.run("store", "migrate", "--to", pg_url)
    assert r.exit_code == 1 and "table matters, id '1234': differs from the source's row" in r.output, r.output


def test_messages_kept_in_their_rows_move_with_the_rows(env, pg_url, tmp_path):
    """store.inline_max (the default): the imported messages are in their rows; no file to copy, and the
    PostgreSQL store verifies by re-hashing the rows it was given."""
    assert not list((tmp_path / "messages").rglob("*.eml"))
    dest = tmp_path / "pg-messages"
    r = env.ok("store", "migrate", "--to", pg_url, "--messages-dir", dest)
    assert "raw files: 0 copied to" in r.stdout, r.stdout
    pg = pg_config(env, pg_url, dest)
    assert pg.json("store", "verify")["files"] == 5
    assert pg.run("messages", "show", "1", "--raw").stdout_bytes == env.run("messages", "show", "1", "--raw").stdout_bytes


def test_raw_files_copied_to_a_new_messages_dir_and_rehashed(write_config, pg_url, tmp_path):
    env = Env(tmp_path, write_config(f'[general]\ncatchall_domains = ["{CA}"]\n', inline_max=0))  # files
    _populate(env)
    dest = tmp_path / "pg-messages"
    r = env.ok("store", "migrate", "--to", pg_url, "--messages-dir", dest)
    assert "raw files: 5 copied to" in r.stdout and f'messages_dir = "{dest}"' in r.stdout, r.stdout
    assert len(list(dest.glob("*/*.eml"))) == 5
    pg = pg_config(env, pg_url, dest)
    assert pg.json("store", "verify")["files"] == 5
    victim = next(dest.glob("*/*.eml"))
    victim.write_bytes(victim.read_bytes() + b"tampered")
    r = env.run("store", "migrate", "--to", pg_url, "--messages-dir", dest)
    assert r.exit_code == 1 and "raw file altered" in r.output and str(victim) in r.output, r.output


def test_bad_urls_and_unreachable_databases_name_the_field_without_the_password(env, tmp_path):
    r = env.run("store", "migrate", "--to", "mysql://x@y/z")
    assert r.exit_code == 1 and "--to: 'mysql://x@y/z' is not a postgresql:// URL" in r.output, r.output
    r = env.run("store", "migrate", "--to", "postgresql://u:pw@127.0.0.1:5432")
    assert r.exit_code == 1 and "names no database" in r.output and "pw" not in r.output, r.output
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = env.run("store", "migrate", "--to", f"postgresql://mm:hunter22@127.0.0.1:{port}/mm")
    assert r.exit_code == 1 and f"--to: cannot use the database postgresql://mm:***@127.0.0.1:{port}/mm" in r.output
    assert "hunter22" not in r.output and "Traceback" not in r.output, r.output
    r = env.run("store", "migrate", "--to", "postgresql://x@127.0.0.1/y", "--from", tmp_path / "none.sqlite")
    assert r.exit_code == 1 and "--from: no store at" in r.output, r.output


def test_the_progress_bar_goes_to_stderr(env, pg_url, monkeypatch):
    from mattermail.ctl import storecmd

    monkeypatch.setattr(storecmd, "stderr_is_terminal", lambda: True)
    r = env.ok("store", "migrate", "--to", pg_url)
    assert "copying rows" in r.stderr and "verifying" in r.stderr and "copying rows" not in r.stdout, r.stderr


def test_every_table_of_the_schema_is_copied_or_rebuilt(tmp_path):
    s = Store(tmp_path / "s.sqlite", tmp_path / "m")
    try:
        assert migrate.unknown_tables(s) == []
    finally:
        s.close()


def test_a_run_while_mail_is_filed_copies_one_snapshot_and_the_next_run_the_rest(env, pg_url, monkeypatch):
    import threading

    from mattermail.store import directory as d
    from mattermail.store import insert_message

    monkeypatch.setattr(migrate, "BATCH", 2)  # many batches: the writer commits between them
    stop, written = threading.Event(), []

    def writer():
        s = env.store()
        n = 100
        while not stop.is_set() and n < 400:
            data = eml(n, f"1234@{CA}", "burst", f"burst {n}", None)
            sha, _ = s.write_blob(data)
            with transaction(s):
                mid, _ = insert_message(s, data, sha)
                d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", f"1234@{CA}", ""))
            written.append(mid)
            n += 1
            time.sleep(0.005)
        s.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 5:
            time.sleep(0.01)
        j = env.json("store", "migrate", "--to", pg_url)
        during = len(written)
    finally:
        stop.set()
        t.join(timeout=60)
    assert j["ok"], j["problems"]  # the copy is one commit of the source: it verifies by itself
    copied = counts(pg_url, env.tmp)["messages"]
    assert 5 + 5 <= copied <= 5 + during, (copied, during)
    assert 5 + len(written) > copied, "the writer wrote nothing after the snapshot: the test proved nothing"
    j = env.json("store", "migrate", "--to", pg_url)
    assert j["ok"] and j["resumed"], j
    assert counts(pg_url, env.tmp) == counts(env.tmp / "store.sqlite", env.tmp)


def test_a_target_that_has_taken_mail_since_is_refused(env, pg_url):
    env.ok("store", "migrate", "--to", pg_url)
    pg = pg_config(env, pg_url)
    src = env.tmp / "src4"
    src.mkdir()
    (src / "8.eml").write_bytes(eml(8, f"1234@{CA}", "Filed on the new store", "already live", None))
    pg.ok("import", src)  # the router moved to PostgreSQL and filed mail there
    r = env.run("store", "migrate", "--to", pg_url)
    length = env.json("store", "verify", "--head")["length"]
    assert r.exit_code == 1 and f"table chain, seq {length + 1}: is on the target but not in the source" in r.output, \
        r.output
    assert pg.json("store", "verify")["ok"]  # untouched


def test_a_dry_run_on_an_empty_database_writes_nothing(env, pg_url, pg_cluster):
    j = env.json("store", "migrate", "--to", pg_url, "--dry-run")
    rows = counts(env.tmp / "store.sqlite", env.tmp)
    assert j["dry_run"] and {t["table"]: t["copied"] for t in j["tables"]} == rows, j
    name = pg_url.rsplit("/", 1)[1]
    assert pg_cluster.sql_value("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", name) == 0
    text = env.ok("store", "migrate", "--to", pg_url, "--dry-run").stdout
    assert "nothing written" in text and "verified" not in text, text


def test_migrate_backup_and_restore_as_the_databases_owner_not_a_superuser(env, pg_cluster, tmp_path):
    """As deployed: the mattermail role owns its database and is no superuser (triggers switched off by the
    table owner, pg_dump/pg_restore of what it owns)."""
    role = f"mm_owner_{next(_names)}"
    pg_cluster.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'Secret-9'")
    for db in (f"{role}_a", f"{role}_b"):
        pg_cluster.sql(f"CREATE DATABASE {db} OWNER {role}")
    url_a, url_b = (pg_cluster.url(db).replace("postgres@", f"{role}:Secret-9@") for db in (f"{role}_a", f"{role}_b"))
    try:
        assert "verified: every table's count" in env.ok("store", "migrate", "--to", url_a).stdout
        head = env.json("store", "verify", "--head")
        pg = pg_config(env, url_a)
        assert "chain length" in pg.ok("backup", tmp_path / "bk").stdout
        cfg_b = tmp_path / "b.toml"
        cfg_b.write_text(pg.cfg.read_text().replace(url_a, url_b).replace(f"{env.tmp}/messages", f"{tmp_path}/mb"))
        r = Env(tmp_path, cfg_b).ok("restore", tmp_path / "bk")
        assert f"store verify: OK (chain length {head['length']} head {head['head']}, as at the backup)" in r.stdout
        assert "Secret-9" not in r.output
    finally:
        for db in (f"{role}_a", f"{role}_b"):
            pg_cluster.drop_database(db)
        pg_cluster.sql(f"DROP ROLE {role}")


def test_a_row_postgresql_refuses_is_named(write_config, tmp_path, pg_url):
    """SQLite keeps any value in any column; a value PostgreSQL's column type refuses names its table and row."""
    import sqlite3

    e = Env(tmp_path, write_config())
    e.ok("person", "add", "bob@partner.example", "--name", "Bob")
    con = sqlite3.connect(tmp_path / "store.sqlite")
    con.execute("UPDATE persons SET created = 'yesterday'")
    con.commit()
    con.close()
    r = e.run("store", "migrate", "--to", pg_url)
    assert r.exit_code == 1, r.output
    assert "table persons: the rows from {'id': 1} to {'id': 1} cannot be written to the target: invalid input " \
           "syntax for type double precision" in r.output, r.output
