"""mattermailctl store verify, messages refile/delete, matter hold/release — through the CLI on a tmp store."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3

import psycopg
import pytest
from click.testing import CliRunner

from mattermail.ctl.cli import cli
from mattermail.store import Store

CA = "matters.lawfirm.test"


def eml(to: str, subject: str, n: int) -> bytes:
    return (f"Delivered-To: {to}\r\nFrom: jane@client.example\r\nTo: x@else.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 0{n} Jan 2024 09:00:00 +0000\r\nMessage-ID: <{n}@test>\r\n\r\nbody {n}\r\n").encode()


class Env:
    def __init__(self, cfg, tmp, location):
        self.cfg, self.tmp, self.location = cfg, tmp, location

    def sql(self, *statements: str) -> list[tuple]:
        """Run statements on the database behind the CLI's back, as its owner could (the chain's triggers off
        on PostgreSQL; SQLite's are dropped by the statements themselves); the last one's rows."""
        if isinstance(self.location, str):
            with psycopg.connect(self.location, autocommit=True) as pg:
                pg.execute("ALTER TABLE chain DISABLE TRIGGER USER")
                cur = None
                for q in statements:
                    if not q.startswith("DROP TRIGGER"):
                        cur = pg.execute(q)
                return cur.fetchall() if cur is not None and cur.description else []
        con = sqlite3.connect(self.location, isolation_level=None)
        try:
            rows: list[tuple] = []
            for q in statements:
                rows = con.execute(q).fetchall()
            return rows
        finally:
            con.close()

    def run(self, *args, env=None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], env=env)

    def ok(self, *args, env=None):
        r = self.run(*args, env=env)
        assert r.exit_code == 0, r.output
        return r

    def json(self, *args):
        return json.loads(self.ok(*args, "--json").stdout)

    def path_of(self, mid: int):
        sha = self.json("messages", "show", mid)["sha256"]
        return self.tmp / "messages" / sha[:2] / f"{sha}.eml"


def _env(write_config, tmp_path, location, inline_max: int | None = 0):
    """Three imported messages, each in a file of its own (inline_max 0); ``inline_max`` None: the default,
    small messages kept in their rows."""
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\n', store=location, inline_max=inline_max)
    e = Env(cfg, tmp_path, location)
    s = Store(location, tmp_path / "messages")
    s.close()
    e.ok("person", "add", "bob@partner.example", "--name", "Bob")
    e.ok("matter", "add", "1234", "--title", "Smith v Jones")
    e.ok("matter", "add", "5678", "--title", "Estate of Brown")
    src = tmp_path / "src"
    src.mkdir()
    for n, (to, subj) in enumerate([(f"1234@{CA}", "Hearing"), (f"5678@{CA}", "Inventory"),
                                    (f"1234@{CA}", "Settlement")], start=1):
        (src / f"{n}.eml").write_bytes(eml(to, subj, n))
    r = e.ok("import", src)
    assert "imported 3: filed 3" in r.stdout, r.stdout
    return e


@pytest.fixture
def env(write_config, tmp_path, store_location):
    return _env(write_config, tmp_path, store_location)


@pytest.fixture
def sqlite_env(write_config, tmp_path):
    return _env(write_config, tmp_path, tmp_path / "store.sqlite")


def test_verify_clean_store_exits_0_and_head_prints_length_and_digest(env):
    r = env.ok("store", "verify")
    assert "store verify: OK" in r.stdout and "chain length 6 head " in r.stdout, r.stdout
    head = env.json("store", "verify", "--head")
    assert head["length"] == 6 and len(head["head"]) == 64, head
    assert f"chain length 6 head {head['head']}" in env.ok("store", "verify", "--head").stdout
    j = env.json("store", "verify")
    assert j["ok"] and j["problems"] == [] and (j["messages"], j["filings"], j["files"]) == (3, 3, 3), j


def test_verify_names_a_flipped_byte(env):
    path = env.path_of(2)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x20
    path.write_bytes(bytes(data))
    r = env.run("store", "verify")
    assert r.exit_code == 1, r.output
    assert f"entry 3, stored, message 2, file {path}: raw file altered" in r.output, r.output
    assert "Traceback" not in r.output
    j = json.loads(env.run("store", "verify", "--json").stdout)
    assert not j["ok"] and [(p["message"], p["file"]) for p in j["problems"]] == [(2, str(path))], j


def test_verify_names_a_deleted_filing_and_a_deleted_entry(env):
    env.sql("DELETE FROM filings WHERE message = 3")
    r = env.run("store", "verify")
    assert r.exit_code == 1 and "entry 6, filed, message 3" in r.output and "missing from the filings table" \
        in r.output, r.output
    env.sql("DROP TRIGGER chain_no_delete", "DELETE FROM chain WHERE seq = 2")
    r = env.run("store", "verify")
    assert r.exit_code == 1 and "first: entry 3, stored, message 2" in r.output and \
        "entry 2 before it is missing" in r.output, r.output


def test_refile_is_in_history_and_verify(env):
    r = env.ok("messages", "refile", 2, "--matter", "1234", "--person", "bob@partner.example",
               "--reason", "sent to the wrong alias", env={"SUDO_USER": "alice"})
    assert "message 2 refiled to matter 1234 and bob@partner.example (chain entry 7)" in r.stdout, r.stdout
    d = env.json("messages", "show", 2)
    assert [(f["matter"], f["person"], f["rule"]) for f in d["filings"]] == [("1234", "bob@partner.example", "refile")]
    assert [(h["kind"], h["actor"]) for h in d["history"]] == [("stored", env_actor()), ("filed", env_actor()),
                                                               ("refiled", "alice")], d["history"]
    assert d["history"][-1]["detail"]["reason"] == "sent to the wrong alias"
    assert d["history"][-1]["detail"]["from"][0]["matter"] == "5678"
    text = env.ok("messages", "show", 2).stdout
    assert "#7" in text and "refiled  by alice" in text and "reason=sent to the wrong alias" in text, text
    env.ok("store", "verify")


def env_actor() -> str:
    from mattermail.ctl.base import admin_name

    return admin_name()


def test_delete_removes_the_file_after_the_chain_records_it(env):
    path = env.path_of(1)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    r = env.ok("messages", "delete", 1, "--reason", "personal mail", env={"SUDO_USER": "bob"})
    assert f"message 1 deleted (chain entry 7, sha256 {sha})" in r.stdout, r.stdout
    assert not path.exists()
    r = env.run("messages", "show", 1)
    assert r.exit_code == 1 and "no message 1" in r.output, r.output
    [row] = env.sql("SELECT kind, actor, sha256, detail FROM chain WHERE seq = 7")
    assert row[:3] == ("deleted", "bob", sha) and json.loads(row[3])["reason"] == "personal mail", row
    assert env.json("store", "verify")["messages"] == 2


def test_a_held_matter_refuses_delete_and_refile_away(env):
    r = env.ok("matter", "hold", "1234", "--reason", "litigation hold")
    assert "matter 1234 is under legal hold (litigation hold)" in r.stdout
    for args in (("messages", "delete", 1, "--reason", "x"),
                 ("messages", "refile", 3, "--matter", "5678", "--reason", "x")):
        r = env.run(*args)
        assert r.exit_code == 1, r.output
        assert "matter 1234, which is under legal hold (\"litigation hold\"" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert env.path_of(1).exists()
    r = env.run("matter", "hold", "1234", "--reason", "again")
    assert r.exit_code == 1 and "already under legal hold" in r.output
    # a message of an unheld matter may still be refiled INTO the held one
    env.ok("messages", "refile", 2, "--matter", "1234", "--reason", "belongs to Smith")
    r = env.ok("matter", "release", "1234", "--reason", "settled")
    assert "legal hold released (it was: litigation hold)" in r.stdout
    env.ok("messages", "delete", 1, "--reason", "after the hold")
    kinds = [k for (k,) in env.sql("SELECT kind FROM chain ORDER BY seq")]
    assert kinds[6:] == ["hold", "refiled", "release", "deleted"], kinds
    env.ok("store", "verify")


def test_errors_name_the_field(env):
    for args, needle in [(("messages", "delete", 99, "--reason", "x"), "ID: no message 99"),
                         (("messages", "refile", 1, "--matter", "0000", "--reason", "x"), "--matter: no matter 0000"),
                         (("messages", "delete", 1, "--reason", "  "), "--reason: give the reason"),
                         (("matter", "release", "1234", "--reason", "x"), "not under legal hold"),
                         (("matter", "hold", "9999", "--reason", "x"), "ID: no matter 9999")]:
        r = env.run(*args)
        assert r.exit_code == 1 and needle in r.output, (args, r.output)


# -- backup and restore ---------------------------------------------------------------------------------


_restore_dbs = itertools.count(1)


def _fresh(request, env, made: list[str]):
    def make(name):
        base = env.tmp / name
        base.mkdir()
        cfg = base / "mattermail.toml"
        location = base / "store.sqlite"
        if isinstance(env.location, str):  # a new, empty database in the session's cluster
            dbname = f"mm_restore_{os.getpid()}_{next(_restore_dbs)}"
            location = request.getfixturevalue("pg_cluster").create_database(dbname)
            made.append(dbname)
        cfg.write_text(env_config_text(base, location))
        return Env(cfg, base, location)

    return make


@pytest.fixture
def fresh_env(request, env):
    """``fresh_env(name)``: a second, empty store of ``env``'s engine (its own config) to restore into."""
    made: list[str] = []
    yield _fresh(request, env, made)
    for dbname in made:
        request.getfixturevalue("pg_cluster").drop_database(dbname)


