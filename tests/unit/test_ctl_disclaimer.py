"""mattermailctl disclaimer: set / show / remove / preview."""

import json
from datetime import datetime
from email import policy
from email.parser import BytesParser

import pytest
from click.testing import CliRunner

import mattermail.ctl.disclaimers  # noqa: F401  (registers "disclaimer" on cli)
from mattermail.ctl.base import cli

TEXT = "TEXT NOTICE \u2014 this e-mail is confidential.\nIf you received it in error, delete it.\n"
HTML = '<p class="disclaimer">HTML NOTICE &mdash; this e-mail is confidential.</p>\n'


@pytest.fixture
def run(write_config, store_location):
    cfg = write_config(store=store_location)

    def invoke(*args):
        return CliRunner().invoke(cli, ["--config", str(cfg), *map(str, args)])

    return invoke


@pytest.fixture
def file(tmp_path):
    def write(name, content):
        p = tmp_path / name
        p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return p

    return write


@pytest.fixture
def texts(file):
    return file("d.txt", TEXT), file("d.html", HTML)


def show_json(run, *args):
    r = run("disclaimer", "show", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# -- set / show / remove --------------------------------------------------------


def test_set_default_domain_sender_and_show_json(run, file, texts):
    txt, htm = texts
    r = run("disclaimer", "set", "--text", txt, "--html", htm)
    assert r.exit_code == 0, r.output
    assert "set default disclaimer" in r.stdout
    r = run("disclaimer", "set", "--domain", "LawFirm.Test", "--text", file("dom.txt", "Domain notice\n"))
    assert r.exit_code == 0, r.output
    assert "set domain disclaimer for lawfirm.test" in r.stdout
    r = run("disclaimer", "set", "--sender", "Alice@LawFirm.test", "--text", file("s.txt", "Alice notice"))
    assert r.exit_code == 0, r.output
    assert "set sender disclaimer for alice@lawfirm.test" in r.stdout

    rows = show_json(run)
    assert [(d["scope"], d["key"], d["text"], d["html"]) for d in rows] == [
        ("default", "", TEXT, HTML),
        ("domain", "lawfirm.test", "Domain notice\n", None),
        ("sender", "alice@lawfirm.test", "Alice notice", None),
    ]
    for d in rows:
        assert datetime.fromisoformat(d["updated"]).tzinfo is not None

    # setting again replaces
    assert run("disclaimer", "set", "--domain", "lawfirm.test", "--text", file("d2.txt", "New")).exit_code == 0
    assert [d["text"] for d in show_json(run) if d["scope"] == "domain"] == ["New"]

    plain = run("disclaimer", "show")
    assert plain.exit_code == 0
    assert "TEXT NOTICE" in plain.stdout and "domain disclaimer for lawfirm.test" in plain.stdout


def test_show_empty(run):
    assert show_json(run) == []
    assert "no disclaimers" in run("disclaimer", "show").stdout


def test_utf8_bom_is_dropped(run, file):
    assert run("disclaimer", "set", "--text", file("bom.txt", b"\xef\xbb\xbfNotice")).exit_code == 0
    assert show_json(run)[0]["text"] == "Notice"


def test_full_html_document_warns_but_is_accepted(run, file, texts):
    doc = file("doc.html", "<HTML><body><p>Notice</p></body></html>")
    r = run("disclaimer", "set", "--text", texts[0], "--html", doc)
    assert r.exit_code == 0, r.output
    assert "warning: --html" in r.stderr and "fragment" in r.stderr
    assert "warning" not in r.stdout
    assert show_json(run)[0]["html"] == "<HTML><body><p>Notice</p></body></html>"
    r = run("disclaimer", "set", "--text", texts[0], "--html", texts[1])
    assert r.stderr == ""


@pytest.mark.parametrize(
    "address, scope, key",
    [
        ("alice@eu.lawfirm.test", "sender", "alice@eu.lawfirm.test"),
        ("Bob@EU.lawfirm.test", "domain", "eu.lawfirm.test"),
        ("carol@lon.lawfirm.test", "domain", "lawfirm.test"),
        ("dave@lawfirm.test", "domain", "lawfirm.test"),
        ("erin@example.test", "default", ""),
        ("frank@notlawfirm.test", "default", ""),
    ],
)
def test_precedence_via_show_for(run, file, address, scope, key):
    t = file("t.txt", "x")
    assert run("disclaimer", "set", "--text", t).exit_code == 0
    assert run("disclaimer", "set", "--domain", "lawfirm.test", "--text", t).exit_code == 0
    assert run("disclaimer", "set", "--domain", "eu.lawfirm.test", "--text", t).exit_code == 0
    assert run("disclaimer", "set", "--sender", "alice@eu.lawfirm.test", "--text", t).exit_code == 0
    got = show_json(run, "--for", address)
    assert (got["disclaimer"]["scope"], got["disclaimer"]["key"]) == (scope, key)
    r = run("disclaimer", "show", "--for", address)
    assert r.exit_code == 0 and f"{scope} disclaimer" in r.stdout


def test_show_for_without_match_and_remove(run, file):
    t = file("t.txt", "x")
    assert run("disclaimer", "set", "--domain", "lawfirm.test", "--text", t).exit_code == 0
    assert show_json(run, "--for", "a@example.test") == {"for": "a@example.test", "disclaimer": None}
    assert "no disclaimer applies to a@example.test" in run("disclaimer", "show", "--for", "a@example.test").stdout
    assert show_json(run, "--for", "a@lawfirm.test")["disclaimer"]["key"] == "lawfirm.test"

    r = run("disclaimer", "remove", "--domain", "LAWFIRM.test")
    assert r.exit_code == 0, r.output
    assert "removed domain disclaimer for lawfirm.test" in r.stdout
    assert show_json(run) == []
    assert run("disclaimer", "set", "--text", t).exit_code == 0
    assert run("disclaimer", "remove").exit_code == 0
    assert show_json(run) == []


@pytest.mark.parametrize(
    "args, field",
    [
        (["set", "--text", "{empty}"], "--text"),
        (["set", "--text", "{blank}"], "--text"),
        (["set", "--text", "{latin1}"], "--text"),
        (["set", "--text", "{missing}"], "--text"),
        (["set", "--text", "{good}", "--html", "{latin1}"], "--html"),
        (["set", "--text", "{good}", "--html", "{empty}"], "--html"),
        (["set", "--domain", "not a domain", "--text", "{good}"], "--domain"),
        (["set", "--domain", "lawfirm", "--text", "{good}"], "--domain"),
        (["set", "--domain", "-bad.test", "--text", "{good}"], "--domain"),
        (["set", "--domain", "a@lawfirm.test", "--text", "{good}"], "--domain"),
        (["set", "--sender", "no-at-sign", "--text", "{good}"], "--sender"),
        (["remove", "--domain", "ghost.test"], "no domain disclaimer for ghost.test"),
        (["remove", "--sender", "ghost@lawfirm.test"], "no sender disclaimer for ghost@lawfirm.test"),
        (["remove"], "no default disclaimer"),
        (["remove", "--domain", "bad domain"], "--domain"),
        (["show", "--for", "nobody"], "--for"),
    ],
)
def test_bad_input_exits_1_naming_the_field(run, file, tmp_path, args, field):
    paths = {
        "{empty}": file("empty.txt", b""),
        "{blank}": file("blank.txt", b" \n\t\n"),
        "{latin1}": file("latin1.txt", "Vertraulichkeit: \u00e4\u00f6\u00fc".encode("latin-1")),
        "{missing}": tmp_path / "nope.txt",
        "{good}": file("good.txt", "Notice"),
    }
    r = run("disclaimer", *[paths.get(a, a) for a in args])
    assert r.exit_code == 1, r.output
    assert field in r.output
    assert len(r.output.strip().splitlines()) == 1
    if args[0] == "set":
        assert show_json(run) == []  # nothing was stored


@pytest.mark.parametrize("command", ["set", "remove"])
def test_domain_and_sender_together_is_a_usage_error(run, file, command):
    extra = ["--text", file("t.txt", "x")] if command == "set" else []
    r = run("disclaimer", command, "--domain", "lawfirm.test", "--sender", "a@lawfirm.test", *extra)
    assert r.exit_code == 2, r.output
    assert "mutually exclusive" in r.output


def test_set_requires_text(run):
    r = run("disclaimer", "set", "--domain", "lawfirm.test")
    assert r.exit_code == 2 and "--text" in r.output


@pytest.mark.parametrize("command", ["set", "show", "remove", "preview"])
def test_every_command_has_an_example(run, command):
    r = run("disclaimer", command, "--help")
    assert r.exit_code == 0 and "Example:" in r.stdout


# -- preview --------------------------------------------------------------------

HEAD = (
    "From: Alice Example <alice@lawfirm.test>\n"
    "To: Bob <bob@client.example>\n"
    "Subject: Preview\n"
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\n"
    "Message-ID: <preview@lawfirm.test>\n"
    "MIME-Version: 1.0\n"
)

PLAIN = (HEAD + "Content-Type: text/plain; charset=utf-8\n"
         "Content-Transfer-Encoding: 8bit\n\nHello Bob,\n\nsee you soon \u2014 Alice\n")

ALTERNATIVE = HEAD + (
    'Content-Type: multipart/mixed; boundary="outer"\n\n'
    "--outer\n"
    'Content-Type: multipart/alternative; boundary="alt"\n\n'
    "--alt\n"
    "Content-Type: text/plain; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n\n"
    "Gr=FC=DFe, Bob\n"
    "--alt\n"
    "Content-Type: text/html; charset=us-ascii\n\n"
    "<html><body><p>Hi Bob</p></body></html>\n"
    "--alt--\n"
    "--outer\n"
    "Content-Type: application/pdf\n"
    'Content-Disposition: attachment; filename="a.pdf"\n'
    "Content-Transfer-Encoding: base64\n\n"
    "JVBERi0xLjQKJeLjz9MK\n"
    "--outer--\n"
)

SIGNED = HEAD + (
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
    ' boundary="sig"\n\n'
    "--sig\n"
    "Content-Type: text/plain\n\nSigned text\n"
    "--sig\n"
    "Content-Type: application/pkcs7-signature\n"
    "Content-Transfer-Encoding: base64\n\n"
    "MIIBAAAA\n"
    "--sig--\n"
)


def crlf(s: str) -> bytes:
    return s.replace("\n", "\r\n").encode("utf-8")


@pytest.fixture
def configured(run, file, texts):
    assert run("disclaimer", "set", "--domain", "lawfirm.test", "--text", texts[0], "--html", texts[1]).exit_code == 0


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


def test_preview_plain_message_crlf(run, file, configured):
    raw = crlf(PLAIN)
    r = run("disclaimer", "preview", file("plain.eml", raw))
    assert r.exit_code == 0, r.output
    out = r.stdout_bytes
    assert out != raw
    assert out.count(b"\n") == out.count(b"\r\n")  # line endings kept as CRLF
    head_end = raw.index(b"\r\n\r\n")
    assert out[:head_end] == raw[:head_end]
    body = parse(out).get_content()
    assert body.startswith("Hello Bob,")
    assert "see you soon \u2014 Alice" in body
    assert body.count("TEXT NOTICE \u2014 this e-mail is confidential.") == 1
    assert body.count("If you received it in error") == 1
    assert "HTML NOTICE" not in body
    assert "alice@lawfirm.test" in r.stderr and "domain disclaimer for lawfirm.test" in r.stderr

    # previewing the result again leaves it alone: the disclaimer is never doubled
    again = run("disclaimer", "preview", file("again.eml", out))
    assert again.exit_code == 0 and again.stdout_bytes == out
    assert "already has the disclaimer" in again.stderr


def test_preview_multipart_alternative(run, file, configured):
    raw = ALTERNATIVE.encode()
    r = run("disclaimer", "preview", file("alt.eml", raw))
    assert r.exit_code == 0, r.output
    msg = parse(r.stdout_bytes)
    parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
    assert set(parts) == {"text/plain", "text/html", "application/pdf"}

    text = parts["text/plain"].get_content()
    assert text.startswith("Gr\u00fc\u00dfe, Bob")
    assert text.count("TEXT NOTICE \u2014 this e-mail is confidential.") == 1
    assert "HTML NOTICE" not in text

    html = parts["text/html"].get_content()
    assert html.count("HTML NOTICE") == 1
    assert "TEXT NOTICE" not in html
    assert html.index("HTML NOTICE") < html.lower().index("</body>")

    assert parts["application/pdf"].get_content() == b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    tail = raw[raw.index(b"--outer\nContent-Type: application/pdf"):]
    assert r.stdout_bytes.endswith(tail)  # the attachment is byte-for-byte unchanged


def test_preview_sender_option_overrides_from(run, file, configured):
    assert run("disclaimer", "set", "--sender", "other@example.test", "--text", file("o.txt", "OTHER NOTICE")).exit_code == 0
    r = run("disclaimer", "preview", file("plain.eml", PLAIN.encode()), "--sender", "other@example.test")
    assert r.exit_code == 0, r.output
    body = parse(r.stdout_bytes).get_content()
    assert body.count("OTHER NOTICE") == 1 and "TEXT NOTICE" not in body
    assert "sender disclaimer for other@example.test" in r.stderr


def test_preview_signed_message_is_unchanged(run, file, configured):
    raw = crlf(SIGNED)
    r = run("disclaimer", "preview", file("signed.eml", raw))
    assert r.exit_code == 0, r.output
    assert r.stdout_bytes == raw
    assert "unchanged" in r.stderr and "signed" in r.stderr


def test_preview_without_disclaimer_exits_1(run, file):
    r = run("disclaimer", "preview", file("plain.eml", PLAIN.encode()))
    assert r.exit_code == 1
    assert "no disclaimer configured for alice@lawfirm.test" in r.output
    assert r.stdout == ""


def test_preview_domain_mismatch_exits_1(run, file, configured):
    r = run("disclaimer", "preview", file("plain.eml", PLAIN.encode()), "--sender", "x@example.test")
    assert r.exit_code == 1 and "no disclaimer configured for x@example.test" in r.output


def test_preview_without_from_needs_sender(run, file, configured):
    raw = b"Subject: no from\n\nbody\n"
    r = run("disclaimer", "preview", file("nofrom.eml", raw))
    assert r.exit_code == 1 and "--sender" in r.output
    r = run("disclaimer", "preview", file("nofrom.eml", raw), "--sender", "a@lawfirm.test")
    assert r.exit_code == 0 and r.stdout_bytes.count(b"TEXT NOTICE") == 1


def test_preview_missing_file_is_a_usage_error(run, tmp_path, configured):
    r = run("disclaimer", "preview", tmp_path / "nope.eml")
    assert r.exit_code == 2 and "nope.eml" in r.output


def test_preview_bad_sender_option(run, file, configured):
    r = run("disclaimer", "preview", file("plain.eml", PLAIN.encode()), "--sender", "bad")
    assert r.exit_code == 1 and "--sender" in r.output
