"""Every mattermailctl command that takes an address, a matter id or a name checks it with mattermail.validate
(security probe, issue 11 item 7): one line naming the field, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl.cli import cli
from mattermail.store import directory as d
from mattermail.store import Store

CA = "matters.lawfirm.test"


class Env:
    def __init__(self, cfg: Path, tmp: Path, location: Path | str) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.store = Store(location, tmp / "messages")

    def run(self, *args: object, input: str | None = None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], input=input)

    def snapshot(self) -> dict[str, object]:
        """What a refused command must leave unchanged: the directory tables and the files Postfix/Dovecot read."""
        tables = {t: self.store.db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                  for t in ("persons", "person_addresses", "matters", "matter_persons", "aliases", "users",
                            "user_addresses", "disclaimers")}
        files = {p.name: p.read_bytes() for p in (self.tmp / "sender-login-map", self.tmp / "dovecot-users")
                 if p.exists()}
        return {**tables, **files}


@pytest.fixture
def env(write_config, tmp_path, store_location):
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n',
                       store=store_location)
    e = Env(cfg, tmp_path, store_location)
    d.add_person(e.store, "jane@client.example", "Jane Client")
    d.add_matter(e.store, "1234", "Smith v Jones")
    (tmp_path / "d.txt").write_text("Confidential.\n")
    yield e
    e.store.close()


def refused(r, field: str, *needles: str) -> str:
    assert r.exit_code == 1, f"exit {r.exit_code}: {r.output}"
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines: {r.output}"
    assert re.match(rf"Error: {re.escape(field)}[: ]", lines[0]), f"{lines[0]!r} does not name {field}"
    for n in needles:
        assert n in lines[0], lines[0]
    assert "\x1b" not in r.output and "\r" not in r.output
    return lines[0]


def test_user_add_with_a_comma_writes_nothing_to_the_sender_login_map(env):
    assert env.run("user", "add", "alice@lawfirm.test", input="correct-horse\n").exit_code == 0
    login_map = (env.tmp / "sender-login-map").read_bytes()
    mtime = os.stat(env.tmp / "sender-login-map").st_mtime_ns
    refused(env.run("user", "add", "eve,alice@lawfirm.test", input="correct-horse\n"), "address",
            "'eve,alice@lawfirm.test' is not an email address", "','")
    assert (env.tmp / "sender-login-map").read_bytes() == login_map == b"alice@lawfirm.test\talice@lawfirm.test\n"
    assert os.stat(env.tmp / "sender-login-map").st_mtime_ns == mtime, "the map was rewritten"
    assert [u["login"] for u in json.loads(env.run("user", "list", "--json").output)] == ["alice@lawfirm.test"]


SHAPES = {
    "comma": "eve,alice@lawfirm.test", "space": "eve alice@lawfirm.test", "crlf": "eve@lawfirm.test\r\nx",
    "esc": "eve\x1b]0;x\x07@lawfirm.test", "no-domain": "eve@", "double-dot": "eve..x@lawfirm.test",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("args, field", [
    (("user", "add", "{a}"), "address"),
    (("user", "add", "bob@lawfirm.test", "--send-as", "{a}"), "--send-as"),
    (("user", "passwd", "{a}"), "address"),
    (("user", "remove", "{a}"), "address"),
    (("alias", "add", "{a}", "--matter", "1234"), "address"),
    (("alias", "add", f"x@{CA}", "--person", "{a}"), "--person"),
    (("person", "add", "{a}"), "email"),
    (("person", "add", "bob@client.example", "--email", "{a}"), "--email"),
    (("person", "edit", "jane@client.example", "--add-email", "{a}"), "--add-email"),
    (("matter", "add", "77", "--title", "T", "--person", "{a}"), "--person"),
    (("disclaimer", "set", "--sender", "{a}", "--text", "{tmp}/d.txt"), "--sender"),
    (("disclaimer", "show", "--for", "{a}"), "--for"),
    (("test-send", "--user", "{a}", "--server", "127.0.0.1:9"), "--user"),
    (("messages", "list", "--person", "{a}"), "--person"),
    (("route", "explain", "{tmp}/d.txt", "--recipient", "{a}"), "--recipient"),
])
def test_every_address_option_refuses_the_probe_shapes(env, args, field, shape):
    before = env.snapshot()
    r = env.run(*(a.format(a=SHAPES[shape], tmp=env.tmp) for a in args), input="correct-horse\n")
    refused(r, field, "is not an email address")
    assert env.snapshot() == before, "a refused command changed the store or the tables"


@pytest.mark.parametrize("matter_id", ["a/b", "..", "../../etc/passwd", "x\x1b]0;x\x07", "a b", "a@b", ""])
@pytest.mark.parametrize("args, field", [
    (("matter", "add", "{m}", "--title", "T"), "id"),
    (("matter", "show", "{m}"), "id"),
    (("matter", "close", "{m}"), "id"),
    (("alias", "add", f"x@{CA}", "--matter", "{m}"), "--matter"),
    (("messages", "list", "--matter", "{m}"), "--matter"),
    (("messages", "search", "word", "--matter", "{m}"), "--matter"),
])
def test_every_matter_id_is_checked(env, matter_id, args, field):
    before = env.snapshot()
    refused(env.run(*(a.format(m=matter_id) for a in args)), field, "is not a valid matter id")
    assert env.snapshot() == before


@pytest.mark.parametrize("name, what", [("Eve\r\nBcc: x", "U+000D"), ("Eve\x1b[2J", "U+001B"),
                                        ("\u202eevE", "U+202E"), ("x" * 201, "longer than 200")])
@pytest.mark.parametrize("args, field", [
    (("person", "add", "eve@client.example", "--name", "{n}"), "--name"),
    (("person", "edit", "jane@client.example", "--name", "{n}"), "--name"),
    (("matter", "add", "77", "--title", "{n}"), "--title"),
])
def test_names_and_titles_refuse_control_and_bidi_characters(env, name, what, args, field):
    before = env.snapshot()
    refused(env.run(*(a.format(n=name) for a in args)), field, what)
    assert env.snapshot() == before


@pytest.mark.parametrize("domain", ["lawfirm", "law firm.test", "-x.test", "x\x1b.test", "a,b.test"])
def test_disclaimer_domain_is_checked(env, domain):
    before = env.snapshot()
    refused(env.run("disclaimer", "set", "--domain", domain, "--text", env.tmp / "d.txt"), "--domain",
            "is not a domain name")
    assert env.snapshot() == before


def test_normal_values_still_pass(env):
    assert env.run("user", "add", "Alice@LawFirm.test", "--send-as", "info@lawfirm.test",
                   input="correct-horse\n").exit_code == 0
    assert env.run("person", "add", "o'brien@client.example", "--name", "  Zoë O'Brien  ").exit_code == 0
    assert env.run("matter", "add", "SMITH-2024.01", "--title", "Smith v Jones (2024)").exit_code == 0
    assert env.run("alias", "add", f"smith@{CA}", "--matter", "SMITH-2024.01").exit_code == 0
    assert env.run("disclaimer", "set", "--domain", "LawFirm.test.", "--text", env.tmp / "d.txt").exit_code == 0
    users = json.loads(env.run("user", "list", "--json").output)
    assert users == [{"login": "alice@lawfirm.test", "send_as": ["alice@lawfirm.test", "info@lawfirm.test"]}]
    person = json.loads(env.run("person", "show", "O'Brien@client.example", "--json").output)
    assert person["name"] == "Zoë O'Brien"
    assert json.loads(env.run("matter", "show", "SMITH-2024.01", "--json").output)["aliases"] == [f"smith@{CA}"]
    assert json.loads(env.run("disclaimer", "show", "--json").output)[0]["key"] == "lawfirm.test"


def test_a_login_stored_before_the_checks_can_still_be_removed(env):
    env.store.db.execute("INSERT INTO users (login, password_hash, created) VALUES ('eve,alice@lawfirm.test', 'x', 0)")
    env.store.db.execute("INSERT INTO user_addresses (login, address) VALUES ('eve,alice@lawfirm.test', "
                         "'eve,alice@lawfirm.test')")
    r = env.run("user", "remove", "eve,alice@lawfirm.test")
    assert r.exit_code == 0, r.output
    assert json.loads(env.run("user", "list", "--json").output) == []
    assert (env.tmp / "sender-login-map").read_text() == ""


# -- CSV import: the same rules, errors name the line and the column -----------------------------------


@pytest.mark.parametrize("csv_text, needles", [
    ("email,name\nbob@client.example,Bob\neve,alice@x.example,Eve\n", ["stdin line 3, column"]),
    ('email,name\nbob@client.example,Bob\n"eve,alice@x.example",Eve\n',
     ["stdin line 3, column email: 'eve,alice@x.example' is not an email address"]),
    ('email,name\nbob@client.example,"Bob\r\nBcc: x"\n', ["stdin line 2, column name:", "U+000D"]),
    ("email,name\nbob@client.example,Bob\x1b[2J\n", ["stdin line 2, column name:", "U+001B"]),
    ("email,name,other_emails\nbob@client.example,Bob,b@x.example;eve@\n",
     ["stdin line 2, column other_emails: 'eve@' is not an email address"]),
])
def test_person_import_checks_every_cell(env, csv_text, needles):
    before = env.snapshot()
    line = refused(env.run("person", "import", "-", input=csv_text), "stdin line")
    for n in needles:
        assert n in line, line
    assert env.snapshot() == before, "a bad line imported something"


@pytest.mark.parametrize("csv_text, needles", [
    ("id,title\n77,Fine\na/b,Slash\n", ["stdin line 3, column id: 'a/b' is not a valid matter id"]),
    ("id,title\n..,Dots\n", ["stdin line 2, column id: '..' is not a valid matter id"]),
    ("id,title\n77,Title\x1b]0;x\x07\n", ["stdin line 2, column title:", "U+001B"]),
    ("id,title\n77,\u202eeltit\n", ["stdin line 2, column title:", "U+202E"]),
])
def test_matter_import_checks_every_cell(env, csv_text, needles):
    before = env.snapshot()
    line = refused(env.run("matter", "import", "-", input=csv_text), "stdin line")
    for n in needles:
        assert n in line, line
    assert env.snapshot() == before