def env_config_text(base, location):
    url = f'url = "{location}"\n' if isinstance(location, str) else ""
    return (f'[store]\npath = "{base}/store.sqlite"\n{url}messages_dir = "{base}/messages"\n'
            f'[general]\ncatchall_domains = ["{CA}"]\n')


def test_backup_then_restore_onto_an_empty_store_verifies(env, fresh_env, tmp_path):
    env.ok("messages", "delete", 3, "--reason", "gone before the backup")
    r = env.ok("backup", tmp_path / "bk")
    head = env.json("store", "verify", "--head")
    assert "2 messages, 2 filings, 2 raw files" in r.stdout and f"chain length {head['length']} head {head['head']}" \
        in r.stdout, r.stdout
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["chain"] == head and len(manifest["files"]) == 2, manifest
    r = env.run("backup", tmp_path / "bk")
    assert r.exit_code == 1 and "is not empty" in r.output, r.output

    assert (tmp_path / "bk" / ("store.dump" if isinstance(env.location, str) else "store.sqlite")).is_file()
    other = fresh_env("other")
    r = other.ok("restore", tmp_path / "bk")
    assert "restored 2 messages, 2 filings, 2 raw files" in r.stdout, r.stdout
    assert f"store verify: OK (chain length {head['length']} head {head['head']}, as at the backup)" in r.stdout
    listed = other.json("messages", "list")
    assert sorted(m["id"] for m in listed) == [1, 2], listed
    assert other.json("store", "verify", "--head") == head
    # once restored, it is not empty any more
    r = other.run("restore", tmp_path / "bk")
    assert r.exit_code == 1 and "is not empty (2 messages" in r.output, r.output


