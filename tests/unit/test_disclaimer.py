"""Tests for mattermail.milter.disclaimer: a table of MIME shapes plus the corpus."""
from __future__ import annotations

import html
import importlib.util
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mattermail.milter.disclaimer import Disclaimer, Result, decorate

_spec = importlib.util.spec_from_file_location(
    "mattermail_tests_mime_shapes", Path(__file__).with_name("mime_shapes.py"))
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)

ASCII = Disclaimer("CONFIDENTIALITY NOTICE: this e-mail is for the addressee only.\n"
                   "If you received it in error, please delete it. <Firm & Partners LLP>")
INTL = Disclaimer("Vertraulich \u2014 \u672c\u30e1\u30fc\u30eb\u306f\u6a5f\u5bc6\u3067\u3059\u3002")
JA = Disclaimer("\u672c\u30e1\u30fc\u30eb\u306f\u6a5f\u5bc6\u60c5\u5831\u3092\u542b\u307f\u307e\u3059\u3002\n"
                "\u8aa4\u3063\u3066\u53d7\u4fe1\u3055\u308c\u305f\u5834\u5408\u306f\u524a\u9664\u3057\u3066"
                "\u304f\u3060\u3055\u3044\u3002")
FR = Disclaimer("Confidentiel : r\u00e9serv\u00e9 au destinataire.",
                html="<p class=legal>Confidentiel : r&eacute;serv&eacute; au destinataire.</p>")

HTML_DOC = "<html><head><title>t</title></head><body><p>Hello Bob,</p><p>See attached.</p></body></html>"


@dataclass
class Case:
    raw: bytes
    decorated: tuple[int, ...] = ()  # indices of leaves (stdlib walk order) to decorate
    skip: str | None = None  # word expected in the reason when left unchanged
    disclaimer: Disclaimer = ASCII
    charset: dict[int, str] = field(default_factory=dict)  # leaf -> charset afterwards
    cte: dict[int, str] = field(default_factory=dict)  # leaf -> transfer encoding afterwards


P, M, msg = S.part, S.multipart, S.message
PLAIN = P("text/plain", "Hello Bob,\n\nplease find the contract attached.\n\nAlice", charset="us-ascii")
HTML = P("text/html", HTML_DOC, charset="utf-8", cte="quoted-printable")
PDF = P("application/pdf", S.PDF, cte="base64", disposition='attachment; filename="c.pdf"')
IMG = P("image/png", S.PNG, cte="base64", disposition="inline", extra=("Content-ID: <logo@firm>",))
ALT = M("alternative", PLAIN, HTML)
FWD_INNER = msg(M("mixed", P("text/plain", "Forwarded text", charset="us-ascii"), PDF), "Fwd inner")
SIG = P("application/pkcs7-signature", b"\x30\x82signature", cte="base64",
        disposition='attachment; filename="smime.p7s"')
SIGNED = M("signed", PLAIN, SIG, params='; protocol="application/pkcs7-signature"; micalg=sha-256')
ENCRYPTED = M("encrypted", P("application/pgp-encrypted", "Version: 1"),
              P("application/octet-stream", "-----BEGIN PGP MESSAGE-----\nxx\n-----END PGP MESSAGE-----"),
              params='; protocol="application/pgp-encrypted"')
ICS = "BEGIN:VCALENDAR\nMETHOD:REQUEST\nBEGIN:VEVENT\nSUMMARY:Meeting\nEND:VEVENT\nEND:VCALENDAR"
QUOTED = ("Thanks!\n\n> On Monday Bob wrote:\n> CONFIDENTIALITY NOTICE: this e-mail is for the\n"
          "> addressee only.\n> If you received it in error, please delete it. <Firm &\n> Partners LLP>\n")
LATIN = "Caf\u00e9 cr\u00e8me \u00e0 la fa\u00e7on du chef.\nMerci"
LONG = "word " * 1200

