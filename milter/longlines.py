"""Lines over 998 octets, folded the way Postfix's smtp client would fold them, before we sign.

Postfix's smtp(8) client never sends a line longer than ``smtp_line_length_limit``
(998): ``smtp_text_out`` in ``src/smtp/smtp_proto.c`` (3.7) writes the first 998
octets of a longer line, then CRLF, then a SPACE and the next 997 octets, and so
on; a break is made only when more of the line follows (the line's own CRLF is
not content). Header and body lines go through the same function. Doing that
*after* the milter signed changes the body (and a header broken inside a word),
so the recipient's DKIM check fails with a body hash mismatch.

So the outbound core hands Postfix a body that has nothing left to fold:

* :class:`LineScan` finds the long lines as the body streams past (the milter
  feeds it each body chunk as Postfix sends it), one C-speed ``rfind`` per
  ~1,000 octets and no copy; it records each long line's content span.
* :func:`fold_points` gives Postfix's break points for those spans and
  :func:`insert_folds` inserts ``CRLF SPACE`` there into the body's pieces
  (spool ranges and new bytes), so the folded body is streamed, never copied.
* :func:`fold_header` folds a long header line at whitespace (a real RFC 5322
  fold, which relaxed canonicalization does not even see), and only where a
  run of 998 octets has no whitespace inserts ``CRLF SPACE`` like Postfix.
  The core folds only signed fields, at most ``outbound.MAX_HEADER_FOLDS``.

Assumes Postfix's default ``smtp_line_length_limit = 998`` (and
``lmtp_line_length_limit``, for the capture copy); a smaller limit there would
break lines again after signing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["LIMIT", "LineScan", "fold_header", "fold_points", "insert_folds", "scan"]

#: Postfix's smtp_line_length_limit (and RFC 5322's line limit), octets without the CRLF.
LIMIT = 998
_CR, _LF = 0x0D, 0x0A
Span = tuple[int, int]  # [start, end) of one long line's content, as offsets in the scanned stream


class LineScan:
    """Records the content spans of lines longer than :data:`LIMIT`, fed chunk by chunk.

    A line's content is what precedes its CRLF (a lone LF also ends a line; a CR
    not followed by LF is content, as it is in Postfix's queue file). Offsets
    count from the first octet fed.
    """

    __slots__ = ("spans", "size", "_line", "_long", "_pending", "_last_cr")

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.size = 0  # octets fed so far
        self._line = 0  # where the current (unfinished) line starts
        self._long = False  # the current line is already known to be long
        self._pending = False  # the current line has exactly LIMIT + 1 octets so far: CRLF next or not?
        self._last_cr = False  # the last octet fed was a CR

    def feed(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        """Scan buf[start:end] (bytes or mmap: searched in place, not copied)."""
        end = len(buf) if end is None else end
        if end <= start:
            return
        base = self.size - start  # stream offset of buf[0]
        self.size += end - start
        s = self._line - base  # where the current line starts, as an index into buf (may be < start)
        pos = start
        if self._pending:  # LIMIT octets and a CR, or LIMIT + 1 octets: the next octet decides
            self._pending = False
            if buf[start] == _LF and self._last_cr:
                s = pos = start + 1
            else:
                self._long = True
        if self._long:
            nl = buf.find(b"\n", pos, end)
            if nl < 0:
                self._last_cr = buf[end - 1] == _CR
                return
            self._close(base, nl, buf[nl - 1] == _CR if nl > start else self._last_cr)
            s = pos = nl + 1
        rfind = buf.rfind
        while pos < end:
            lim = s + LIMIT + 1  # an LF before lim ends every line up to it within LIMIT octets
            if lim <= end:
                nl = rfind(b"\n", pos, lim)
                if nl >= 0:  # the usual case: one call per ~1,000 octets
                    s = pos = nl + 1
                    continue
            else:  # fewer than LIMIT + 1 octets of this line so far: nothing to decide yet
                nl = rfind(b"\n", pos, end)
                if nl < 0:
                    break
                s = pos = nl + 1
                continue
            # LIMIT + 1 octets without an LF: a long line, unless they are LIMIT octets, CR, then LF.
            if lim == end:
                self._pending = True
                break
            if buf[lim] == _LF and buf[lim - 1] == _CR:
                s = pos = lim + 1
                continue
            self._line, self._long = base + s, True
            nl = buf.find(b"\n", lim, end)
            if nl < 0:
                break
            self._close(base, nl, buf[nl - 1] == _CR)
            s = pos = nl + 1
        if not self._long:
            self._line = base + s
        self._last_cr = buf[end - 1] == _CR

    def _close(self, base: int, nl: int, cr: bool) -> None:
        self.spans.append((self._line, base + nl - cr))
        self._long = False

    def finish(self) -> list[Span]:
        """The spans, counting a last line without a line end (its content is all of it)."""
        if self._long or self._pending:
            self.spans.append((self._line, self.size))
            self._long = self._pending = False
        return self.spans


def scan(data: bytes) -> list[Span]:
    s = LineScan()
    s.feed(data)
    return s.finish()


def fold_points(spans: Iterable[Span], shift: int = 0) -> list[int]:
    """Where Postfix breaks each long line (a CRLF SPACE goes before each offset), plus ``shift``:
    after the first 998 octets, then after every 997 more, while content follows."""
    points = []
    for start, end in spans:
        points.extend(range(start + LIMIT + shift, end + shift, LIMIT - 1))
    return points


Piece = tuple[int, int] | bytes
FOLD = b"\r\n "


def insert_folds(pieces: list[Piece], points: list[int]) -> list[Piece]:
    """``pieces`` (spool ranges or new bytes, streamed in order) with :data:`FOLD` inserted
    before each stream offset in ``points`` (ascending)."""
    out: list[Piece] = []
    offset = 0  # stream offset where the current piece starts
    i = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            a, b = 0, len(piece)
        else:
            a, b = piece
        length = b - a
        cut = a
        while i < len(points) and points[i] < offset + length:
            at = a + points[i] - offset
            if at > cut:
                out.append(piece[cut:at] if isinstance(piece, bytes) else (cut, at))
            out.append(FOLD)
            cut = at
            i += 1
        if cut < b or length == 0:
            out.append(piece[cut:] if isinstance(piece, bytes) else (cut, b))
        offset += length
    if i != len(points):
        raise ValueError(f"fold point {points[i]} is past the end of the body ({offset} octets)")
    return out


_EOL = re.compile(rb"\r?\n")


def fold_header(name: str, value: str) -> str | None:
    """The value with every physical line of ``name:value`` cut to at most 998 octets, or None
    when none is longer. A cut goes before the last space or tab within reach (CRLF inserted, the
    whitespace starts the continuation line); with none, Postfix's CRLF SPACE after 998 octets."""
    if 4 * (len(name) + 1 + len(value)) <= LIMIT:  # at most 4 octets a character: short, and the usual case
        return None
    raw = f"{name}:{value}".encode("utf-8", "surrogateescape")
    lines = _EOL.split(raw)
    if all(len(line) <= LIMIT for line in lines):
        return None
    out: list[bytes] = []
    lo = len(name.encode("utf-8", "surrogateescape")) + 2  # never leave "Name:" alone on the first line
    for line in lines:
        while len(line) > LIMIT:
            cut = max(line.rfind(b" ", lo, LIMIT + 1), line.rfind(b"\t", lo, LIMIT + 1))
            lo = 1  # a continuation line starts with its whitespace
            if cut > 0:
                out.append(line[:cut])
                line = line[cut:]
            else:
                out.append(line[:LIMIT])
                line = b" " + line[LIMIT:]
        out.append(line)
        lo = 1
    folded = b"\n".join(out)
    return folded[len(name.encode("utf-8", "surrogateescape")) + 1:].decode("utf-8", "surrogateescape")