def test_messages_kept_in_their_rows_verify_back_up_restore_and_delete(write_config, tmp_path, store_location,
                                                                      request):
    """store.inline_max (the default): imported messages are kept in their rows, no files. verify re-hashes the
    rows and names an altered one; a backup writes each out as a file (manifest as ever); a restore puts them
    back in their rows (no files made) and verifies; delete takes the row's bytes with it."""
    e = _env(write_config, tmp_path, store_location, inline_max=None)
    assert not list((tmp_path / "messages").rglob("*.eml"))
    assert e.json("messages", "show", 2)["inline"] is True
    original = e.run("messages", "show", 2, "--raw").stdout_bytes
    assert original == eml(f"5678@{CA}", "Inventory", 2)
    j = e.json("store", "verify")
    assert j["ok"] and (j["messages"], j["files"]) == (3, 3), j

    flipped = original.replace(b"body 2", b"bodY 2")
    literal = (f"X'{flipped.hex()}'" if not isinstance(store_location, str) else f"decode('{flipped.hex()}', 'hex')")
    e.sql(f"UPDATE messages SET raw = {literal} WHERE id = 2")
    r = e.run("store", "verify")
    sha = hashlib.sha256(original).hexdigest()
    assert r.exit_code == 1 and f"message 2, file messages.raw ({sha[:16]}) in " in r.output \
        and "raw message altered" in r.output, r.output
    literal = (f"X'{original.hex()}'" if not isinstance(store_location, str) else f"decode('{original.hex()}', 'hex')")
    e.sql(f"UPDATE messages SET raw = {literal} WHERE id = 2")
    e.ok("messages", "delete", 3, "--reason", "gone before the backup")
    assert e.run("messages", "show", 3).exit_code == 1

    r = e.ok("backup", tmp_path / "bk")
    assert "2 messages, 2 filings, 2 raw files" in r.stdout, r.stdout
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert (tmp_path / "bk" / f"messages/{sha[:2]}/{sha}.eml").read_bytes() == original
    assert len(manifest["files"]) == 2
    made: list[str] = []
    try:
        other = _fresh(request, e, made)("other")
        r = other.ok("restore", tmp_path / "bk")
        assert "restored 2 messages" in r.stdout and "store verify: OK" in r.stdout, r.stdout
        assert other.run("messages", "show", 2, "--raw").stdout_bytes == original
        if not isinstance(store_location, str):  # (a pg_dump backup's rows cannot be read before it is restored)
            assert not list((other.tmp / "messages").rglob("*.eml"))
    finally:
        for dbname in made:
            request.getfixturevalue("pg_cluster").drop_database(dbname)


