"""A message as the router handles it: its header block parsed once, its size, and where its bytes are.

The LMTP server streams DATA to a spool file (router/lmtp.py) and keeps only the header block in memory;
imports and tests hand over bytes. Either way the header block is parsed once (compat32, header-only,
never raising) and that one :class:`~email.message.Message` serves the queue id, the rules, the messages
row and the body-text extraction; the body is read from the file, a bounded prefix at a time.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import BinaryIO

__all__ = ["MessageData", "head_length", "parse_headers", "queue_id_from"]


def head_length(raw: bytes) -> int:
    """Length of the header block of ``raw`` including the blank line that ends it (all of ``raw`` if none)."""
    if raw.startswith((b"\r\n", b"\n")):  # no headers at all: just the blank line
        return 2 if raw.startswith(b"\r\n") else 1
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)


# One whole field of a header block whose every line ends in CRLF: the name (printable ASCII but ":"), the
# colon, the rest of its first line and its continuation lines, each with its CRLF.
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)")


def parse_headers(head: bytes) -> Message:
    """The header block, parsed leniently (compat32): what ``BytesHeaderParser`` gives."""
    return _one_pass(head) or BytesHeaderParser(policy=policy.compat32).parsebytes(head)


def _one_pass(head: bytes) -> Message | None:
    """The usual header block (CRLF line ends only, a field on every line, the blank line at its end) cut into
    fields in one regex pass, as the parser would; None for anything else (a test compares the two on random
    blocks)."""
    if not head.endswith(b"\r\n\r\n") or head.startswith(b"From "):
        return None
    text = head.decode("ascii", "surrogateescape")
    fields, end, pos = [], len(text) - 2, 0
    for m in _FIELD.finditer(text, 0, end):
        if m.start() != pos:
            return None
        fields.append((m.group(1), m.group(2).lstrip(" \t").rstrip("\r\n")))
        pos = m.end()
    if pos != end or not fields:
        return None
    msg = Message(policy=policy.compat32)
    msg._headers = fields  # type: ignore[attr-defined]  # what the parser's set_raw builds
    msg.set_payload("")  # nothing after the blank line
    return msg


def queue_id_from(msg: Message) -> str:
    """Postfix's queue id from the topmost Received header ("with LMTP id X" / "with ESMTP id X")."""
    received = msg.get_all("Received") or []
    if not received:
        return ""
    words = " ".join(str(received[0]).split()).split()
    for i, w in enumerate(words[:-1]):
        # "with ESMTP id X", or "(Postfix, from userid 0) id X" for mail from sendmail/pickup
        if w == "id" and i > 1 and (words[i - 2].lower() == "with" or words[i - 1].endswith(")")):
            return words[i + 1].rstrip(";")
    return ""


@dataclass
class MessageData:
    """One message: ``headers`` parsed once, ``size`` bytes, held as ``raw`` or in the file at ``path``."""

    headers: Message
    size: int
    head_len: int
    raw: bytes | None = None
    path: Path | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> MessageData:
        n = head_length(raw)
        return cls(parse_headers(raw[:n]), len(raw), n, raw=raw)

    @classmethod
    def from_file(cls, path: Path, head: bytes, size: int) -> MessageData:
        return cls(parse_headers(head), size, len(head), path=Path(path))

    def open(self) -> BinaryIO:
        """The whole message, from its first byte."""
        return io.BytesIO(self.raw) if self.raw is not None else open(self.path, "rb")  # type: ignore[arg-type]

    def body_prefix(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (after the header block)."""
        if self.raw is not None:
            return self.raw[self.head_len:self.head_len + limit]
        with open(self.path, "rb") as f:  # type: ignore[arg-type]
            f.seek(self.head_len)
            return f.read(limit)
