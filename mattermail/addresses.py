"""Email addresses, parsed one way for all of mattermail (milter, router, ctl).

Pure functions that never raise on what a message holds (garbage, 8-bit
bytes as surrogate escapes, RFC 2047 words, empty values): they find nothing.

* :func:`addr_spec` — one address as RFC 5321 writes a path or mailbox
  (``local@domain``, ``<local@domain>``, ``<@relay:local@domain>``),
  comments and folding whitespace allowed around its parts, parsed with the
  standard library's RFC 5322 parser (``email._header_value_parser``, the
  one behind ``email.headerregistry``). A quoted local part is kept whole
  (``":fail: x"@d``), and dropped to its plain form when the quotes are not
  needed (``"alice"@d`` is ``alice@d``, RFC 5321 4.1.2).
* :func:`received_for` — the address of a ``Received:`` header's ``for``
  clause: the keyword is looked for outside comments and quoted strings, the
  address after it read with :func:`addr_spec`'s parser.
* :func:`mailboxes` — every mailbox of address-list header values (``From``,
  ``To``, ``Delivered-To``; groups flattened), split with
  ``email.utils.getaddresses``: it is lenient and rather reports one address
  too many (``a@x)<b@y>`` gives both), which the milter's DMARC and sender
  checks need: every address a mail reader might show is checked. Each
  address is then read with :func:`addr_spec`.

Canonical form (:func:`addr_spec`, :attr:`Mailbox.address` when
``valid``): the domain lower-cased without a trailing dot, the local part as
written (case kept) and quoted only when it must be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import _header_value_parser as _rfc5322
from email.errors import HeaderParseError
from email.utils import getaddresses

__all__ = ["Mailbox", "addr_spec", "mailboxes", "path_at", "received_for", "text_of"]

MAX_RECEIVED = 65_536  # characters of one Received value looked at: a longer one is junk
MAX_PATH = 512  # characters after "for" an address may take (a path is at most 256, comments aside)
MAX_CLAUSES = 8  # "for" words tried per Received value (RFC 5321 writes one)
MAX_NESTING = 50  # comment nesting the RFC 5322 parser is given (it recurses once per level)


@dataclass(frozen=True)
class Mailbox:
    """One mailbox of an address list: the display name (or comment) as ``getaddresses`` gives it, the
    address (canonical when ``valid``, else stripped of spaces and ``<>`` as written) and whether it
    parsed as ``local@domain``."""

    name: str
    address: str
    valid: bool


def text_of(value: object, limit: int | None = None) -> str:
    """Any header value (str with surrogate escapes, Header object, None) as clean text on one line
    (its first ``limit`` characters)."""
    if value is None:
        return ""
    s = value if isinstance(value, str) else str(value)
    try:
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        s = s.encode("utf-8", "replace").decode("utf-8", "replace")
    return " ".join(s[:limit].split())


# a domain that ends with a dot (an absolute name: "x@example.org."), which RFC 5322 does not allow
_TRAILING_DOT = re.compile(r"^(\s*<?[^<>\s]*@[^<>\s;,()\"]*?)\.(?=\s*(?:[>;,()]|$))")


def _parse(text: str) -> tuple[_rfc5322.TokenList, str]:
    """(addr-spec or angle-addr token, rest) at the start of ``text``; raises HeaderParseError."""
    stripped = text.lstrip()
    # comments before an angle-addr belong to it ("(x) <a@b>"); get_angle_addr wants them
    if stripped.startswith("<") or (stripped.startswith("(") and "<" in stripped):
        try:
            return _rfc5322.get_angle_addr(text)
        except HeaderParseError:
            if not stripped.startswith("("):
                raise
    return _rfc5322.get_addr_spec(text)


def path_at(text: str) -> tuple[str | None, str]:
    """The address at the start of ``text`` (see :func:`addr_spec`) and the text after it;
    (None, text) when ``text`` does not start with one."""
    if text.count("(") > MAX_NESTING:  # deeper nesting would exhaust the parser's recursion
        return None, text
    for attempt in (text, _TRAILING_DOT.sub(r"\1", text, count=1)):
        try:
            token, rest = _parse(attempt)
        except Exception:  # HeaderParseError; never let a header raise anything else either
            continue
        local, domain = getattr(token, "local_part", None), getattr(token, "domain", None)
        if not local or not domain:
            return None, text
        return _canonical(local, domain), rest
    return None, text


_ATEXT = r'[^\s()<>\[\]:;@\\,."\x00-\x1f\x7f]'
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")


def _canonical(local: str, domain: str) -> str:
    """``local@domain``: the local part quoted (RFC 5322 quoted-string) only when it is no dot-atom."""
    if not _DOT_ATOM.fullmatch(local):
        quoted = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{quoted}"'
    return f"{local}@{domain.strip().rstrip('.').lower()}"


def addr_spec(text: object) -> str | None:
    """``text`` as one address in canonical form, or None when it is not one (nothing may follow it
    but a comment). Accepts ``local@domain``, ``<local@domain>``, ``<@relay:local@domain>`` (the source
    route is dropped) and a quoted local part; ``<>`` and ``you`` are no address."""
    clean = text_of(text)
    addr, rest = path_at(clean)
    return addr if addr is not None and not rest.strip() else None


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5322 atext, ASCII
_SIMPLE = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)")


# One item of the usual list: ``local@domain``, ``<local@domain>`` or ``Name Words <local@domain>`` with
# plain atoms only (no quotes, comments, dots or groups in the name): getaddresses gives the name's atoms
# joined by one space (text_of has made every run of blanks one space) and the address as written.
_PLAIN_ITEM = re.compile(rf"(?:({_ATOM}(?: {_ATOM})*) ?)?<{_SIMPLE.pattern}>|{_SIMPLE.pattern}")


def _plain_mailboxes(texts: list[str]) -> tuple[Mailbox, ...] | None:
    """:func:`mailboxes` of clean texts whose every comma-separated item is a plain one (see _PLAIN_ITEM),
    without getaddresses' character-by-character parse; None when an item is anything else (a test
    compares the two on random lists)."""
    out: list[Mailbox] = []
    for text in texts:
        if not text:
            continue
        for piece in text.split(","):
            m = _PLAIN_ITEM.fullmatch(piece.strip(" "))
            if m is None:
                return None
            local, domain = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
            out.append(Mailbox(m.group(1) or "", f"{local}@{domain.lower()}", True))
    return tuple(out)


def mailboxes(values: Sequence[object]) -> tuple[Mailbox, ...]:
    """Every mailbox in the given address-list header values, in order (groups flattened)."""
    texts = [text_of(v) for v in values]
    plain = _plain_mailboxes(texts)
    return plain if plain is not None else _parsed_mailboxes(texts)


def _parsed_mailboxes(texts: list[str]) -> tuple[Mailbox, ...]:
    out: list[Mailbox] = []
    try:
        pairs = getaddresses(texts)
    except Exception:  # pragma: no cover - getaddresses does not raise on text; never let a header do it
        return ()
    for name, raw in pairs:
        if not name and not raw:
            continue
        simple = _SIMPLE.fullmatch(raw)  # the common case, without the full parser
        canonical = (f"{simple.group(1)}@{simple.group(2).lower()}" if simple
                     else addr_spec(raw) if "@" in raw else None)
        out.append(Mailbox(name, canonical or raw.strip().strip("<>").strip(), canonical is not None))
    return tuple(out)


def _skip_quoted(text: str, i: int) -> int:
    """Index after the quoted string starting at ``text[i] == '"'`` (the end of text if unterminated)."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return len(text)