CASES: dict[str, Case] = {
    "plain_7bit": Case(msg(PLAIN), (0,), charset={0: "us-ascii"}, cte={0: "7bit"}),
    "plain_8bit_utf8": Case(msg(P("text/plain", "Gr\u00fc\u00dfe aus K\u00f6ln", charset="utf-8", cte="8bit")),
                            (0,), disclaimer=INTL, charset={0: "utf-8"}, cte={0: "8bit"}),
    "plain_qp": Case(msg(P("text/plain", "Soft = equals \u00e9\n" + "x" * 200, charset="utf-8",
                           cte="quoted-printable")), (0,), charset={0: "utf-8"}, cte={0: "quoted-printable"}),
    "plain_base64": Case(msg(P("text/plain", "Base64 body\nline 2\n", charset="utf-8", cte="base64")),
                         (0,), disclaimer=INTL, cte={0: "base64"}),
    "latin1_nonlatin_disclaimer": Case(msg(P("text/plain", LATIN, charset="iso-8859-1", cte="8bit")),
                                       (0,), disclaimer=INTL, charset={0: "utf-8"}, cte={0: "8bit"}),
    "latin1_qp_nonlatin_disclaimer": Case(msg(P("text/plain", LATIN, charset="iso-8859-1",
                                                cte="quoted-printable")), (0,), disclaimer=INTL,
                                          charset={0: "utf-8"}, cte={0: "quoted-printable"}),
    "latin1_latin_disclaimer": Case(msg(P("text/plain", LATIN, charset="iso-8859-1", cte="quoted-printable")),
                                    (0,), disclaimer=FR, charset={0: "iso-8859-1"}, cte={0: "quoted-printable"}),
    "latin1_html_nonlatin_keeps_charset": Case(msg(P("text/html", "<p>" + LATIN + "</p>", charset="iso-8859-1",
                                                     cte="8bit")), (0,), disclaimer=INTL,
                                               charset={0: "iso-8859-1"}, cte={0: "8bit"}),
    "utf8_intl": Case(msg(P("text/plain", "\u041f\u0440\u0438\u0432\u0435\u0442", charset="utf-8",
                            cte="base64")), (0,), disclaimer=INTL, charset={0: "utf-8"}),
    "shift_jis_base64": Case(msg(P("text/plain", "\u3053\u3093\u306b\u3061\u306f\u3002\u8cc7\u6599\u3067\u3059",
                                   charset="shift_jis", cte="base64")), (0,), disclaimer=JA,
                             charset={0: "shift_jis"}, cte={0: "base64"}),
    "iso2022jp_7bit": Case(msg(P("text/plain", "\u3053\u3093\u306b\u3061\u306f\u3002\nABC",
                                 charset="iso-2022-jp", cte="7bit")), (0,), disclaimer=JA,
                           charset={0: "iso-2022-jp"}, cte={0: "7bit"}),
    "iso2022jp_needs_utf8": Case(msg(P("text/plain", "\u3053\u3093\u306b\u3061\u306f", charset="iso-2022-jp",
                                       cte="7bit")), (0,), disclaimer=FR, charset={0: "utf-8"},
                                 cte={0: "quoted-printable"}),
    "utf16_base64": Case(msg(P("text/plain", "wide text\n", charset="utf-16", cte="base64")), (0,),
                         charset={0: "utf-16"}),
    "html_only": Case(msg(HTML), (0,), charset={0: "utf-8"}),
    "html_no_body_tag": Case(msg(P("text/html", "<p>Just a fragment</p>", charset="us-ascii")), (0,)),
    "html_upper_body": Case(msg(P("text/html", "<HTML><BODY><!-- </BODY> -->Hi</BODY></HTML>",
                                  charset="us-ascii")), (0,), disclaimer=FR),
    "alternative": Case(msg(ALT), (0, 1)),
    "mixed_pdf": Case(msg(M("mixed", PLAIN, PDF)), (0,)),
    "related_inline_image": Case(msg(M("related", HTML, IMG, params='; type="text/html"')), (0,)),
    "mixed_alternative_attachment": Case(msg(M("mixed", ALT, PDF)), (0, 1)),
    "mixed_related_alternative": Case(msg(M("mixed", M("related", ALT, IMG), PDF)), (0, 1)),
    "alternative_with_related_html": Case(msg(M("alternative", PLAIN, M("related", HTML, IMG))), (0, 1)),
    "forward_rfc822_after_body": Case(msg(M("mixed", PLAIN, S.rfc822(FWD_INNER))), (0,)),
    "forward_rfc822_first": Case(msg(M("mixed", S.rfc822(FWD_INNER, "inline"), PLAIN)), (2,)),
    "forward_rfc822_only": Case(msg(M("mixed", S.rfc822(FWD_INNER))), skip="no text body"),
    "text_attachment_then_html": Case(msg(M("mixed", P("text/plain", "notes", disposition="attachment"),
                                            HTML)), (1,)),
    "inline_image_then_text": Case(msg(M("mixed", IMG, PLAIN)), (1,)),
    "preamble_epilogue": Case(msg(M("mixed", PLAIN, PDF, preamble=b"This is MIME.\n",
                                    epilogue=b"bye\n")), (0,)),
    "signed": Case(msg(SIGNED), skip="signed"),
    "encrypted": Case(msg(ENCRYPTED), skip="encrypted"),
    "pkcs7_mime": Case(msg(P("application/pkcs7-mime", b"\x30\x80enveloped", cte="base64",
                             extra=("X-Note: smime",))), skip="s/mime"),
    "signed_inside_mixed": Case(msg(M("mixed", SIGNED, PDF)), skip="signed"),
    "calendar": Case(msg(P("text/calendar", ICS, charset="utf-8")), skip="calendar"),
    "calendar_in_alternative": Case(msg(M("alternative", PLAIN, HTML, P("text/calendar", ICS))),
                                    skip="calendar"),
    "calendar_attachment_after_body": Case(msg(M("mixed", PLAIN, P("text/calendar", ICS,
                                                                   disposition="attachment"))), (0,)),
    "no_content_type": Case(msg(P(payload="Plain old RFC 822.\n", content_type=False), mime=False), (0,),
                            cte={0: "7bit"}),
    "no_content_type_needs_utf8": Case(msg(P(payload="Plain old RFC 822.\n", content_type=False),
                                           mime=False), (0,), disclaimer=INTL, charset={0: "utf-8"},
                                       cte={0: "quoted-printable"}),
    "missing_boundary_param": Case(msg(M("mixed", PLAIN, PDF, with_boundary=False)), skip="boundary"),
    "boundary_not_found": Case(msg(M("mixed", PLAIN, PDF).replace(b'boundary="', b'boundary="zz')),
                               skip="boundary"),
    "missing_closing_boundary": Case(msg(M("mixed", PLAIN, PDF, close=False)), (0,)),
    "missing_closing_boundary_body_last": Case(msg(M("mixed", PDF, PLAIN, close=False)), (1,)),
    "8bit_in_7bit_part": Case(msg(P("text/plain", LATIN.encode("latin-1"), charset="us-ascii", cte="7bit")),
                              (0,), charset={0: "us-ascii"}, cte={0: "quoted-printable"}),
    "wrong_charset_label": Case(msg(P("text/plain", "na\u00efve caf\u00e9".encode(), charset="us-ascii",
                                      cte="8bit")), (0,), disclaimer=INTL, charset={0: "utf-8"}),
    "unknown_charset_label": Case(msg(P("text/plain", b"ascii only", charset="x-made-up")), (0,),
                                  charset={0: "x-made-up"}),
    "crlf_mixed_alternative": Case(S.crlf(msg(M("mixed", ALT, PDF))), (0, 1)),
    "crlf_plain_long_line": Case(S.crlf(msg(P("text/plain", LONG, charset="us-ascii", cte="7bit"))), (0,),
                                 cte={0: "quoted-printable"}),
    "very_long_single_line": Case(msg(P("text/plain", LONG, charset="us-ascii", cte="7bit")), (0,),
                                  cte={0: "quoted-printable"}),
    "already_has_disclaimer_quoted": Case(msg(P("text/plain", QUOTED, charset="us-ascii")), skip="already"),
    "already_in_plain_only": Case(msg(M("alternative", P("text/plain", QUOTED), HTML)), (1,)),
    "empty_body": Case(msg(P("text/plain", "", charset="us-ascii")), (0,)),
    "headers_only": Case(b"From: a@firm.example\nSubject: none", (0,)),
    "digest": Case(msg(M("digest", b"\n" + FWD_INNER, b"\n" + FWD_INNER)), skip="no text body"),
    "top_level_attachment": Case(msg(P("text/plain", "x", disposition="attachment")), skip="no text body"),
    "bad_base64": Case(msg(P("text/plain", charset="utf-8", cte="base64") + b"QUJDR"
                           + b"\n"), skip="base64"),
    "cte_misspelled_7-bit": Case(msg(P("text/plain", "seven bit", cte="7-Bit")), (0,)),
    "empty_alternative_then_text": Case(msg(M("mixed", M("alternative", boundary="empty-alt",
                                                         close=False), PLAIN)), (1,)),
    "unknown_transfer_encoding": Case(msg(P("text/plain", "begin 644 x", cte="x-uuencode")),
                                      skip="transfer encoding"),
}


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)


