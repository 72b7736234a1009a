"""mattermailctl import (file, directory, mbox, Maildir, the sisimai corpus) and route explain (every rule)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl import aliases, importcmd, matters, messages, persons, routecmd  # noqa: F401  (register on cli)
from mattermail.ctl.base import cli
from mattermail.capture import capture_address
from mattermail.store import directory as d
from mattermail.store import EnvelopeRecord, Store, find_message, record_envelope

CA = "matters.lawfirm.test"
SECRET = b"k" * 32
TABLES = ("messages", "deliveries", "filings", "events", "captures")
SUMMARY = re.compile(r"^imported (\d+): filed (\d+), unfiled (\d+), personal (\d+), system (\d+), "
                     r"already present (\d+), errors (\d+)$", re.MULTILINE)


class Env:
    def __init__(self, cfg: Path, tmp: Path, location: Path | str) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.store = Store(location, tmp / "messages")

    def run(self, *args, input=None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], input=input)

    def counts(self) -> dict[str, int]:
        """Rows per table; ``blobs``: raw messages stored, as files or in their rows (store.inline_max)."""
        files = len(list((self.tmp / "messages").rglob("*.eml"))) if (self.tmp / "messages").exists() else 0
        rows = self.store.db.execute("SELECT COUNT(*) FROM messages WHERE raw IS NOT NULL").fetchone()[0]
        return {**{t: self.store.count(t) for t in TABLES}, "blobs": files + rows}


@pytest.fixture
def env(write_config, tmp_path, store_location):
    (tmp_path / "capture.key").write_bytes(SECRET)
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n'
                       f'[capture]\naddress = "capture@{CA}"\nsecret_file = "{tmp_path}/capture.key"\n',
                       store=store_location)
    e = Env(cfg, tmp_path, store_location)
    d.add_person(e.store, "jane@client.example", "Jane Client")  # id 1
    d.add_person(e.store, "alice@lawfirm.test", "Alice Lawyer")  # id 2
    d.add_person(e.store, "bob@partner.example", "Bob Partner")  # id 3
    d.add_matter(e.store, "1234", "Smith v Jones", ["jane@client.example"])
    d.add_matter(e.store, "5678", "Estate of Brown")
    d.add_alias(e.store, f"smith@{CA}", [CA], matter="5678")
    yield e
    e.store.close()


_n = 0


def eml(to: str | None = f"1234@{CA}", subject: str = "hello", frm: str = "stranger@else.example",
        body: str = "Nothing to see.", extra: str = "", date: str = "Mon, 01 Jan 2024 10:00:00 +0000") -> bytes:
    global _n
    _n += 1
    head = f"Delivered-To: {to}\r\n" if to else ""
    return (f"{head}{extra}From: {frm}\r\nTo: someone@else.example\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{_n}.{time.time_ns()}@test>\r\n\r\n{body}\r\n").encode()


def ok(r):
    assert r.exit_code == 0, r.output
    return r.output


def summary(r) -> tuple[int, ...]:
    found = SUMMARY.findall(r.stdout)
    assert len(found) == 1, r.output
    return tuple(int(x) for x in found[0])


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- import ------------------------------------------------------------------------------------------


def test_import_directory_recursively_then_rerun_adds_nothing(env, tmp_path):
    src = tmp_path / "src"
    filed = write(src / "a" / "1.eml", eml(f"1234@{CA}", body="the zebrafish report"))
    write(src / "a" / "b" / "2.eml", eml(f"9999@{CA}"))  # unknown matter: unfiled
    write(src / "a" / "b" / "msg-noext", eml(f"nobody@{CA}", frm="Jane <jane@client.example>"))  # sender rule
    write(src / "bounce.EML", eml(f"1234@{CA}", extra="Auto-Submitted: auto-replied\r\n"))  # system
    write(src / "copy.eml", filed.read_bytes())  # same bytes: stored once
    write(src / "notes.txt", b"From: not imported, has an extension\n\nx\n")
    write(src / "README", b"just some text, not a message\n")
    write(src / ".hidden.eml", eml())

    r = env.run("import", src)
    assert r.exit_code == 0, r.output
    assert summary(r) == (4, 2, 1, 0, 1, 1, 0)
    assert "skipped 3 files" in r.stderr
    rules = {(m, p, rule) for m, p, rule in env.store.db.execute("SELECT matter, person, rule FROM filings")}
    assert rules == {("1234", None, "matter-address"), (None, 1, "sender")}
    ev = [json.loads(x) for (x,) in env.store.db.execute("SELECT detail FROM events")]
    assert {e["source"] for e in ev} == {"import"} and len(ev) == 4
    before = env.counts()
    assert before["messages"] == 4 and before["blobs"] == 4 and before["deliveries"] == 0

    r2 = env.run("import", src)
    assert r2.exit_code == 0, r2.output
    assert summary(r2) == (0, 0, 0, 0, 0, 5, 0)
    assert env.counts() == before  # no message, filing or event twice


def test_import_single_eml_and_json_summary(env, tmp_path):
    f = write(tmp_path / "one.eml", eml(f"alice+1234@{CA}"))
    out = json.loads(ok(env.run("import", f, "--json")))
    assert out == {"imported": 1, "filed": 1, "unfiled": 0, "personal": 0, "system": 0, "already_present": 0,
                   "errors": 0, "error_files": [], "skipped": []}
    assert env.store.db.execute("SELECT matter, person, rule FROM filings").fetchall() == [("1234", 2, "plus-address")]
    assert json.loads(ok(env.run("import", f, "--json")))["already_present"] == 1


def test_import_mbox_splits_only_at_from_lines_after_an_empty_line(env, tmp_path):
    m1 = eml(f"1234@{CA}", body="first\r\n>From the quoted line\r\n")
    m2 = eml(f"5678@{CA}", body="second\nFrom here on, not a separator (no empty line before it)\n").replace(b"\r\n",
                                                                                                            b"\n")
    m3 = eml(f"9999@{CA}", body="third")
    mbox = b"".join(b"From sender@example.test Mon Jan  1 10:00:00 2024\n" + m + b"\n" for m in (m1, m2, m3))
    path = write(tmp_path / "archive", mbox)  # no extension: detected by its first line
    r = env.run("import", path)
    assert r.exit_code == 0, r.output
    assert summary(r) == (3, 2, 1, 0, 0, 0, 0)
    for m in (m1, m2, m3):  # each stored exactly, without the From_ line or the separating empty line
        assert find_message(env.store, hashlib.sha256(m).hexdigest()) is not None, m[:80]
    assert summary(env.run("import", path)) == (0, 0, 0, 0, 0, 3, 0)

    write(tmp_path / "dir" / "box.mbox", mbox)  # inside a directory: by its extension
    assert summary(env.run("import", tmp_path / "dir")) == (0, 0, 0, 0, 0, 3, 0)


def test_import_maildir_reads_cur_and_new_never_tmp(env, tmp_path):
    md = tmp_path / "Maildir"
    a = write(md / "cur" / "1700000000.M1P1.host:2,S", eml(f"1234@{CA}"))
    b = write(md / "new" / "1700000001.M2P2.host", eml(f"smith@{CA}"))
    c = write(md / ".Sent" / "cur" / "1700000002.M3P3.host:2,S", eml(f"m-5678@{CA}"))
    write(md / ".Sent" / "new" / ".keep", b"")
    write(md / ".Sent" / "tmp" / "1700000004_M5P5_host", eml(f"1234@{CA}", body="unfinished"))
    t = write(md / "tmp" / "1700000003_M4P4_host", eml(f"1234@{CA}", body="half written"))
    write(md / "dovecot-uidlist", b"3 V1700000000 N4\n")
    r = env.run("import", md)
    assert r.exit_code == 0, r.output
    assert summary(r) == (3, 3, 0, 0, 0, 0, 0)
    for f in (a, b, c):
        assert find_message(env.store, hashlib.sha256(f.read_bytes()).hexdigest()) is not None
    assert find_message(env.store, hashlib.sha256(t.read_bytes()).hexdigest()) is None
    assert sorted(r[0] for r in env.store.db.execute("SELECT rule FROM filings")) == [
        "alias", "matter-address", "matter-address"]


def test_unparseable_files_are_listed_errors_and_the_rest_is_imported(env, tmp_path):
    src = tmp_path / "src"
    write(src / "good.eml", eml(f"1234@{CA}"))
    write(src / "empty.eml", b"")
    write(src / "junk.eml", bytes(range(256)) * 4)
    write(src / "text.eml", b"Dear Sir,\n\nno headers here.\n")
    r = env.run("import", src)
    assert r.exit_code == 1, r.output
    assert summary(r) == (1, 1, 0, 0, 0, 0, 3)
    for name in ("empty.eml", "junk.eml", "text.eml"):
        assert re.search(rf"^error: .*{name}: ", r.stderr, re.MULTILINE), r.stderr
    assert "Traceback" not in r.output
    out = json.loads(env.run("import", src, "--json").stdout)
    assert out["errors"] == 3 and out["already_present"] == 1
    assert sorted(Path(e["path"]).name for e in out["error_files"]) == ["empty.eml", "junk.eml", "text.eml"]


def test_import_missing_path_is_a_user_error(env, tmp_path):
    r = env.run("import", tmp_path / "nope")
    assert r.exit_code == 1 and "PATH:" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_import_help_has_an_example_and_the_exit_status():
    r = CliRunner().invoke(cli, ["import", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "Exit status" in r.output


def test_import_the_sisimai_bounce_corpus(env, corpus):
    SISIMAI = corpus / "bounces" / "sisimai" / "maildir-bsd"
    files = corpus.files("bounces/sisimai/maildir-bsd")
    assert len(files) > 500, SISIMAI
    unique = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    r = env.run("import", SISIMAI)
    assert r.exit_code in (0, 1), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    n, filed, unfiled, personal, system, already, errors = summary(r)
    assert n + already + errors == len(files)  # every file imported, a duplicate, or an error
    assert n == filed + unfiled + personal + system
    assert n == len(unique) - errors and env.store.count("messages") == n  # the duplicates are stored once
    assert system > n // 2  # bounces are loop mail
    assert (r.exit_code == 1) == (errors > 0)
    before = env.counts()
    r2 = env.run("import", SISIMAI)
    assert summary(r2) == (0, 0, 0, 0, 0, n + already, errors)
    assert env.counts() == before


# -- route explain ---------------------------------------------------------------------------------


def explain(env, path, *args):
    r = env.run("route", "explain", path, *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


ALL_RULES = ("alias", "matter-address", "plus-address", "thread", "subject", "thread-subject", "sender",
             "correspondent")


@pytest.mark.parametrize("to, subject, frm, filings", [
    (f"smith@{CA}", "hi", "stranger@else.example", [("5678", None, "alias")]),
    (f"1234@{CA}", "hi", "stranger@else.example", [("1234", None, "matter-address")]),
    (f"m-5678@{CA}", "hi", "stranger@else.example", [("5678", None, "matter-address")]),
    (f"alice+1234@{CA}", "hi", "stranger@else.example", [("1234", "alice@lawfirm.test", "plus-address")]),
    (f"nobody@{CA}", "Re: [M-1234] draft", "stranger@else.example", [("1234", None, "subject")]),
    (f"nobody@{CA}", "hi", "Jane <JANE@client.example>", [(None, "jane@client.example", "sender")]),
    (f"1234@{CA}", "Matter 5678", "jane@client.example",
     [("1234", None, "matter-address"), (None, "jane@client.example", "sender")]),
])
def test_route_explain_each_rule(env, tmp_path, to, subject, frm, filings):
    f = write(tmp_path / "m.eml", eml(to, subject, frm))
    before = env.counts()
    out = explain(env, f)
    assert out["result"] == "filed"
    assert out["resolved"] == [{"address": to, "source": "Delivered-To"}]
    assert [(x["matter"], x["person"], x["rule"]) for x in out["filings"]] == filings
    for rule in ALL_RULES:
        assert any(line.startswith(f"{to}: {rule}: ") for line in out["trace"]), (rule, out["trace"])
    text = env.run("route", "explain", f).stdout
    for rule in ALL_RULES:
        assert f": {rule}: " in text, (rule, text)
    for _matter, _person, rule in filings:
        assert f"rule {rule}" in text
    assert env.counts() == before  # nothing stored


def test_route_explain_correspondent_rule_for_a_capture_copy(env, tmp_path):
    record_envelope(env.store, EnvelopeRecord("0123456789ab", "QOUT", "alice@lawfirm.test",
                                              ("friend@other.example", "bob@partner.example"),
                                              "alice@lawfirm.test", "127.0.0.1", time.time()))
    addr = capture_address(f"capture@{CA}", "0123456789ab", SECRET)
    f = write(tmp_path / "c.eml", eml(addr, frm="alice@lawfirm.test"))
    before = env.counts()
    out = explain(env, f)
    assert [(x["person"], x["rule"]) for x in out["filings"]] == [("bob@partner.example", "correspondent")]
    assert "envelope, Bcc" in out["filings"][0]["detail"]
    assert any("correspondent: bob@partner.example" in line for line in out["trace"])
    # no known correspondent: personal, not filed
    d.remove_person(env.store, "bob@partner.example")
    text = env.run("route", "explain", f).stdout
    assert "result: personal" in text
    assert env.counts() == before


def test_route_explain_unfiled_system_and_recipient_override(env, tmp_path):
    f = write(tmp_path / "u.eml", eml(f"9999@{CA}", frm="jane@client.example"))
    before = env.counts()
    out = explain(env, f)
    assert out["result"] == "unfiled" and out["unfiled_reason"] == "unknown matter 9999" and out["filings"] == []
    assert "result: unfiled: unknown matter 9999" in env.run("route", "explain", f).stdout

    out = explain(env, f, "--recipient", f"1234@{CA}")  # the envelope wins over the headers
    assert out["resolved"] == [{"address": f"1234@{CA}", "source": "envelope"}]
    assert [x["rule"] for x in out["filings"]] == ["matter-address", "sender"]

    none = write(tmp_path / "n.eml", eml(None, frm="stranger@else.example"))
    out = explain(env, none)
    assert out["resolved"] == [] and out["unfiled_reason"] == "no rule matched"
    assert out["trace"][0].startswith("resolution: no catch-all address in Delivered-To")

    bounce = write(tmp_path / "b.eml", eml(f"1234@{CA}", extra="Auto-Submitted: auto-replied\r\n"))
    out = explain(env, bounce)
    assert out["system"] and "auto" in out["system_reason"] and out["result"] == "filed"
    assert "system mail:" in env.run("route", "explain", bounce).stdout
    out = explain(env, f, "--recipient", f"1234@{CA}", "--envelope-from", "<>")
    assert out["system"] and "null envelope sender" in out["system_reason"]
    assert env.counts() == before


def test_route_explain_bad_input(env, tmp_path):
    r = env.run("route", "explain", tmp_path / "missing.eml")
    assert r.exit_code == 1 and "FILE: cannot read" in r.output and len(r.output.strip().splitlines()) == 1
    f = write(tmp_path / "m.eml", eml())
    r = env.run("route", "explain", f, "--recipient", "not an address")
    assert r.exit_code == 1 and "--recipient" in r.output, r.output
    r = env.run("route", "explain")
    assert r.exit_code == 2
    r = env.run("route", "explain", "-", "--json", input=eml(f"1234@{CA}"))
    assert r.exit_code == 0 and json.loads(r.stdout)["filings"][0]["matter"] == "1234"
    r = CliRunner().invoke(cli, ["route", "explain", "--help"])
    assert "Example:" in r.output