def test_restore_refuses_an_altered_backup_naming_the_file(env, fresh_env, tmp_path):
    env.ok("backup", tmp_path / "bk")
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    name = sorted(manifest["files"])[1]
    f = tmp_path / "bk" / name
    f.write_bytes(f.read_bytes().replace(b"body", b"bodY"))
    other = fresh_env("other")
    r = other.run("restore", tmp_path / "bk")
    assert r.exit_code == 1 and f"{f} does not match its SHA-256 in the manifest" in r.output, r.output
    assert other.json("store", "verify", "--head")["length"] == 0


def test_a_backup_taken_while_mail_is_written_restores_consistently(env, fresh_env, tmp_path):
    import threading

    from mattermail.store import Store, insert_message, transaction
    from mattermail.store import directory as d

    stop = threading.Event()
    written = []

    def writer():
        s = Store(env.location, tmp_path / "messages")
        n = 100
        while not stop.is_set() and n < 400:
            data = eml(f"1234@{CA}", "burst", 1)[:-2] + f"{n}\r\n".encode()
            sha, _ = s.write_blob(data)
            with transaction(s):
                mid, _ = insert_message(s, data, sha)
                d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", f"1234@{CA}", ""))
            written.append(mid)
            n += 1
        s.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert wait(lambda: len(written) >= 20), len(written)
        env.ok("backup", tmp_path / "bk")
        during = len(written)
    finally:
        stop.set()
        t.join(timeout=60)
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    other = fresh_env("other")
    r = other.ok("restore", tmp_path / "bk")
    assert "store verify: OK" in r.stdout, r.stdout
    # the snapshot holds the 3 imported messages and a prefix of the burst; two chain entries each
    assert 3 + 20 <= manifest["messages"] <= 3 + during + 1, (manifest["messages"], during, len(written))
    assert manifest["chain"]["length"] == 2 * manifest["messages"], manifest["chain"]
    ids = sorted(m["id"] for m in other.json("messages", "list", "--limit", "0"))
    assert ids == list(range(1, manifest["messages"] + 1)), ids


