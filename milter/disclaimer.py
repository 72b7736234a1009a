"""Append the firm's legal disclaimer to outbound mail without breaking MIME.

Three strategies were considered:

1. *Re-serialise*: parse with :mod:`email`, edit the body part and regenerate
   the message with :mod:`email.generator`.  Simple, but the generator refolds
   headers, re-encodes parts and may rewrite boundaries, so attachments and
   forwarded messages stop being byte-identical.
2. *Wrap*: put the untouched original inside a new ``multipart/mixed`` and add
   the disclaimer as a second part.  Byte-safe, but most clients then show the
   disclaimer as an attachment, and HTML readers often never see it.
3. *Append in place* (chosen): find the part boundaries on the raw bytes,
   decode only the body part(s) to decorate, add the disclaimer in that part's
   own charset and transfer encoding, and splice the new body back.  Every
   other byte (headers, boundaries, preamble, attachments, ``message/rfc822``
   parts) stays as it was.  Only the decorated part's
   ``Content-Transfer-Encoding`` or charset may change, and only when needed:
   7bit with new 8-bit data or lines over 998 octets becomes quoted-printable,
   and a plain-text disclaimer that the part's charset cannot represent moves
   that part to UTF-8.  HTML never needs that move: characters the charset
   lacks are written as numeric character references.

The core is pure: :func:`decorate` takes the raw message (LF or CRLF line
endings, kept as found) and returns a :class:`Result`.  It never raises.

Size: over 400 lines for the three MIME strategies with their charset and transfer-encoding
fallbacks, which share one part walker; split them and each would re-walk the tree.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import html
import mmap
import re
from dataclasses import dataclass, field
from functools import lru_cache
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Iterator, Sequence

__all__ = ["Disclaimer", "Edit", "Result", "apply_edits", "decorate", "plan", "segments"]

Edit = tuple[int, int, bytes]
_NON_SPACE = re.compile(rb"[^ \t\r\n\f\v]")


@dataclass(frozen=True)
class Disclaimer:
    text: str  # plain-text disclaimer
    html: str | None = None  # HTML form; derived from text when None

    def html_form(self) -> str:
        if self.html is not None:
            return self.html
        lines = html.escape(self.text.strip("\r\n")).splitlines()
        return '<div class="disclaimer">' + "<br>\n".join(lines) + "</div>"


@dataclass(frozen=True)
class Result:
    message: bytes | None  # decorated message, or None when left unchanged (or only planned)
    reason: str  # one short line for the log
    decorated_parts: int = 0
    edits: tuple[Edit, ...] = ()  # (start, end, replacement) in ascending order; () when unchanged


class _Skip(Exception):
    """Leave the message (or one part) alone; ``str(exc)`` is the reason."""


_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")  # as email.feedparser
_FIELD_START = re.compile(r"[\x21-\x39\x3b-\x7e]+:")  # a field name and its colon (email.feedparser's)
_BODY_END = re.compile(r"</body\s*>", re.I)
_BODY_END_B = re.compile(rb"</body\s*>", re.I)
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.M)
_TAG = re.compile(r"<[^>]*>")
_CHARSET_PARAM = re.compile(rb';\s*charset(?:\*\d*\*?)?\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^\s;]*)', re.I)
_UNSAFE = {"multipart/signed": "signed", "multipart/encrypted": "encrypted",
           "application/pkcs7-mime": "S/MIME encrypted or signed",
           "application/x-pkcs7-mime": "S/MIME encrypted or signed"}
_CTES = {"7bit": "7bit", "8bit": "8bit", "binary": "binary",  # tolerant spellings
         "quotedprintable": "quoted-printable", "base64": "base64"}
_STATEFUL = ("utf-16", "utf_16", "utf-32", "utf_32", "utf-7", "utf_7", "iso2022", "hz")


@dataclass
class _Part:
    start: int  # first header byte
    hdr_end: int  # just after the last header field
    body_start: int
    end: int  # body end (the line break before the next boundary excluded)
    has_sep: bool  # a blank line separates headers from body
    msg: Message  # the part's headers only
    children: list[_Part] = field(default_factory=list)
    broken: str = ""  # why a multipart could not be split

    @property
    def ctype(self) -> str:
        return self.msg.get_content_type()


def _parse(raw: bytes, start: int, end: int, default: str = "text/plain") -> _Part:
    """Locate headers, body and (for multiparts) children of raw[start:end]."""
    pos, body_start, has_sep = start, end, False
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = raw[pos:line_end]
        if line in (b"\n", b"\r\n", b"\r"):
            body_start, has_sep = line_end, True
            break
        if not _HEADER_LINE.match(line):
            body_start = pos
            break
        pos = line_end
    msg = _headers(raw[start:pos])
    msg.set_default_type(default)
    part = _Part(start, pos, body_start, end, has_sep, msg)
    if msg.get_content_maintype() == "multipart":
        _split(raw, part)
    return part


def _headers(block: bytes) -> Message:
    """``BytesHeaderParser(policy=compat32).parsebytes(block)``, for a block of header lines.

    The common shape (every line ``name:`` or a continuation, CRLF or LF line
    ends) is read directly into the same ``Message`` the parser would build
    (``header_source_parse`` of compat32 per field); anything unusual (a
    ``From `` line, a lone CR, a continuation first, an empty name) goes
    through the parser itself, defects and all.
    """
    text = block.decode("ascii", "surrogateescape")
    lines = text.splitlines(True)
    if (not lines or "\r" in text.replace("\r\n", "") or any(c in text for c in "\v\f\x1c\x1d\x1e\x85\u2028\u2029")
            or lines[0][0] in " \t"):
        return BytesHeaderParser(policy=compat32).parsebytes(block)
    msg = Message(policy=compat32)
    field: list[str] = []
    for line in lines:
        if line[0] in " \t":
            field.append(line)
            continue
        if not _FIELD_START.match(line):  # "From ", an empty or odd name: the parser's business
            return BytesHeaderParser(policy=compat32).parsebytes(block)
        if field:
            msg.set_raw(*compat32.header_source_parse(field))
        field = [line]
    if field:
        msg.set_raw(*compat32.header_source_parse(field))
    msg.set_payload("")  # as the parser leaves it: headers only
    return msg


def _split(raw: bytes, part: _Part) -> None:
    boundary = part.msg.get_boundary()
    if not boundary:
        part.broken = "has no boundary parameter"
        return
    try:
        bnd = boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        part.broken = "has a non-ASCII boundary"
        return
    delim = re.compile(rb"^--" + re.escape(bnd) + rb"(--)?[ \t]*\r?$", re.M)
    marks: list[tuple[int, int, bool]] = []  # (line start, next line start, closing)
    for m in _finditer(delim, raw, part.body_start, part.end):
        nxt = m.end() + (raw[m.end():m.end() + 1] == b"\n")
        marks.append((m.start(), min(nxt, part.end), bool(m.group(1))))
        if m.group(1):
            break
    if not _NON_SPACE.search(raw, part.body_start, part.end):  # no copy of a large body
        return  # an empty multipart: nothing inside, nothing broken
    if not marks or marks[0][2]:
        part.broken = "boundary not found in body"
        return
    default = "message/rfc822" if part.ctype == "multipart/digest" else "text/plain"
    for i, (_, content, closing) in enumerate(marks):
        if closing:
            break
        cend = _before_eol(raw, marks[i + 1][0]) if i + 1 < len(marks) else part.end
        part.children.append(_parse(raw, content, max(content, cend), default))


def _before_eol(raw: bytes, pos: int) -> int:
    if raw[pos - 2:pos] == b"\r\n":
        return pos - 2
    return pos - 1 if raw[pos - 1:pos] == b"\n" else pos


def _select(part: _Part) -> list[_Part]:
    """The parts to decorate under ``part``; raise _Skip if it must stay as is."""
    ct = part.ctype
    if ct in _UNSAFE:
        raise _Skip(f"skipped: {_UNSAFE[ct]} message part ({ct})")
    if part.msg.get_content_disposition() == "attachment" or ct.startswith("message/"):
        return []
    if ct == "text/calendar":
        raise _Skip("skipped: calendar invitation (text/calendar)")
    if ct in ("text/plain", "text/html"):
        return [part]
    if part.msg.get_content_maintype() != "multipart":
        return []
    if part.broken:
        raise _Skip(f"malformed MIME: {ct} {part.broken}")
    if ct == "multipart/alternative":
        return [p for child in part.children for p in _select(child)]
    for child in part.children:  # mixed, related, ...: the first body wins
        found = _select(child)
        if found:
            return found
    return []


def decorate(raw: bytes, disclaimer: Disclaimer) -> Result:
    """Add ``disclaimer`` to the message body; never raises."""
    planned = plan(raw, disclaimer)
    if not planned.edits:
        return planned
    return Result(apply_edits(raw, planned.edits), planned.reason, planned.decorated_parts, planned.edits)


def plan(raw: bytes, disclaimer: Disclaimer) -> Result:
    """Like :func:`decorate`, but return only the edits (``message`` stays None).

    ``raw`` may be an ``mmap`` of a spooled message: a caller can then
    stream the result with :func:`segments` instead of holding a second copy
    of a large message.
    """
    if not disclaimer.text.strip():
        return Result(None, "skipped: empty disclaimer", 0)
    try:
        return _decorate(raw, disclaimer)
    except _Skip as skip:
        return Result(None, str(skip), 0)
    except Exception as exc:  # noqa: BLE001 - a milter must not die on odd mail
        return Result(None, f"malformed MIME: {type(exc).__name__}: {exc}", 0)


def _decorate(raw: bytes, disclaimer: Disclaimer) -> Result:
    nl = raw.find(b"\n")
    eol = b"\r\n" if nl > 0 and raw[nl - 1:nl] == b"\r" else b"\n"
    root = _parse(raw, 0, len(raw))
    targets = _select(root)
    if not targets:
        raise _Skip("skipped: no text body to decorate")
    edits: list[tuple[int, int, int, bytes]] = []  # (start, end, order, bytes)
    done: list[str] = []
    notes: list[str] = []
    for part in targets:
        try:
            edits += _decorate_part(raw, part, disclaimer, eol, part is root)
            done.append(part.ctype)
        except _Skip as skip:
            notes.append(str(skip))
    if not done:
        raise _Skip("; ".join(notes))
    reason = f"decorated {len(done)} part(s): {', '.join(done)}"
    ordered = [(start, end, new) for start, end, _, new in sorted(edits, key=lambda e: (e[0], e[2]))]
    return Result(None, reason + (f" ({'; '.join(notes)})" if notes else ""), len(done), tuple(ordered))


Piece = "tuple[int, int] | bytes"


def apply_edits(raw: bytes, edits: Sequence[Edit]) -> bytes:
    """The decorated message: ``raw`` with each (start, end, replacement) applied."""
    return b"".join(p if isinstance(p, bytes) else raw[p[0]:p[1]] for p in segments(edits, 0, len(raw)))


def segments(edits: Sequence[Edit], start: int, end: int) -> list[tuple[int, int] | bytes]:
    """The decorated range [start, end) as pieces: (a, b) ranges of the original, or new bytes.

    A caller holding a large message in a file streams these pieces instead
    of building a second copy of the message in memory.
    """
    out: list[tuple[int, int] | bytes] = []
    pos = start
    for a, b, new in edits:
        if a < start and b <= start:  # entirely before the requested range
            continue
        if a < start:
            raise ValueError("an edit straddles the requested start offset")
        if a > pos:
            out.append((pos, a))
        out.append(new)
        pos = b
    if end > pos:
        out.append((pos, end))
    return out


_WINDOW = 4 * 1024 * 1024


def _finditer(pattern: re.Pattern[bytes], raw: bytes, start: int, end: int) -> Iterator[re.Match[bytes]]:
    """``pattern.finditer`` over [start, end); over an mmap, in line-aligned windows whose
    pages are released after each, so scanning a large spooled message does not make it resident."""
    if not isinstance(raw, mmap.mmap) or end - start <= _WINDOW:
        yield from pattern.finditer(raw, start, end)
        return
    pos = start
    while pos < end:
        stop = min(end, pos + _WINDOW)
        if stop < end:  # never cut a line: a match must not end at an artificial window end
            nl = raw.find(b"\n", stop, end)
            stop = end if nl < 0 else nl + 1
        yield from pattern.finditer(raw, pos, stop)
        page = pos - pos % mmap.PAGESIZE
        raw.madvise(mmap.MADV_DONTNEED, page, stop - page)
        pos = stop


def _codec(label: str) -> str | None:
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


@lru_cache(maxsize=256)
def _ascii_compatible(codec: str) -> bool:
    """True when ASCII bytes in this charset always mean ASCII characters."""
    if codec.startswith(_STATEFUL):
        return False
    try:
        return "</body>\r\n az".encode(codec) == b"</body>\r\n az"
    except UnicodeError:
        return False


def _try_decode(data: bytes, codec: str | None) -> str | None:
    if codec is None:
        return None
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError):
        return None


def _has_long_line(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """A line over RFC 5322's 998 octets (CR of a CRLF not counted) in data[start:end].

    Window by window: the last LF within the next 999 octets starts the next
    window, so there is no copy and ~one C-speed ``rfind`` per 900 octets;
    only a window with no LF at all (a line of 999+ octets, maybe CRs) is
    looked at closely.
    """
    end = len(data) if end is None else end
    pos = start
    while end - pos > 998:
        nl = data.rfind(b"\n", pos, pos + 999)
        if nl < 0:
            return any(len(line.rstrip(b"\r")) > 998 for line in data[start:end].split(b"\n"))
        pos = nl + 1
    return False


def _norm(s: str) -> str:
    return " ".join(s.split())


def _has_disclaimer(view: str, disclaimer: Disclaimer, is_html: bool) -> bool:
    needle = _norm(disclaimer.text)
    # Fast "no": the needle's longest word must appear as is (quoting and re-wrapping
    # only touch whitespace), so most messages skip the normalising passes below.
    token = max(needle.split(), key=len, default="")
    if token not in view and not (is_html and token in html.unescape(view)):
        return False
    if is_html:
        if _norm(disclaimer.html_form()) in _norm(view):
            return True
        view = html.unescape(_TAG.sub(" ", view))
    return needle in _norm(view) or needle in _norm(_QUOTE.sub("", view))


def _insert_at(s: str | bytes, is_html: bool) -> int:
    if is_html:
        found = list((_BODY_END_B if isinstance(s, bytes) else _BODY_END).finditer(s))
        if found:
            return found[-1].start()
    return len(s)


def _addition(view: str, disclaimer: Disclaimer, is_html: bool, nl: str) -> str:
    if is_html:
        snippet = nl.join(disclaimer.html_form().splitlines())
        if _BODY_END.search(view):
            return snippet + nl
    else:
        snippet = nl.join(disclaimer.text.strip("\r\n").splitlines())
    if not view:
        return snippet + nl
    if view.endswith(("\n", "\r")):
        return (snippet if is_html else nl + snippet) + nl
    return nl + (snippet if is_html else nl + snippet)


def _decorate_part(raw: bytes, part: _Part, disclaimer: Disclaimer, eol: bytes,
                   is_root: bool) -> list[tuple[int, int, int, bytes]]:
    msg, is_html = part.msg, part.ctype == "text/html"
    label_cte = str(msg.get("Content-Transfer-Encoding", "7bit"))
    cte = _CTES.get(re.sub(r"[\s_-]", "", label_cte.split(";")[0]).lower() or "7bit", "")
    if not cte:
        raise _Skip(f"skipped {part.ctype}: unsupported transfer encoding {label_cte.strip()!r}")
    encoded = raw[part.body_start:part.end]
    data = encoded
    if cte == "base64":
        try:
            data = binascii.a2b_base64(encoded)
        except binascii.Error as exc:
            raise _Skip(f"malformed MIME: bad base64 in {part.ctype} ({exc})") from None
    elif cte == "quoted-printable":
        data = binascii.a2b_qp(encoded)
    label = msg.get_content_charset() or "us-ascii"
    codec = _codec(label)
    text = _try_decode(data, codec)
    view = text if text is not None else data.decode("utf-8", "replace")
    if _has_disclaimer(view, disclaimer, is_html):
        raise _Skip(f"skipped {part.ctype}: already has the disclaimer")
    nl = "\r\n" if "\r\n" in view else "\n" if "\n" in view else eol.decode()
    if cte == "base64" and "\n" not in view:
        nl = "\r\n"  # canonical form of encoded text
    add = _addition(view, disclaimer, is_html, nl)
    errors = "xmlcharrefreplace" if is_html else "strict"
    new: bytes | None = None
    new_label = None
    if codec is None or _ascii_compatible(codec):  # splice bytes, keep the original ones
        try:
            piece = add.encode(codec or "ascii", errors)
            at = _insert_at(data, is_html)
        except UnicodeEncodeError:
            pass
        else:
            if cte in ("7bit", "8bit", "binary") and data is encoded:
                inserted = _insert(raw, part, data, at, piece, cte, eol)
                if inserted is not None:
                    return inserted
            new = data[:at] + piece + data[at:]
    elif text is not None:  # stateful or wide charset: go through str
        try:
            at = _insert_at(text, is_html)
            new = (text[:at] + add + text[at:]).encode(codec, errors)
        except UnicodeEncodeError:
            pass
    if new is None:  # the disclaimer does not fit the charset: move the part to UTF-8
        src = text if text is not None else _try_decode(data, "utf-8")
        if src is None:
            raise _Skip(f"skipped {part.ctype}: text does not decode as {label!r}")
        at = _insert_at(src, is_html)
        new, new_label = (src[:at] + add + src[at:]).encode("utf-8"), "utf-8"
    new_cte = cte
    if cte in ("7bit", "8bit", "binary"):
        if (cte == "7bit" and not new.isascii()) or _has_long_line(new):
            new_cte = "quoted-printable"
    body = _encode(new, new_cte, eol)
    if new_cte == "base64" and encoded.endswith(b"\n"):
        body += eol
    edits = [(part.body_start, part.end, 1, (b"" if part.has_sep else eol) + body)]
    headers: list[tuple[int, int, int, bytes]] = []
    if new_cte != cte:
        headers += _set_field(raw, part, "Content-Transfer-Encoding", new_cte.encode(), eol)
    if new_label:
        headers += _set_charset(raw, part, eol)
    if headers and is_root and "MIME-Version" not in msg:
        headers += _set_field(raw, part, "MIME-Version", b"1.0", eol)
    if part.hdr_end > part.start and raw[part.hdr_end - 1:part.hdr_end] != b"\n":
        headers.append((part.hdr_end, part.hdr_end, -1, eol))  # unterminated last header
    return edits + headers


def _insert(raw: bytes, part: _Part, data: bytes, at: int, piece: bytes, cte: str,
            eol: bytes) -> list[tuple[int, int, int, bytes]] | None:
    """The edits of a decorated identity-encoded part as an insertion of ``piece`` at ``at``
    (no copy of the body), or None when its transfer encoding must change (then the
    whole body is rewritten). Equivalent to replacing the body by data[:at] + piece + data[at:]."""
    if cte == "7bit" and not (piece.isascii() and data.isascii()):
        return None
    # Long lines of the result: the untouched lines before and after the one holding ``at``,
    # and that line with ``piece`` inside it.
    lo = data.rfind(b"\n", 0, at) + 1
    hi = data.find(b"\n", at)
    hi = len(data) if hi < 0 else hi + 1
    if (_has_long_line(data, 0, lo) or _has_long_line(data[lo:at] + piece + data[at:hi])
            or _has_long_line(data, hi)):
        return None
    start = part.body_start
    edits = [] if part.has_sep else [(start, start, 1, eol)]
    edits.append((start + at, start + at, 1, piece))
    if part.hdr_end > part.start and raw[part.hdr_end - 1:part.hdr_end] != b"\n":
        edits.append((part.hdr_end, part.hdr_end, -1, eol))  # unterminated last header
    return edits


def _encode(data: bytes, cte: str, eol: bytes) -> bytes:
    if cte == "base64":
        enc = base64.b64encode(data)
        return eol.join(enc[i:i + 76] for i in range(0, len(enc), 76))
    if cte == "quoted-printable":
        return eol.join(binascii.b2a_qp(line, istext=False).replace(b"=\n", b"=" + eol)
                        for line in data.split(eol))
    return data


def _fields(raw: bytes, part: _Part) -> list[tuple[bytes, int, int]]:
    """(lower-case name, start, end) of each header field of the part."""
    out: list[tuple[bytes, int, int]] = []
    pos = part.start
    while pos < part.hdr_end:
        nl = raw.find(b"\n", pos, part.hdr_end)
        end = part.hdr_end if nl < 0 else nl + 1
        if raw[pos:pos + 1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1], end)
        else:
            out.append((raw[pos:end].split(b":", 1)[0].strip().lower(), pos, end))
        pos = end
    return out


def _set_field(raw: bytes, part: _Part, name: str, value: bytes,
               eol: bytes) -> list[tuple[int, int, int, bytes]]:
    """Replace every ``name`` field by one ``name: value`` (added when absent)."""
    line = name.encode() + b": " + value + eol
    found = [f for f in _fields(raw, part) if f[0] == name.lower().encode()]
    if not found:
        return [(part.hdr_end, part.hdr_end, 0, line)]
    return [(s, e, 0, line if i == 0 else b"") for i, (_, s, e) in enumerate(found)]


def _set_charset(raw: bytes, part: _Part, eol: bytes) -> list[tuple[int, int, int, bytes]]:
    found = [f for f in _fields(raw, part) if f[0] == b"content-type"]
    if not found:
        return _set_field(raw, part, "Content-Type",
                          part.ctype.encode() + b'; charset="utf-8"', eol)
    _, start, end = found[0]
    value = _CHARSET_PARAM.sub(b"", raw[start:end]).rstrip()
    last_line = value.rsplit(b"\n", 1)[-1]
    sep = b"; " if len(last_line) + 18 <= 78 else b";" + eol + b" "
    return [(start, end, 0, value + sep + b'charset="utf-8"' + eol)]
