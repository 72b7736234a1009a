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