def wait(pred, timeout=30.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_verify_expect_checks_a_recorded_head(env):
    head = env.json("store", "verify", "--head")
    text = env.ok("store", "verify", "--head").stdout
    assert f"store verify --expect {head['length']}:{head['head']}" in text, text
    env.ok("store", "verify", "--expect", f"{head['length']}:{head['head']}")
    r = env.run("store", "verify", "--expect", f"{head['length']}:{'0' * 64}")
    assert r.exit_code == 1 and f"entry {head['length']}" in r.output and "rewritten" in r.output, r.output
    r = env.run("store", "verify", "--expect", "abc")
    assert r.exit_code == 1 and "--expect: 'abc' is not LENGTH:DIGEST" in r.output, r.output


def test_the_progress_bar_goes_to_stderr_on_a_terminal_only(env, monkeypatch):
    from mattermail.ctl import storecmd

    r = env.ok("store", "verify")
    assert "re-hashing" not in r.output
    monkeypatch.setattr(storecmd, "stderr_is_terminal", lambda: True)
    r = env.ok("store", "verify")
    assert "re-hashing raw messages" in r.stderr and "re-hashing" not in r.stdout, (r.stdout, r.stderr)


def test_store_log_shows_a_deleted_messages_trail(env):
    env.ok("messages", "delete", 2, "--reason", "wrong mailbox", env={"SUDO_USER": "carol"})
    log = env.json("store", "log", "--message", 2)
    assert [(e["kind"], e["message"]) for e in log] == [("stored", 2), ("filed", 2), ("deleted", 2)], log
    assert log[-1]["actor"] == "carol" and log[-1]["detail"]["reason"] == "wrong mailbox"
    assert log[-1]["detail"]["filings"][0]["matter"] == "5678"
    text = env.ok("store", "log", "--kind", "deleted").stdout.strip().splitlines()
    assert len(text) == 1 and text[0].split("\t")[2:5] == ["deleted", "carol", "message 2"], text
    assert "reason=wrong mailbox" in text[0]
    assert len(env.json("store", "log", "--limit", 2)) == 2


def test_an_incremental_backup_links_what_the_previous_one_holds(sqlite_env, tmp_path):
    env = sqlite_env
    env.ok("backup", tmp_path / "bk1")
    env.ok("messages", "delete", 3, "--reason", "gone")
    src = tmp_path / "src2"
    src.mkdir()
    (src / "4.eml").write_bytes(eml(f"1234@{CA}", "Later", 4))
    env.ok("import", src)
    r = env.ok("backup", "--since", tmp_path / "bk1", tmp_path / "bk2")
    assert "3 raw files" in r.stdout and f"2 linked from {tmp_path / 'bk1'}" in r.stdout, r.stdout
    m1 = json.loads((tmp_path / "bk1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "bk2" / "manifest.json").read_text())
    shared = sorted(set(m1["files"]) & set(m2["files"]))
    assert len(shared) == 2 and all((tmp_path / "bk2" / n).stat().st_nlink == 2 for n in shared), shared
    other = _fresh_sqlite(tmp_path, "other")
    assert "store verify: OK" in other.ok("restore", tmp_path / "bk2").stdout
    # a damaged file in the previous backup is not carried over: the store's copy is taken
    victim = tmp_path / "bk2" / shared[0]
    victim.write_bytes(victim.read_bytes() + b"x")  # also changes bk1's copy (the same inode)
    r = env.ok("backup", "--since", tmp_path / "bk2", tmp_path / "bk3")
    assert "1 linked" not in r.stdout and "2 linked" in r.stdout, r.stdout
    third = _fresh_sqlite(tmp_path, "third")
    assert "store verify: OK" in third.ok("restore", tmp_path / "bk3").stdout


def _fresh_sqlite(tmp_path, name):
    base = tmp_path / name
    base.mkdir()
    cfg = base / "mattermail.toml"
    cfg.write_text(env_config_text(base, base / "store.sqlite"))
    return Env(cfg, base, base / "store.sqlite")


def test_a_postgresql_backup_is_not_restored_onto_sqlite(write_config, tmp_path, pg_cluster):
    url = pg_cluster.create_database("mm_ctl_backup_cross", "mattermail_template")
    e = _env(write_config, tmp_path, url)
    e.ok("backup", tmp_path / "bk")
    r = _fresh_sqlite(tmp_path, "lite").run("restore", tmp_path / "bk")
    assert r.exit_code == 1 and "is a backup of a postgresql store and this store is on sqlite" in r.output \
        and "Traceback" not in r.output, r.output
    pg_cluster.drop_database("mm_ctl_backup_cross")


def test_a_sqlite_backup_is_not_restored_onto_postgresql(sqlite_env, tmp_path, pg_cluster):
    sqlite_env.ok("backup", tmp_path / "bk")
    url = pg_cluster.create_database("mm_ctl_restore_cross")
    base = tmp_path / "pg"
    base.mkdir()
    (base / "mattermail.toml").write_text(env_config_text(base, url))
    r = Env(base / "mattermail.toml", base, url).run("restore", tmp_path / "bk")
    assert r.exit_code == 1 and "is a backup of a sqlite store and this store is on postgresql" in r.output \
        and "store migrate" in r.output, r.output
    pg_cluster.drop_database("mm_ctl_restore_cross")


def test_backup_of_a_postgresql_store_without_pg_dump_names_the_package(write_config, tmp_path, pg_cluster,
                                                                        monkeypatch):
    from mattermail.store import backup

    url = pg_cluster.create_database("mm_ctl_backup", "mattermail_template")
    e = _env(write_config, tmp_path, url)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(backup, "PG_LIB", tmp_path / "none")
    r = e.run("backup", tmp_path / "b")
    assert r.exit_code == 1 and "pg_dump not found" in r.output and "postgresql-client" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output and not (tmp_path / "b").exists()
    pg_cluster.drop_database("mm_ctl_backup")