def leaves(m: EmailMessage) -> list[EmailMessage]:
    return [p for p in m.walk() if not p.is_multipart()]


def text_of(p: EmailMessage) -> str:
    data = p.get_payload(decode=True) or b""
    try:
        return data.decode(p.get_content_charset() or "us-ascii")
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", "replace")


def norm(s: str) -> str:
    return " ".join(s.split())


def visible(p: EmailMessage) -> str:
    t = text_of(p)
    return html.unescape(re.sub(r"<[^>]*>", " ", t)) if p.get_content_type() == "text/html" else t


def last_body_close(t: str) -> int:
    found = list(re.finditer(r"</body\s*>", t, re.I))
    return found[-1].start() if found else len(t)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_shapes(case: Case) -> None:
    result = decorate(case.raw, case.disclaimer)
    assert isinstance(result, Result)
    if case.skip:
        assert result.message is None and result.decorated_parts == 0, result.reason
        assert case.skip in result.reason.lower(), result.reason
        return
    assert result.message is not None, result.reason
    assert result.decorated_parts == len(case.decorated), result.reason
    out = result.message
    crlf_in = b"\r\n" in case.raw
    if crlf_in:
        assert out.count(b"\n") == out.count(b"\r\n")
    else:
        assert b"\r" not in out
    assert max(len(line) for line in out.split(b"\n")) <= 998 + crlf_in
    before, after = parse(case.raw), parse(out)
    old_leaves, new_leaves = leaves(before), leaves(after)
    assert len(old_leaves) == len(new_leaves)
    wanted = norm(case.disclaimer.text)
    for i, (old, new) in enumerate(zip(old_leaves, new_leaves)):
        assert old.get_content_type() == new.get_content_type()
        if i not in case.decorated:
            assert old.get_payload(decode=True) == new.get_payload(decode=True), f"leaf {i} changed"
            assert wanted not in norm(visible(new)) or wanted in norm(visible(old))
            if old.get_content_maintype() != "text":
                encoded = old.get_payload().encode("ascii", "surrogateescape")
                assert encoded.replace(b"\r\n", b"\n") in out.replace(b"\r\n", b"\n")
            continue
        assert norm(visible(new)).count(wanted) == 1, f"leaf {i}: {visible(new)!r}"
        old_text, new_text = text_of(old), text_of(new)
        cut = last_body_close(old_text) if old.get_content_type() == "text/html" else len(old_text)
        assert new_text.startswith(old_text[:cut]) and new_text.endswith(old_text[cut:])
        if i in case.charset:
            assert new.get_content_charset() == case.charset[i]
        if i in case.cte:
            assert new.get("Content-Transfer-Encoding", "7bit").lower() == case.cte[i]
        if new.get("Content-Transfer-Encoding", "7bit").lower() in ("base64", "quoted-printable"):
            assert max(len(line) for line in new.get_payload().splitlines()) <= 76
    if not case.charset and not case.cte and after.get_content_maintype() == "multipart":
        sep = b"\r\n\r\n" if crlf_in else b"\n\n"
        assert out.split(sep, 1)[0] == case.raw.split(sep, 1)[0]  # top headers untouched


