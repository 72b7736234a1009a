"""Tiny raw-MIME builders for the disclaimer tests.

They write bytes by hand (LF line endings; ``crlf()`` converts) so that the
tests control every header, boundary and encoding, including broken ones.
"""
from __future__ import annotations

import base64
import binascii

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n" + bytes(range(256)) * 3
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 2


def encode(payload: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(payload).rstrip(b"\n")
    if cte == "quoted-printable":
        lines = payload.split(b"\n")
        return b"\n".join(binascii.b2a_qp(line, istext=False) for line in lines)
    return payload


def part(ctype: str = "text/plain", payload: bytes | str = b"", *, charset: str | None = None,
         cte: str | None = None, disposition: str | None = None,
         extra: tuple[str, ...] = (), content_type: bool = True) -> bytes:
    """One MIME entity: headers, blank line, encoded body (no final newline)."""
    if isinstance(payload, str):
        payload = payload.encode(charset or "utf-8")
    lines = []
    if content_type:
        lines.append(f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else ""))
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    if disposition:
        lines.append(f"Content-Disposition: {disposition}")
    lines.extend(extra)
    head = "".join(line + "\n" for line in lines).encode()
    return head + b"\n" + encode(payload, cte or "7bit")


def multipart(subtype: str, *parts: bytes, boundary: str | None = None,
              params: str = "", preamble: bytes = b"", epilogue: bytes = b"",
              close: bool = True, with_boundary: bool = True) -> bytes:
    b = boundary or f"=_{subtype}_{len(parts)}_{sum(map(len, parts))}"
    ctype = f"Content-Type: multipart/{subtype}"
    if with_boundary:
        ctype += f'; boundary="{b}"'
    head = (ctype + params + "\n\n").encode()
    body = preamble
    for p in parts:
        body += b"--" + b.encode() + b"\n" + p + b"\n"
    if close:
        body += b"--" + b.encode() + b"--\n" + epilogue
    return head + body


def message(entity: bytes, subject: str = "Test", mime: bool = True) -> bytes:
    """Top-level message: envelope-ish headers followed by ``entity``."""
    head = (
        "From: Alice Example <alice@firm.example>\n"
        "To: Bob <bob@client.example>\n"
        f"Subject: {subject}\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\n"
        "Message-ID: <test@firm.example>\n"
    )
    if mime:
        head += "MIME-Version: 1.0\n"
    return head.encode() + entity


def rfc822(inner: bytes, disposition: str | None = None) -> bytes:
    head = b"Content-Type: message/rfc822\n"
    if disposition:
        head += f"Content-Disposition: {disposition}\n".encode()
    return head + b"\n" + inner


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
