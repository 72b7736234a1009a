"""Readable body text for full-text search (router/text.py)."""

import base64

from mattermail.router.text import body_text, html_to_text


def test_plain_text_with_transfer_encoding_and_charset():
    payload = base64.b64encode("Grüße aus Köln".encode()).decode()
    raw = (f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload}\r\n").encode()
    assert body_text(raw) == "Grüße aus Köln"


def test_alternative_prefers_plain_and_skips_attachments():
    raw = (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
           b"Content-Type: multipart/alternative; boundary=i\r\n\r\n"
           b"--i\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
           b"--i\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--i--\r\n"
           b"--o\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nattached\r\n"
           b"--o\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4 binary\r\n"
           b"--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nforwarded words\r\n--o--\r\n")
    text = body_text(raw)
    assert "plain words" in text and "forwarded words" in text
    assert "html words" not in text and "attached" not in text and "PDF" not in text


def test_html_only_is_stripped():
    assert html_to_text("<html><head><title>T</title><style>p{}</style></head><body><p>A&amp;B</p>"
                        "<script>x()</script>C<br>D</body></html>").split() == ["A&B", "C", "D"]


def test_never_raises_and_is_capped():
    for junk in (b"", b"\x00\xff" * 1000, b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n\xe9t\xe9",
                 b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\nContent-Type: multipart/mixed; "
                 b"boundary=x\r\n\r\n" * 3000):
        assert isinstance(body_text(junk), str)
    assert body_text(b"Content-Type: text/plain; charset=no-such\r\n\r\n\xe9t\xe9") == "\ufffdt\ufffd"
    assert len(body_text(b"\r\n" + b"word " * 100_000, limit=1000)) == 1000


def test_the_parsed_header_block_gives_the_same_text_as_a_full_parse():
    """body_text reuses the caller's header-block parse (router/message.py) and parses at most the MIME
    structure of the body again; the text is what a full parse of the message gives."""
    from email import policy
    from email.parser import BytesParser

    from mattermail.router import text
    from mattermail.router.message import head_length, parse_headers

    def full_parse(raw):
        out = []
        text._texts(BytesParser(policy=policy.compat32).parsebytes(raw), out, [text._MAX_PARTS])
        return text._tidy("\n\n".join(t for t in out if t))

    shapes = [
        b"", b"no header at all\r\njust a body\r\n", b"Subject: only a header\r\n",
        b"From: a@example.test\r\nSubject: plain\r\n\r\n1XXXX\r\n2XXXX\r\n",
        b"Content-Type: text/html\r\n\r\n<p>Hi &amp; <b>there</b></p>",
        b"Content-Type: text/plain; charset=latin-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n",
        b"Content-Type: text/plain; charset=bogus\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\ninner\r\n--o--\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nforwarded\r\n",
        b"Content-Disposition: attachment\r\n\r\nsecret\r\n", b"From: a\r\nnot a header line\r\nSubject: y\r\n\r\nbody\r\n",
        b"Content-Type: application/pdf\r\n\r\n%PDF\r\n", b"Content-Type: TEXT/PLAIN\r\n\r\nupper\r\n",
        b" leading continuation\r\nSubject: x\r\n\r\nb\r\n", b"From: x\n\nbare LF\n", bytes(range(256)) * 4,
    ]
    for raw in shapes:
        assert body_text(raw, headers=parse_headers(raw[:head_length(raw)])) == body_text(raw) == full_parse(raw), raw


def test_a_large_attachment_is_neither_parsed_nor_decoded_for_the_index():
    """Only the first MAX_SCAN bytes of the body are parsed: the text part before a 20 MB attachment is
    indexed, in bounded memory; a text part after the scanned prefix is not."""
    import os
    import tracemalloc
    from email.message import EmailMessage

    from mattermail.router import text

    m = EmailMessage()
    m["Subject"] = "exhibits"
    m.set_content("The figures are attached.\n")
    m.add_attachment(os.urandom(20 * 1024 * 1024), maintype="application", subtype="octet-stream")
    m.add_attachment("a note after the exhibits\n", subtype="plain", disposition="inline")
    raw = m.as_bytes()
    tracemalloc.start()
    try:
        found = body_text(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == "The figures are attached.", found
    assert peak < 12 * text.MAX_SCAN, f"{peak / 1e6:.1f} MB for a {len(raw) / 1e6:.1f} MB message"


def test_whitespace_is_tidied_as_the_two_regular_expressions_define_it():
    """_tidy (fast: literal-led patterns) gives exactly what its definition in two re.sub calls gives, so the
    stored body text and the search index are what they were: random strings of the characters that matter
    (every kind of blank, line ends, other whitespace str.strip removes), and mail-like text."""
    import random
    import re

    from mattermail.router.text import _tidy

    def defined(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"[ \t\f\v\u00a0]+", " ", text)
        return re.sub(r" ?\n[ \n]*\n", "\n\n", text).strip()

    alphabet = [" ", " ", "\t", "\f", "\v", "\u00a0", "\n", "\n", "\r", "a", "é", "\x1c", "\u2028", "\x85"]
    rnd = random.Random(14)
    for _ in range(50_000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
        assert _tidy(s) == defined(s), repr(s)
    mail = "Dear Bob,  \r\n\r\n \tthe contract\u00a0is attached. \r\n \r\n\r\n> quoted \r\nKind regards\r\n \r\n"
    assert _tidy(mail * 50) == defined(mail * 50)
    assert _tidy(mail) == "Dear Bob,\n\n the contract is attached.\n\n> quoted \nKind regards"



def test_header_blocks_read_as_the_parser_reads_them() -> None:
    """``parse_headers`` cuts the usual header block in one pass; on random blocks, mangled at random (a lone
    CR or LF, a line that is no field, a first line folded or ``From ``, 8-bit bytes, no blank line at the
    end, a multipart type) it gives what ``BytesHeaderParser`` gives: fields, payload, defects. More than a
    thousand blocks must take the one-pass branch for the comparison to mean anything."""
    import random
    from email import policy
    from email.parser import BytesHeaderParser

    from mattermail.router.message import _one_pass, parse_headers

    rng = random.Random(2026)
    names = ["From", "To", "Subject", "X-A", "DKIM-Signature", "Content-Type", "a.b", "X~", "Received"]
    values = ["", " ", "x", "  two  words ", "\t<a@b>", "multipart/mixed; boundary=x", "a: b", ":"]
    noise = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"From ", b"\xc3\xa9", b"\r\n\r\n", b"", b"x"]
    fast = 0
    for _ in range(20000):
        lines = []
        for _ in range(rng.randint(1, 6)):
            lines.append(f"{rng.choice(names)}:{rng.choice(values)}\r\n")
            for _ in range(rng.choice([0, 0, 1, 2])):
                lines.append(rng.choice([" ", "\t"]) + rng.choice(values) + "\r\n")
        head = ("".join(lines) + "\r\n").encode()
        if rng.random() < 0.5:
            k = rng.randint(0, len(head))
            head = head[:k] + rng.choice(noise) + head[k + rng.randint(0, 2):]
        fast += _one_pass(head) is not None
        got, want = parse_headers(head), BytesHeaderParser(policy=policy.compat32).parsebytes(head)
        assert got._headers == want._headers, head
        assert (got._payload, got._unixfrom, got.preamble, got.epilogue, got._default_type) == (
            want._payload, want._unixfrom, want.preamble, want.epilogue, want._default_type), head
        assert [type(d) for d in got.defects] == [type(d) for d in want.defects], head
    assert fast > 1000