def test_html_placed_before_last_body_close() -> None:
    raw = msg(P("text/html", "<HTML><BODY><!-- </BODY> -->Hi</BODY></HTML>", charset="us-ascii"))
    out = decorate(raw, FR).message
    assert out is not None
    assert out.endswith(b"Hi<p class=legal>Confidentiel : r&eacute;serv&eacute; au destinataire.</p>\n"
                        b"</BODY></HTML>")
    assert b"<!-- </BODY> -->" in out


def test_plain_append_is_a_pure_insertion_lf_and_crlf() -> None:
    for raw in (msg(M("mixed", PLAIN, PDF)), S.crlf(msg(M("mixed", PLAIN, PDF)))):
        eol = b"\r\n" if b"\r\n" in raw else b"\n"
        out = decorate(raw, ASCII).message
        assert out is not None
        at = raw.index(b"\nAlice") + len(b"\nAlice")
        added = eol * 2 + ASCII.text.encode().replace(b"\n", eol)
        assert out == raw[:at] + added + raw[at:]


def test_html_derived_from_text_is_escaped() -> None:
    form = ASCII.html_form()
    assert "&lt;Firm &amp; Partners LLP&gt;" in form and "<br>" in form and form.startswith("<div")
    assert Disclaimer("x", html="<b>x</b>").html_form() == "<b>x</b>"


