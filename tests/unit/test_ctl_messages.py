"""mattermailctl messages list|show|search|export over a store filled by mattermailctl import."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl import importcmd, messages, routecmd  # noqa: F401  (register on cli)
from mattermail.ctl.base import cli
from mattermail.capture import capture_address
from mattermail.store import directory as d
from mattermail.store import EnvelopeRecord, Store, record_envelope

CA = "matters.lawfirm.test"
SECRET = b"q" * 32


def eml(to, subject, frm, body, date, extra=""):
    return (f"Delivered-To: {to}\r\n{extra}From: {frm}\r\nTo: someone@else.example\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: <{time.time_ns()}@test>\r\n\r\n{body}\r\n").encode()


class Env:
    def __init__(self, cfg: Path, tmp: Path, location: Path | str) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.store = Store(location, tmp / "messages")
        self.files: dict[str, Path] = {}
        self.ids: dict[str, int] = {}

    def run(self, *args, input=None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], input=input)

    def json(self, *args):
        r = self.run(*args, "--json")
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)


@pytest.fixture
def env(write_config, tmp_path, store_location):
    """Persons, matters and seven imported messages, named by what they are."""
    (tmp_path / "capture.key").write_bytes(SECRET)
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n'
                       f'[capture]\naddress = "capture@{CA}"\nsecret_file = "{tmp_path}/capture.key"\n',
                       store=store_location)
    e = Env(cfg, tmp_path, store_location)
    s = e.store
    d.add_person(s, "jane@client.example", "Jane Client")  # 1
    d.add_person(s, "alice@lawfirm.test", "Alice Lawyer")  # 2
    d.add_person(s, "bob@partner.example", "Bob Partner")  # 3
    d.add_matter(s, "1234", "Smith v Jones")
    d.add_matter(s, "5678", "Estate of Brown")
    record_envelope(s, EnvelopeRecord("aaaaaaaaaaaa", "Q1", "alice@lawfirm.test", ("bob@partner.example",),
                                      "alice@lawfirm.test", "127.0.0.1", time.time()))
    record_envelope(s, EnvelopeRecord("bbbbbbbbbbbb", "Q2", "alice@lawfirm.test", ("friend@other.example",),
                                      "alice@lawfirm.test", "127.0.0.1", time.time()))
    msgs = {
        "plus": eml(f"alice+1234@{CA}", "Draft settlement", "jane@client.example",
                    "Attached are the zebrafish reports for review.", "Mon, 01 Jan 2024 09:00:00 +0000"),
        "matter": eml(f"1234@{CA}", "Hearing date", "court@courts.example", "The hearing moves to March.",
                      "Tue, 02 Jan 2024 09:00:00 +0000"),
        "sender": eml(f"nobody@{CA}", "Lunch?", "Jane <jane@client.example>", "Are you free on Friday?",
                      "Wed, 03 Jan 2024 23:30:00 -0500"),  # = 2024-01-04 04:30 UTC
        "other": eml(f"m-5678@{CA}", "Estate inventory", "clerk@probate.example", "Inventory of the estate.",
                     "Fri, 05 Jan 2024 09:00:00 +0000"),
        "unfiled": eml(f"9999@{CA}", "Wrong matter", "stranger@else.example", "Who gets this?",
                       "Sat, 06 Jan 2024 09:00:00 +0000"),
        "system": eml(f"nobody@{CA}", "Out of office", "auto@else.example", "I am away.",
                      "Sun, 07 Jan 2024 09:00:00 +0000", extra="Auto-Submitted: auto-replied\r\n"),
        "captured": eml(capture_address(f"capture@{CA}", "aaaaaaaaaaaa", SECRET), "Our advice",
                        "alice@lawfirm.test", "Please find our advice.", "Mon, 08 Jan 2024 09:00:00 +0000"),
        "personal": eml(capture_address(f"capture@{CA}", "bbbbbbbbbbbb", SECRET), "Dinner",
                        "alice@lawfirm.test", "See you at eight.", "Tue, 09 Jan 2024 09:00:00 +0000"),
    }
    src = tmp_path / "src"
    src.mkdir()
    for name, raw in msgs.items():
        e.files[name] = src / f"{name}.eml"
        e.files[name].write_bytes(raw)
    r = e.run("import", src)
    assert r.exit_code == 0, r.output
    assert "imported 8: filed 5, unfiled 1, personal 1, system 1" in r.stdout
    for name, raw in msgs.items():
        e.ids[name] = s.db.execute("SELECT id FROM messages WHERE sha256 = ?",
                                   [hashlib.sha256(raw).hexdigest()]).fetchone()[0]
    yield e
    s.close()


def names_of(env, listed):
    by_id = {v: k for k, v in env.ids.items()}
    return [by_id[m["id"]] for m in listed]


def one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.output, r.output


# -- list ----------------------------------------------------------------------------------------------


def test_list_all_newest_first_with_envelope_and_filings(env):
    listed = env.json("messages", "list")
    assert names_of(env, listed) == ["personal", "captured", "system", "unfiled", "other", "sender", "matter", "plus"]
    plus = listed[-1]
    assert plus["status"] == "filed" and plus["direction"] == "inbound" and plus["date"] == "2024-01-01T09:00:00Z"
    assert plus["filings"] == [{"matter": "1234", "matter_title": "Smith v Jones", "person": "alice@lawfirm.test",
                                "person_id": 2, "rule": "plus-address", "recipient": f"alice+1234@{CA}",
                                "detail": "alice+1234; alice@lawfirm.test"}]
    assert plus["recipients"] == [f"alice+1234@{CA}"]
    assert plus["envelope_from"] is None and plus["envelope_recipients"] == []  # imported: no envelope
    sysm = listed[2]
    assert sysm["system"] and "auto-replied" in sysm["system_reason"]
    text = env.run("messages", "list").stdout.splitlines()
    assert len(text) == 8 and text[-1].startswith(f"{env.ids['plus']}\t2024-01-01 09:00\tinbound\tjane@client.example")
    assert text[-1].endswith("filed: matter 1234, alice@lawfirm.test")


def test_list_filters(env):
    ls = lambda *a: names_of(env, env.json("messages", "list", *a))
    assert ls("--matter", "1234") == ["matter", "plus"]
    assert ls("--person", "JANE@client.example") == ["sender"]
    assert ls("--person", "bob@partner.example") == ["captured"]
    assert ls("--unfiled") == ["unfiled"]  # not the personal copy, not the system mail (unfiled too)
    assert ls("--direction", "outbound") == ["personal", "captured"]
    assert ls("--direction", "inbound", "--limit", "2") == ["system", "unfiled"]
    assert ls("--since", "2024-01-04", "--until", "2024-01-06") == ["unfiled", "other", "sender"]
    assert ls("--until", "2024-01-04 04:29") == ["matter", "plus"]  # the -0500 date, read in UTC
    assert ls("--since", "2024-01-04T04:30:00", "--until", "2024-01-04") == ["sender"]
    assert ls("--matter", "5678", "--since", "2024-02-01") == []
    assert env.run("messages", "list", "--matter", "5678", "--since", "2024-02-01").stdout == "no messages\n"


def test_list_bad_filters(env):
    one_line_error(env.run("messages", "list", "--matter", "4242"), "--matter", "4242")
    one_line_error(env.run("messages", "list", "--person", "nobody@nowhere.example"), "--person")
    one_line_error(env.run("messages", "list", "--person", "not-an-address"), "--person")
    assert env.run("messages", "list", "--since", "last tuesday").exit_code == 2
    assert env.run("messages", "list", "--direction", "sideways").exit_code == 2
    for sub in ("list", "show", "search", "export"):
        r = CliRunner().invoke(cli, ["messages", sub, "--help"])
        assert r.exit_code == 0 and "Example:" in r.output, sub


# -- search ----------------------------------------------------------------------------------------------


def test_search_finds_body_words_and_filters_by_matter(env):
    hits = env.json("messages", "search", "zebrafish")
    assert names_of(env, hits) == ["plus"] and "[zebrafish]" in hits[0]["snippet"]
    assert names_of(env, env.json("messages", "search", "report")) == ["plus"]  # porter stemming: reports
    assert names_of(env, env.json("messages", "search", "inventory")) == ["other"]  # subject and body
    assert names_of(env, env.json("messages", "search", "subject:hearing")) == ["matter"]
    assert names_of(env, env.json("messages", "search", "zebrafish OR hearing", "--matter", "1234")) in (
        ["plus", "matter"], ["matter", "plus"])
    assert env.json("messages", "search", "inventory", "--matter", "1234") == []
    text = env.run("messages", "search", "zebrafish").stdout
    assert text.startswith(f"{env.ids['plus']}\t") and "[zebrafish]" in text
    assert env.run("messages", "search", "nonexistentword").stdout == "no messages match\n"


@pytest.mark.parametrize("query, found", [
    ('"zebrafish', ["plus"]),  # an unclosed quote runs to the end
    ("zebrafish(", ["plus"]), ("NEAR(zebrafish", []),  # one word: the phrase "near zebrafish" ("zebrafish AND", ["plus"]), ("^zebrafish", ["plus"]),
    ("AND OR", []), ("*", []), ('"', []), ("-zebrafish", []), ("nosuchcolumn:zebrafish", []),
    ("zebrafish -hearing", ["plus"]), ("zebrafish NOT reports", []), ("zebra*", ["plus"]), ("zebra", []),
])
def test_search_takes_operators_and_punctuation_as_words_never_failing(env, query, found):
    r = env.run("messages", "search", "--json", "--", query)
    assert r.exit_code == 0, f"{query!r}: exit {r.exit_code}: {r.output}"
    assert names_of(env, json.loads(r.stdout)) == found, f"{query!r}: {r.stdout}"


def test_search_with_no_words_is_refused(env):
    one_line_error(env.run("messages", "search", "   "), "QUERY", "empty")


# -- show ------------------------------------------------------------------------------------------------


def test_show_raw_returns_the_stored_bytes(env):
    for name in ("plus", "captured", "system"):
        r = env.run("messages", "show", env.ids[name], "--raw")
        assert r.exit_code == 0, r.output
        assert r.stdout_bytes == env.files[name].read_bytes()
    sha = hashlib.sha256(env.files["plus"].read_bytes()).hexdigest()
    assert env.run("messages", "show", sha[:10], "--raw").stdout_bytes == env.files["plus"].read_bytes()


def test_show_text_and_json(env):
    out = env.run("messages", "show", env.ids["plus"]).stdout
    assert "Subject:    Draft settlement" in out and "status: filed" in out
    assert f"matter 1234 (Smith v Jones), person alice@lawfirm.test: rule plus-address for alice+1234@{CA}" in out
    assert "filed" in out.split("events:")[1] and "source=import" in out
    shown = env.json("messages", "show", str(env.ids["captured"]))
    assert shown["direction"] == "outbound" and shown["status"] == "filed"
    assert [(f["person"], f["rule"]) for f in shown["filings"]] == [("bob@partner.example", "correspondent")]
    assert [e["kind"] for e in shown["events"]] == ["filed"]
    assert shown["captured_envelope"] == {"mail_from": "alice@lawfirm.test", "recipients": ["bob@partner.example"],
                                          "login": "alice@lawfirm.test", "queue_id": "Q1", "verified": True}
    assert ("captured envelope: from <alice@lawfirm.test> to <bob@partner.example>  login alice@lawfirm.test  queue Q1"
            in env.run("messages", "show", env.ids["captured"]).stdout)
    assert env.json("messages", "show", str(env.ids["plus"]))["captured_envelope"] is None
    assert {"name": "Subject", "value": "Our advice"} in shown["headers"]
    assert env.json("messages", "show", str(env.ids["personal"]))["status"] == "personal"
    assert "unknown matter 9999" in env.run("messages", "show", env.ids["unfiled"]).stdout


def test_show_bad_ids(env):
    one_line_error(env.run("messages", "show", "999999"), "ID", "no message")
    one_line_error(env.run("messages", "show", "latest"), "ID")
    assert env.run("messages", "show", "1", "--raw", "--json").exit_code == 2
    # a small message is kept in its row (store.inline_max): shown as such
    assert env.json("messages", "show", env.ids["plus"])["inline"] is True
    assert "file:       in the database (messages.raw)" in env.run("messages", "show", env.ids["plus"]).stdout
    # one kept in a file (stored before store.inline_max, or larger) whose file is gone
    sha = hashlib.sha256(env.files["plus"].read_bytes()).hexdigest()
    env.store.db.execute("UPDATE messages SET raw = NULL WHERE sha256 = ?", [sha])
    assert not env.store.blob_path(sha).exists()
    one_line_error(env.run("messages", "show", env.ids["plus"], "--raw"), "ID", "cannot be read")
    assert "(missing)" in env.run("messages", "show", env.ids["plus"]).stdout


# -- export ----------------------------------------------------------------------------------------------


def test_export_matter_writes_files_and_index(env, tmp_path):
    dest = tmp_path / "out" / "m1234"
    r = env.run("messages", "export", "--matter", "1234", dest)
    assert r.exit_code == 0, r.output
    assert "exported 2 messages" in r.stdout
    files = sorted(p.name for p in dest.iterdir())
    sha = {n: hashlib.sha256(env.files[n].read_bytes()).hexdigest() for n in ("plus", "matter")}
    assert files == [f"20240101-090000-{sha['plus'][:12]}.eml", f"20240102-090000-{sha['matter'][:12]}.eml",
                     "index.csv"]
    assert (dest / files[0]).read_bytes() == env.files["plus"].read_bytes()
    assert (dest / files[1]).read_bytes() == env.files["matter"].read_bytes()
    rows = list(csv.DictReader((dest / "index.csv").open(encoding="utf-8")))
    assert [(x["file"], x["id"], x["sha256"], x["rules"]) for x in rows] == [
        (files[0], str(env.ids["plus"]), sha["plus"], "plus-address"),
        (files[1], str(env.ids["matter"]), sha["matter"], "matter-address")]
    assert rows[0]["subject"] == "Draft settlement" and rows[0]["date"] == "2024-01-01T09:00:00Z"
    assert "person:alice@lawfirm.test" in rows[0]["filings"]


def test_export_person_and_refusals(env, tmp_path):
    dest = tmp_path / "bob"
    assert env.run("messages", "export", "--person", "bob@partner.example", dest).exit_code == 0
    rows = list(csv.DictReader((dest / "index.csv").open(encoding="utf-8")))
    assert [(x["id"], x["rules"], x["direction"]) for x in rows] == [(str(env.ids["captured"]), "correspondent",
                                                                     "outbound")]
    one_line_error(env.run("messages", "export", "--person", "bob@partner.example", dest), "DIR", "not empty")
    r = env.run("messages", "export", "--person", "bob@partner.example", dest, "--force")
    assert r.exit_code == 0, r.output
    assert len(list(dest.iterdir())) == 2
    assert env.run("messages", "export", dest / "x").exit_code == 2  # neither --matter nor --person
    assert env.run("messages", "export", "--matter", "1234", "--person", "bob@partner.example",
                   tmp_path / "y").exit_code == 2
    one_line_error(env.run("messages", "export", "--matter", "4242", tmp_path / "z"), "--matter")
    assert not (tmp_path / "z").exists()
    (tmp_path / "afile").write_text("x")
    one_line_error(env.run("messages", "export", "--matter", "1234", tmp_path / "afile"), "DIR")


# -- unverified capture copies ---------------------------------------------------------------------------


def test_a_copy_to_the_capture_address_that_does_not_verify_is_marked_in_every_listing(env, tmp_path):
    src = tmp_path / "planted"
    src.mkdir()
    (src / "planted.eml").write_bytes(eml(f"capture+abcdefabcdef.0123456789abcdef@{CA}", "Our advice (planted)",
                                          "jane@client.example", "A planted quokka.",
                                          "Wed, 10 Jan 2024 09:00:00 +0000"))
    r = env.run("import", src)
    assert r.exit_code == 0, r.output
    listed = env.json("messages", "list")
    planted = listed[0]
    assert planted["subject"] == "Our advice (planted)"
    assert (planted["direction"], planted["capture"]) == ("inbound", "unverified"), planted
    assert [m["capture"] for m in listed[1:3]] == ["verified", "verified"]  # the milter's copies
    assert all(m["capture"] is None for m in listed[3:])
    assert planted["id"] not in [m["id"] for m in env.json("messages", "list", "--direction", "outbound")]
    assert [m["id"] for m in env.json("messages", "list", "--unverified")] == [planted["id"]]
    line = env.run("messages", "list").stdout.splitlines()[0]
    assert line.startswith(f"{planted['id']}\t2024-01-10 09:00\tinbound\t") and line.endswith(
        "[UNVERIFIED capture copy]"), line
    assert not any("UNVERIFIED" in l for l in env.run("messages", "list").stdout.splitlines()[1:])
    shown = env.run("messages", "show", planted["id"]).stdout
    assert "  capture:    UNVERIFIED: came to the capture address" in shown, shown
    assert env.json("messages", "show", str(planted["id"]))["capture"] == "unverified"
    assert "capture=unverified" in shown.split("events:")[1]
    hit = env.run("messages", "search", "quokka").stdout
    assert hit.startswith(f"{planted['id']}\t") and "[UNVERIFIED capture copy]" in hit.splitlines()[0], hit
    assert env.json("messages", "search", "quokka")[0]["capture"] == "unverified"
    dest = tmp_path / "jane"
    assert env.run("messages", "export", "--person", "jane@client.example", dest).exit_code == 0
    rows = {x["id"]: x for x in csv.DictReader((dest / "index.csv").open(encoding="utf-8"))}
    assert (rows[str(planted["id"])]["direction"], rows[str(planted["id"])]["capture"]) == ("inbound", "unverified")
    assert rows[str(planted["id"])]["rules"] == "sender"


def test_search_notes_messages_not_indexed_yet(env):
    data = eml(f"1234@{CA}", "Late arrival", "court@courts.example", "The tapir exhibit.",
               "Wed, 10 Jan 2024 09:00:00 +0000")
    from mattermail.store import index_pending, insert_message, pending_count, transaction

    assert pending_count(env.store) == 0  # the import indexed what it stored before returning
    with transaction(env.store):  # what the router commits before its indexer has run
        insert_message(env.store, data, hashlib.sha256(data).hexdigest(), body_text="The tapir exhibit.")
    r = CliRunner().invoke(cli, ["--config", str(env.cfg), "messages", "search", "tapir"])
    assert r.exit_code == 0, r.output
    assert "no messages match" in r.stdout
    assert "note: 1 message is not indexed yet; the router indexes them in the background" in r.stderr, r.stderr
    assert index_pending(env.store) == 1  # the router's indexer catches up: found, no note
    r = CliRunner().invoke(cli, ["--config", str(env.cfg), "messages", "search", "tapir"])
    assert "Late arrival" in r.stdout and "[tapir]" in r.stdout and r.stderr == "", (r.stdout, r.stderr)