def _comment_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each outermost parenthesised comment, in order (nested ones are inside it); a "("
    that is never closed is no comment (it is read as text, and so are quoted strings after it). One pass."""
    spans: list[tuple[int, int]] = []
    opened: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and opened:
            i += 2
            continue
        if c == '"' and not opened:
            i = _skip_quoted(text, i)
            continue
        if c == "(":
            opened.append(i)
        elif c == ")" and opened:
            spans.append((opened.pop(), i + 1))
        i += 1
    spans.sort()
    outer: list[tuple[int, int]] = []
    for start, end in spans:
        if not outer or start >= outer[-1][1]:
            outer.append((start, end))
    return outer


_WORD_CHAR = re.compile(r"[\w.\-]")


def received_for(value: object) -> str | None:
    """The address of a Received header's ``for`` clause (RFC 5321 4.4: ``FOR (Path / Mailbox)``), or None.

    The keyword is found as a word of its own outside comments and quoted strings (``(qmail 1 invoked
    for bounce)``, ``mail.for.example`` and ``"for x"@d`` are no clause); the address after it is
    read with :func:`path_at`, with or without ``<>``. A clause that holds no address (``for you``,
    ``for <@example.com>``) is skipped and the next one tried. A "(" never closed is read as text.
    """
    try:
        text = text_of(value, MAX_RECEIVED)
        lowered = text.lower()
        comments = iter(_comment_spans(text))
        comment = next(comments, None)
        i, n, tries = 0, len(text), 0
        while i < n and tries < MAX_CLAUSES:
            if comment is not None and i >= comment[0]:
                i = max(i, comment[1])
                comment = next(comments, None)
                continue
            c = text[i]
            if c == '"':
                i = _skip_quoted(text, i)
                continue
            if (lowered.startswith("for", i) and (i == 0 or not _WORD_CHAR.match(text[i - 1]))
                    and i + 3 < n and text[i + 3].isspace()):
                tries += 1
                addr, _ = path_at(text[i + 3:i + 3 + MAX_PATH])
                if addr is not None:
                    return addr
            i += 1
    except Exception:  # pragma: no cover - belt and braces: never raise on input
        pass
    return None