def test_second_run_adds_nothing() -> None:
    once = decorate(msg(M("mixed", ALT, PDF)), ASCII)
    assert once.message is not None and once.decorated_parts == 2
    twice = decorate(once.message, ASCII)
    assert twice.message is None and "already" in twice.reason


def test_never_raises_on_garbage() -> None:
    for raw in (b"", b"\n", b"\x00\xff" * 50, b"Content-Type: multipart/mixed; boundary=\n\n--\n",
                b"Content-Type: text/plain; charset=\"\\\n\nx", b"Content-Type: text/html; charset=base64\n\n<p>"):
        assert isinstance(decorate(raw, ASCII), Result)
    assert decorate(msg(PLAIN), Disclaimer("  ")).message is None


def _compare_leaves(raw: bytes, out: bytes, pol: policy.Policy, decorated: int) -> None:
    old_leaves = leaves(BytesParser(policy=pol).parsebytes(raw))
    new_leaves = leaves(BytesParser(policy=pol).parsebytes(out))
    assert len(old_leaves) == len(new_leaves)
    changed = 0
    for old, new in zip(old_leaves, new_leaves):
        same = old.get_payload(decode=True) == new.get_payload(decode=True)
        if old.get_content_type() not in ("text/plain", "text/html"):
            assert same, f"{old.get_content_type()} leaf changed"
        changed += not same
    assert changed == decorated


def _corpus_check(path: Path) -> Result:
    raw = path.read_bytes()
    result = decorate(raw, INTL)
    assert isinstance(result, Result) and result.reason
    if result.message is None:
        assert result.decorated_parts == 0
        return result
    assert result.decorated_parts >= 1
    longest = max(len(line.rstrip(b"\r")) for line in raw.split(b"\n"))
    assert max(len(line.rstrip(b"\r")) for line in result.message.split(b"\n")) <= max(998, longest)
    _compare_leaves(raw, result.message, policy.compat32, result.decorated_parts)
    # policy.default reads an unquoted boundary such as ``----=_NextPart...`` as
    # ``----`` and then cannot split the multipart; mail clients (and compat32,
    # which decorate() follows) take the whole value.  Compare there only when
    # policy.default could split every multipart of the original.
    if not any(p.get_content_maintype() == "multipart" for p in leaves(parse(raw))):
        _compare_leaves(raw, result.message, policy.default, result.decorated_parts)
    return result


@pytest.mark.corpus_files("mime")
def test_corpus_file(corpus, corpus_file: Path) -> None:
    _corpus_check(corpus_file)


