"""Hostile text in mattermailctl's output (security probe, issue 11 items 5 and 6).

Attacker-controlled text (a subject, a From name, a file name, a log line)
must reach the admin's terminal with its control, bidi and invisible
characters escaped (``\\x1b``, ``\\u202e``), ``--json`` must keep the exact
string, and every CSV cell a spreadsheet would run as a formula gets a ``'``.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl import csvcells, statuscmd, terminal
from mattermail.ctl.cli import cli
from mattermail.ctl.terminal import safe, safe_lines
from mattermail.store import directory as d
from mattermail.store import Store

CA = "matters.lawfirm.test"
CTL = Path(__file__).resolve().parents[2] / "ctl"

# What the probe sent: an OSC window title (ESC ] 0 ; … BEL) and a screen clear (ESC [ 2 J), plus CR and a
# right-to-left override, all as one RFC 2047 encoded word.
HOSTILE_SUBJECT_HEADER = "=?utf-8?q?x_=1B]0;PWNED=07=1B[2J=0Dfake_=E2=80=AEtxt.exe?="
HOSTILE_SUBJECT = "x \x1b]0;PWNED\x07\x1b[2J fake \u202etxt.exe"  # the router stores the CR as a space
RAW_BAD = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


def no_raw_controls(text: str, what: str) -> None:
    seen = {repr(c): text.count(c) for c in RAW_BAD if c in text}
    assert not seen, f"{what}: raw control characters reached the terminal: {seen}\n{text!r}"


class Env:
    def __init__(self, cfg: Path, tmp: Path, location: Path | str) -> None:
        self.cfg, self.tmp = cfg, tmp
        self.store = Store(location, tmp / "messages")

    def run(self, *args: object, input: str | None = None):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)], input=input)


@pytest.fixture
def env(write_config, tmp_path, store_location):
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n',
                       store=store_location)
    e = Env(cfg, tmp_path, store_location)
    d.add_person(e.store, "jane@client.example", "Jane Client")
    d.add_matter(e.store, "1234", "Smith v Jones", ["jane@client.example"])
    yield e
    e.store.close()


def hostile_eml(tmp: Path, subject_header: str = HOSTILE_SUBJECT_HEADER, name: str = "hostile.eml") -> Path:
    p = tmp / name
    p.write_bytes((f"Delivered-To: 1234@{CA}\r\nFrom: =?utf-8?q?Evil=1B[31m_Sender?= <evil@attacker.example>\r\n"
                   f"To: someone@else.example\r\nSubject: {subject_header}\r\n"
                   f"Date: Mon, 01 Jan 2024 09:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@test>\r\n\r\n"
                   "zebrafish body text\r\n").encode())
    return p


@pytest.fixture
def imported(env):
    r = env.run("import", hostile_eml(env.tmp))
    assert r.exit_code == 0, r.output
    mid = env.store.db.execute("SELECT id, subject FROM messages").fetchone()
    assert mid[1] == HOSTILE_SUBJECT, f"the router stored the decoded subject {mid[1]!r}"
    return mid[0]


# -- the helper --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("\x1b]0;PWNED\x07", "\\x1b]0;PWNED\\x07"),
    ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
    ("\x7f\x80\x9b\x9f", "\\x7f\\x80\\x9b\\x9f"),
    ("abc\u202edef\u2066x\u2069\u202a\u200b\u2028\ufeff", "abc\\u202edef\\u2066x\\u2069\\u202a\\u200b\\u2028\\ufeff"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("Zoë Ærø 山田 مرحبا 👩\u200d⚖️ O'Brien", "Zoë Ærø 山田 مرحبا 👩\u200d⚖️ O'Brien"),  # left as they are
])
def test_safe_escapes_controls_bidi_and_invisible_characters(text, shown):
    assert safe(text) == shown


def test_safe_lines_keeps_our_own_tabs_and_newlines():
    assert safe_lines("a\tb\nc\x1b[2J\r") == "a\tb\nc\\x1b[2J\\r"


def test_every_command_writes_through_the_terminal_module():
    """No ctl module may write text past ctl/terminal.py (click.echo, print, sys.stdout/stderr)."""
    offenders = []
    for path in sorted(CTL.glob("*.py")):
        if path.name == "terminal.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in {("click", "echo"), ("click", "secho"), ("sys", "stdout"),
                                                  ("sys", "stderr")}:
                    offenders.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.Name) and node.id == "print":
                offenders.append(f"{path.name}:{node.lineno} print")
            if isinstance(node, ast.ImportFrom) and node.module == "click":
                offenders += [f"{path.name}:{node.lineno} from click import {a.name}" for a in node.names
                              if a.name in ("echo", "secho")]
    assert offenders == [], f"{len(offenders)} direct writes bypass the escaping: {offenders}"


# -- messages list / show / search, route explain -----------------------------------------------------


@pytest.mark.parametrize("args", [
    ("messages", "list"),
    ("messages", "list", "--matter", "1234"),
    ("messages", "show", "{id}"),
    ("messages", "search", "zebrafish"),
])
def test_hostile_subject_is_escaped_in_messages_output(env, imported, args):
    r = env.run(*(a.format(id=imported) for a in args))
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, " ".join(args))
    assert "\\x1b]0;PWNED\\x07\\x1b[2J fake \\u202etxt.exe" in r.output, r.output
    assert "Evil\\x1b[31m Sender" in r.output, r.output


@pytest.mark.parametrize("args", [("messages", "list"), ("messages", "show", "{id}"), ("messages", "search", "zebrafish")])
def test_json_keeps_the_exact_subject(env, imported, args):
    r = env.run(*(a.format(id=imported) for a in args), "--json")
    assert r.exit_code == 0, r.output
    assert r.output.isascii() and "\x1b" not in r.output, "JSON output is ASCII, controls as \\u escapes"
    data = json.loads(r.output)
    msg = data if isinstance(data, dict) else data[0]
    assert msg["subject"] == HOSTILE_SUBJECT
    assert msg["from"].startswith("Evil\x1b[31m Sender")


def test_route_explain_escapes_header_addresses_in_its_trace(env):
    # Without --recipient the address comes from the message's Delivered-To: attacker text in every trace line.
    p = env.tmp / "route.eml"
    p.write_bytes(b'Delivered-To: "nob\x1b]0;PWNED\x07\xc2\x9bx"@matters.lawfirm.test\r\nFrom: jane@client.example\r\n'
                  b"Subject: hello\r\n\r\nbody\r\n")
    r = env.run("route", "explain", p)
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, "route explain")
    shown = [line for line in r.output.splitlines() if "nob\\x1b]0;PWNED\\x07\\x9bx" in line]
    assert len(shown) >= 6, f"{len(shown)} lines show the escaped address:\n{r.output}"
    exact = json.loads(env.run("route", "explain", p, "--json").output)
    assert exact["resolved"][0]["address"] == '"nob\x1b]0;PWNED\x07\x9bx"@matters.lawfirm.test', exact["resolved"]


def test_show_raw_is_exact_to_a_pipe_and_escaped_on_a_terminal(env, monkeypatch):
    raw = (f"Delivered-To: 1234@{CA}\r\nFrom: evil@attacker.example\r\nSubject: raw bytes\r\n\r\n"
           "8bit body \x1b]0;PWNED\x07\x1b[2J\r\n").encode()
    (env.tmp / "raw.eml").write_bytes(raw)
    assert env.run("import", env.tmp / "raw.eml").exit_code == 0
    mid = env.store.db.execute("SELECT id FROM messages").fetchone()[0]
    r = env.run("messages", "show", mid, "--raw")
    assert r.exit_code == 0 and r.stdout_bytes == raw, r.stdout_bytes
    monkeypatch.setattr(terminal, "stdout_is_terminal", lambda: True)
    r = env.run("messages", "show", mid, "--raw")
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, "messages show --raw on a terminal")
    assert "8bit body \\x1b]0;PWNED\\x07\\x1b[2J\n" in r.output, r.output


# -- directory listings, with values stored before validation was strict -------------------------------


def test_person_matter_alias_user_listings_escape_stored_values(env):
    db = env.store.db
    pid = d.add_person(env.store, "eve@attacker.example").id
    db.execute("UPDATE persons SET name = ? WHERE id = ?", ["Eve\r\nbob@x.example\tAdmin\x1b[8m", pid])
    db.execute("INSERT INTO matters (id, title, status, created) VALUES (?, ?, 'open', 0)",
               ["9\x1b]0;x\x07", "Title \u202eevil"])
    db.execute("INSERT INTO users (login, password_hash, created) VALUES (?, 'x', 0)", ["eve,alice@lawfirm.test\x1b"])
    outputs = {
        "person list": env.run("person", "list"), "person show": env.run("person", "show", "eve@attacker.example"),
        "matter list": env.run("matter", "list"), "user list": env.run("user", "list"),
    }
    for what, r in outputs.items():
        assert r.exit_code == 0, (what, r.output)
        no_raw_controls(r.output, what)
    person_lines = [line for line in outputs["person list"].output.splitlines() if "eve@" in line]
    assert person_lines == ["eve@attacker.example\tEve\\r\\nbob@x.example\\tAdmin\\x1b[8m"], person_lines
    assert "9\\x1b]0;x\\x07\topen\tTitle \\u202eevil" in outputs["matter list"].output
    assert "eve,alice@lawfirm.test\\x1b" in outputs["user list"].output
    exact = json.loads(env.run("person", "list", "--json").output)
    assert exact[-1]["name"] == "Eve\r\nbob@x.example\tAdmin\x1b[8m"


def test_disclaimer_show_escapes_the_text(env):
    d_text = "Confidential\x1b[2J\n\u202eline two"
    env.store.db.execute("INSERT INTO disclaimers (scope, key, text, html, updated) VALUES ('default', '', ?, NULL, 0)",
                         [d_text])
    r = env.run("disclaimer", "show")
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, "disclaimer show")
    assert "    Confidential\\x1b[2J\n    \\u202eline two" in r.output, r.output
    assert json.loads(env.run("disclaimer", "show", "--json").output)[0]["text"] == d_text


def test_dkim_list_escapes_names_found_on_disk(write_config, tmp_path):
    from mattermail import dkimkeys

    keys = tmp_path / "keys"
    (keys / "evil\x1b]0;x\x07.example").mkdir(parents=True)
    dkimkeys.write_private_key(keys / "evil\x1b]0;x\x07.example" / "sel\u202e.ed25519.pem",
                               dkimkeys.generate("ed25519"), mode=0o600)
    cfg = write_config(f'[dkim]\nkeys_dir = "{keys}"\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "dkim", "list"])
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, "dkim list")
    assert "evil\\x1b]0;x\\x07.example\tsel\\u202e\ted25519" in r.output, r.output


def test_import_report_escapes_file_names(env):
    src = env.tmp / "src"
    src.mkdir()
    bad = src / "evil\x1b]0;PWNED\x07.eml"
    bad.write_bytes(b"not a message at all\n")
    r = env.run("import", src)
    assert r.exit_code == 1, r.output
    no_raw_controls(r.output, "import")
    assert "evil\\x1b]0;PWNED\\x07.eml: not an email message" in r.output, r.output


def test_status_escapes_daemon_replies_and_log_lines(env, monkeypatch):
    monkeypatch.setattr(statuscmd, "check_daemons", lambda cfg: [
        statuscmd.Check("router", "127.0.0.1:24", True, "220 evil\x1b]0;PWNED\x07 LMTP")])
    monkeypatch.setattr(statuscmd, "queue_counts", lambda d: statuscmd.QueueCounts("postqueue", {"active": 0}))
    monkeypatch.setattr(statuscmd, "recent_errors", lambda d, n: {
        "file": "/var/log/mail.log", "scanned": 3, "note": "",
        "errors": ["warning: hostname evil\x1b[2J\rdoes not resolve \u202e"]})
    r = env.run("status")
    assert r.exit_code == 0, r.output
    no_raw_controls(r.output, "status")
    assert "220 evil\\x1b]0;PWNED\\x07 LMTP" in r.output
    assert "warning: hostname evil\\x1b[2J\\rdoes not resolve \\u202e" in r.output
    exact = json.loads(env.run("status", "--json").output)
    assert exact["daemons"][0]["detail"] == "220 evil\x1b]0;PWNED\x07 LMTP"


@pytest.mark.parametrize("args", [
    ("matter", "show", "x\x1b]0;PWNED\x07"),
    ("messages", "list", "--matter", "\x1b[2J\u202e"),
    ("person", "show", "eve\x1b[2J@x.example"),
    ("import", "/nonexistent/\x1b]0;PWNED\x07"),
    ("messages", "list", "--direction", "in\x1b[2Jbound"),  # click's own error
    ("user", "add", "--bogus\x1b]0;x\x07", "a@b.example"),  # click's "No such option"
])
def test_error_messages_escape_what_they_echo(env, args):
    r = env.run(*args)
    assert r.exit_code in (1, 2), r.output
    no_raw_controls(r.output, " ".join(args))
    assert "\\x1b" in r.output, r.output


# -- CSV ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://evil.test/\",\"x\")", "'=HYPERLINK(\"http://evil.test/\",\"x\")"),
    ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tcmd", "'\tcmd"), ("\rcmd", "'\rcmd"),
    ("'=x", "''=x"), ("'t Hooft", "'t Hooft"), ("Smith = Jones", "Smith = Jones"), ("", ""),
])
def test_neutralise_and_restore(value, cell):
    assert csvcells.neutralise(value) == cell
    assert csvcells.restore(cell) == value


def test_messages_export_neutralises_formula_cells(env):
    src = env.tmp / "src"
    src.mkdir()
    for i, subject in enumerate(['=HYPERLINK("http://evil.test/","x")', "+cmd", "-cmd", "@cmd"]):
        hostile_eml(src, subject, f"{i}.eml")
    assert env.run("import", src).exit_code == 0
    r = env.run("messages", "export", "--matter", "1234", env.tmp / "out")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO((env.tmp / "out" / "index.csv").read_text())))
    subjects = sorted(row["subject"] for row in rows)
    assert subjects == ["'+cmd", "'-cmd", "'=HYPERLINK(\"http://evil.test/\",\"x\")", "'@cmd"], subjects
    exact = sorted(m["subject"] for m in json.loads(env.run("messages", "list", "--json").output))
    assert exact == ["+cmd", "-cmd", "=HYPERLINK(\"http://evil.test/\",\"x\")", "@cmd"]


def test_person_export_neutralises_and_import_round_trips(env, tmp_path):
    names = ["=HYPERLINK(\"http://evil.test/\",\"x\")", "+1", "-1", "@x", "'=quoted", "'t Hooft"]
    for i, name in enumerate(names):
        d.add_person(env.store, f"p{i}@client.example", name)
    # TAB and CR can no longer be given as names; stored before, they are neutralised all the same.
    for i, name in enumerate(["\tcmd", "\rcmd"], start=len(names)):
        pid = d.add_person(env.store, f"p{i}@client.example").id
        env.store.db.execute("UPDATE persons SET name = ? WHERE id = ?", [name, pid])
    out = tmp_path / "people.csv"
    assert env.run("person", "export", out).exit_code == 0
    cells = {row["email"]: row["name"] for row in csv.DictReader(io.StringIO(out.read_bytes().decode(), newline=""))}
    assert [cells[f"p{i}@client.example"] for i in range(8)] == [
        "'=HYPERLINK(\"http://evil.test/\",\"x\")", "'+1", "'-1", "'@x", "''=quoted", "'t Hooft", "'\tcmd", "'\rcmd"]
    # The exported cells (quotes and all) of p0..p5 imported again: the quote export added is dropped.
    exported = list(csv.reader(io.StringIO(out.read_bytes().decode(), newline="")))
    keep = [exported[0]] + [row for row in exported[1:] if row[0] in {f"p{i}@client.example" for i in range(6)}]
    for i in range(8):
        d.remove_person(env.store, f"p{i}@client.example")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(keep)
    r = env.run("person", "import", "-", input=buf.getvalue())
    assert r.exit_code == 0, r.output
    back = {p["email"]: p["name"] for p in json.loads(env.run("person", "list", "--json").output)}
    assert [back[f"p{i}@client.example"] for i in range(6)] == names
    # The TAB name, as exported, is refused on import (names hold no control characters), naming line and column.
    r = env.run("person", "import", "-", input=f"email,name\np6@client.example,\"'\tcmd\"\n")
    assert r.exit_code == 1 and "stdin line 2, column name:" in r.output and "U+0009" in r.output, r.output