def test_corpus_mostly_decorated(corpus) -> None:
    files = corpus.messages("mime")
    decorated = sum(decorate(p.read_bytes(), INTL).message is not None for p in files)
    assert decorated >= len(files) * 0.6, f"only {decorated}/{len(files)} decorated"


# -- the fast paths give exactly what the general ones give ----------------------------------

def _fast_and_slow(raw: bytes, disclaimer: Disclaimer, monkeypatch) -> tuple[Result, Result]:
    from email.parser import BytesHeaderParser

    from mattermail.milter import disclaimer as D

    fast = decorate(raw, disclaimer)
    with monkeypatch.context() as m:
        m.setattr(D, "_headers", lambda block: BytesHeaderParser(policy=policy.compat32).parsebytes(block))
        m.setattr(D, "_insert", lambda *a: None)  # always rewrite the whole decorated body
        slow = decorate(raw, disclaimer)
    return fast, slow


def _shapes() -> list[bytes]:
    raws = [c.raw for c in CASES.values()]
    plain = b"From: a@b.test\r\nSubject: x\r\n\r\n" + b"".join(b"%d" % i + b"X" * 79 + b"\r\n" for i in range(50))
    raws += [plain, plain.rstrip(b"\r\n"), plain + b"x" * 990, plain.replace(b"\r\n", b"\n"),
             b"Subject: no separator\r\nbody line\r\n", b"Subject: unterminated",
             b"From: a@b.test\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 \r\n",
             b"From: a@b.test\r\nContent-Type: text/plain; charset=latin-1\r\n\r\ncaf\xe9\r\n" + b"y" * 995,
             b"From x@y Mon Jan 1\nSubject: x\n\nbody\n", b"Subject: a\rb\r\n\r\nbody\r\n",
             b" folded first\r\nSubject: x\r\n\r\nbody\r\n", b":no name\r\nSubject: x\r\n\r\nbody\r\n"]
    return raws


def _corpus_raws(corpus) -> list[bytes]:
    return [p.read_bytes() for p in corpus.messages("mime")]


def test_fast_paths_equal_the_general_ones(monkeypatch) -> None:
    _check_fast_paths(_shapes(), monkeypatch)


def test_fast_paths_equal_the_general_ones_on_the_corpus(corpus, monkeypatch) -> None:
    _check_fast_paths(_corpus_raws(corpus), monkeypatch)


def _check_fast_paths(raws: list[bytes], monkeypatch) -> None:
    for raw in raws:
        for d in (ASCII, INTL, FR):
            fast, slow = _fast_and_slow(raw, d, monkeypatch)
            assert (fast.message, fast.reason, fast.decorated_parts) == (slow.message, slow.reason,
                                                                          slow.decorated_parts), raw[:200]


def test_header_block_reader_equals_the_parser() -> None:
    _check_header_blocks(_shapes())


def test_header_block_reader_equals_the_parser_on_the_corpus(corpus) -> None:
    _check_header_blocks(_corpus_raws(corpus))


def _check_header_blocks(raws: list[bytes]) -> None:
    from email.parser import BytesHeaderParser

    from mattermail.milter.disclaimer import _headers

    blocks = [b"", b"Subject: x\r\n", b"Subject: x", b"A: 1\nB:2\n\tfolded\n  more\nC:\n",
              b"Content-Type: multipart/mixed;\r\n boundary=\"b\"\r\nMIME-Version: 1.0\r\n",
              b"From x@y Mon\nSubject: x\n", b"Subject: a\rb\r\n", b" first\r\nA: b\r\n", b":x\r\nA: b\r\n",
              b"X-Bin: caf\xc3\xa9 \xff\r\n", b"A: 1\x0b2\r\n", b"A: 1\x0c\r\n"]
    for block in blocks + [raw.split(b"\n\n", 1)[0] + b"\n" for raw in raws]:
        if not block.strip() or b"\n\n" in block or b"\r\n\r\n" in block:
            continue
        ours, theirs = _headers(block), BytesHeaderParser(policy=policy.compat32).parsebytes(block)
        assert ours._headers == theirs._headers, block
        assert ours.get_unixfrom() == theirs.get_unixfrom()
