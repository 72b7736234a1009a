"""DKIM signing (RFC 6376) with RSA-SHA256 and Ed25519-SHA256 (RFC 8463).

A pure function over the message as the milter sees it, fast because the
public-key work is done by ``cryptography`` (OpenSSL) and the body is hashed
once for all keys.  dkimpy is the reference verifier in the tests, not the
signer (its RSA is pure Python).

Fixed choices: ``c=relaxed/relaxed``, SHA-256, ``t=`` set, no ``l=``, no
``x=``, ``i=`` left to its default (``@d``).  The signed header fields are
those of RFC 6376 §5.4.1 (plus the MIME and Message-ID fields) that the
message has, and From, To, Cc, Subject, Date, Message-ID and Reply-To are
*oversigned*: listed once more than they occur, so none can be added later
without breaking the signature.  Fields added in transit (Received,
Return-Path, DKIM-Signature, Authentication-Results, ARC-*, X-*) are never
signed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mattermail.dkimkeys import Algorithm, SigningKey

__all__ = [
    "KeyTable",
    "OVERSIGNED",
    "SIGNED_HEADERS",
    "SigningKey",
    "Algorithm",
    "body_hash",
    "select_keys",
    "sign",
]

#: domain -> its signing keys, like OpenDKIM's KeyTable + SigningTable.
KeyTable = Mapping[str, Sequence[SigningKey]]

#: Header fields signed when present (lower case).  RFC 6376 §5.4.1's list,
#: plus Message-ID, Sender, the MIME fields and RFC 8058's List-Unsubscribe-Post.
SIGNED_HEADERS: frozenset[str] = frozenset({
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "content-disposition", "content-language",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-message-id", "in-reply-to", "references",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post",
    "list-subscribe", "list-post", "list-owner", "list-archive",
})
#: Signed once more than they occur, so that adding one breaks the signature.
OVERSIGNED: tuple[str, ...] = ("from", "to", "cc", "subject", "date", "message-id", "reply-to")

_FIELD_NAME = "DKIM-Signature"
_WIDTH = 78  # fold the signature to lines of at most this many characters
# Runs of WSP that relaxed canonicalization changes (a lone SP is already canonical,
# and leaving those alone makes the substitution several times faster).
_WSP_RUN = re.compile(rb" [ \t]+|\t[ \t]*")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def _as_bytes(value: str | bytes) -> bytes:
    """Header text as it travels: UTF-8, with pymilter's surrogate escapes undone."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


def _relaxed_header(name: str, value: str | bytes) -> bytes:
    """RFC 6376 §3.4.2 relaxed canonical form of one header field, CRLF-terminated.

    Line breaks in ``value`` (CRLF or bare LF, as Postfix may hand them over)
    are folding, which relaxed canonicalization removes.
    """
    raw = _as_bytes(value).replace(b"\r\n", b"").replace(b"\n", b"")
    raw = _WSP_RUN.sub(b" ", raw).strip(b" ")
    return name.strip().lower().encode("ascii") + b":" + raw + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed canonical form of a body.

    Bare LFs are taken as line ends (Postfix sends every line with CRLF),
    runs of WSP become one SP, WSP at line ends and empty lines at the end are
    removed, and a non-empty body ends with CRLF.  An empty body stays empty.
    """
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _BARE_LF.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n").rstrip(b" ")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


_SP_BEFORE = re.compile(rb" [ \r]")  # "  " or " \r\n" (or a space before a lone CR: rare, harmless)


def _canonical(buf: bytes, start: int, end: int) -> bool:
    """True when the complete lines buf[start:end] (ending in LF) are already in relaxed form:
    CRLF line ends only, no TAB, no run of spaces, no space at a line end.

    Only a quick test (False sends the block through the rewriting path, which is exact);
    chosen for speed on large bodies: single-byte scans and one regex with a literal
    first byte, not the slower two-byte searches.
    """
    if buf.find(b"\t", start, end) >= 0:
        return False
    # memchr first: base64 attachments (most of a large message) have no space at all.
    if buf.find(b" ", start, end) >= 0 and _SP_BEFORE.search(buf, start, end):
        return False
    # Every LF preceded by a CR: each line terminator is CRLF, a lone CR or a lone LF, so
    # lone LFs = terminators - CRs (bytes.splitlines splits on exactly those three).
    block = buf[start:end] if start or end != len(buf) else buf
    return len(block.splitlines()) <= block.count(b"\r")


class BodyHasher:
    """:func:`body_hash` computed incrementally, for bodies streamed from a spool file.

    Complete lines are canonicalized as they arrive; empty lines are held back
    until a non-empty line follows (relaxed canonicalization drops empty lines
    at the end of the body), and a trailing partial line waits for more data.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._partial = b""
        self._empty_lines = 0

    def update(self, chunk: bytes | memoryview) -> None:
        data = bytes(chunk)
        self.update_range(data, 0, len(data))

    def update_range(self, buf: bytes, start: int, end: int) -> None:
        """Like ``update(buf[start:end])``, without copying ``buf`` in the common case."""
        if self._partial:
            buf = self._partial + buf[start:end]
            start, end = 0, len(buf)
        cut = buf.rfind(b"\n", start, end) + 1
        if not cut:
            self._partial = buf[start:end]
            return
        self._partial = buf[cut:end]
        self._lines(buf, start, cut)

    def _lines(self, buf: bytes, start: int, end: int) -> None:
        """Canonicalize and hash the complete lines buf[start:end]."""
        if not _canonical(buf, start, end):
            block = buf[start:end]  # something to rewrite: work on a copy
            if block.count(b"\n") != block.count(b"\r\n"):
                block = _BARE_LF.sub(b"\r\n", block)
            if b"\t" in block or b"  " in block:
                block = _WSP_RUN.sub(b" ", block)
            buf, start, end = block.replace(b" \r\n", b"\r\n"), 0, 0
            end = len(buf)
        # Already canonical: hash it in place (a memoryview, no copy).
        stop, trailing = end, 0
        while stop - start >= 2 and buf.startswith(b"\r\n", stop - 2):
            stop -= 2
            trailing += 1
        if stop > start:  # some non-empty line: release the held-back empty lines first
            sha = self._sha
            if self._empty_lines:
                sha.update(b"\r\n" * self._empty_lines)
            sha.update(memoryview(buf)[start:stop])
            sha.update(b"\r\n")
            self._empty_lines = trailing - 1
        else:
            self._empty_lines += trailing

    def hexdigest_b64(self) -> str:
        """Finish (a last line without CRLF counts as a line) and return the ``bh=`` value."""
        if self._partial:
            last = _WSP_RUN.sub(b" ", self._partial).rstrip(b" ")
            self._partial = b""
            if last:
                self._sha.update(b"\r\n" * self._empty_lines + last + b"\r\n")
                self._empty_lines = 0
        return base64.b64encode(self._sha.digest()).decode("ascii")


def body_hash(body: bytes) -> str:
    """The ``bh=`` value: base64 SHA-256 of the relaxed canonical body."""
    return base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode("ascii")


def _header_list(headers: Sequence[tuple[str, str | bytes]]) -> list[str]:
    """The ``h=`` list: signable fields in message order, then one more of each oversigned name."""
    present = [name.strip().lower() for name, _ in headers]
    signed = [n for n in present if n in SIGNED_HEADERS]
    return signed + list(OVERSIGNED)


def _signed_header_block(headers: Sequence[tuple[str, str | bytes]], names: Iterable[str]) -> bytes:
    """Canonical header fields for ``h=``: each name takes the next instance from the bottom."""
    instances: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(headers):
        instances.setdefault(name.strip().lower(), []).append(i)
    out: list[bytes] = []
    for name in names:
        stack = instances.get(name)
        if stack:
            field_name, value = headers[stack.pop()]
            out.append(_relaxed_header(field_name, value))
    return b"".join(out)


_VARYING = ("t", "bh")  # values that change per message, with a fixed length
_FOLDS: dict[tuple, tuple[list[str], list[tuple[int, str, str, str]]]] = {}


def _fold(tags: list[tuple[str, str]], linesep: str) -> str:
    """Join ``tag=value`` pairs with ``; `` and fold lines at about 78 characters.

    The first line is budgeted for the ``DKIM-Signature: `` the MTA puts in
    front.  ``h=`` is folded only after a colon (FWS is allowed there).
    The layout depends on the lengths of ``t=`` and ``bh=`` only, not their
    values: it is computed once per key, header list and lengths, then filled in.
    """
    key = (linesep, *((t, len(v)) if t in _VARYING else (t, v) for t, v in tags))
    layout = _FOLDS.get(key)
    if layout is None:
        layout = _fold_layout(tags, linesep)
        if len(_FOLDS) < 512:
            _FOLDS[key] = layout
    out, slots = layout
    if slots:
        out = list(out)
        values = dict(tags)
        for i, tag, sep, suffix in slots:
            out[i] = f"{sep}{tag}={values[tag]}{suffix}"
    return "".join(out)


def _fold_layout(tags: list[tuple[str, str]], linesep: str) -> tuple[list[str], list[tuple[int, str, str, str]]]:
    """Join ``tag=value`` pairs with ``; `` and fold lines at about 78 characters.

    The first line is budgeted for the ``DKIM-Signature: `` the MTA puts in
    front.  ``h=`` is folded only after a colon (FWS is allowed there).
    """
    brk = linesep + "\t"
    out: list[str] = []
    slots: list[tuple[int, str, str, str]] = []  # (index in out, tag, separator, suffix) of t= and bh=
    col = len(_FIELD_NAME) + 2
    for i, (tag, value) in enumerate(tags):
        last = i == len(tags) - 1
        if tag == "h":
            names = value.split(":")
            pieces = [n + ":" for n in names[:-1]] + names[-1:]
        else:
            pieces = [value]
        pieces[0] = f"{tag}={pieces[0]}"
        if not last:
            pieces[-1] += ";"
        for j, piece in enumerate(pieces):
            sep = " " if (j == 0 and out) else ""
            if out and col + len(sep) + len(piece) > _WIDTH:
                out.append(brk)
                col = 1
                sep = ""
            if tag in _VARYING:
                slots.append((len(out), tag, sep, "" if last else ";"))
            out.append(sep + piece)
            col += len(sep) + len(piece)
    return out, slots


def _fold_b64(prefix: str, sig_b64: str, linesep: str) -> str:
    """Append the ``b=`` data to the folded value ``prefix`` (which ends in ``b=``).

    FWS is allowed anywhere in the ``b=`` data, and verifiers delete the data
    with its FWS before hashing, so the layout here does not affect the hash.
    """
    nl = prefix.rfind("\n")
    col = len(prefix) - nl - 1 + (0 if nl >= 0 else len(_FIELD_NAME) + 2)
    room = _WIDTH - col
    out = [prefix]
    if room >= 8:
        out.append(sig_b64[:room])
        sig_b64 = sig_b64[room:]
    step = _WIDTH - 1
    out.extend(linesep + "\t" + sig_b64[i:i + step] for i in range(0, len(sig_b64), step))
    return "".join(out)


def _sign_digest_input(key: SigningKey, data: bytes) -> bytes:
    """The raw signature over the header hash input ``data``."""
    pk = key.private_key
    if key.algorithm == "rsa-sha256":
        assert isinstance(pk, rsa.RSAPrivateKey)
        return pk.sign(data, _PKCS1, _SHA256)
    assert isinstance(pk, ed25519.Ed25519PrivateKey)
    # RFC 8463 §3: PureEdDSA Ed25519 over the SHA-256 hash of the data.
    return pk.sign(hashlib.sha256(data).digest())


def sign(
    headers: Sequence[tuple[str, str | bytes]],
    body: bytes,
    keys: Sequence[SigningKey],
    now: int | None = None,
    *,
    linesep: str = "\n",
    bh: str | None = None,
) -> list[tuple[str, str]]:
    """DKIM-sign a message with each key; return the ``DKIM-Signature`` fields to add.

    ``headers`` are the message's (name, value) pairs in order, values as
    Postfix gives them (no trailing line end; folded lines joined by CRLF or
    LF plus WSP); ``body`` is the body with CRLF line ends.  Returns one
    ``("DKIM-Signature", value)`` per key, in ``keys`` order; prepend them in
    that order (e.g. ``addheader(name, value, idx=0)`` each).

    Each value has no leading space (the MTA writes ``DKIM-Signature: ``
    before it, as Postfix and sendmail do) and is folded with ``linesep``
    + TAB.  The default ``"\\n"`` is what a milter must pass to
    ``addheader`` (Postfix turns it into CRLF on the wire, a CR would be kept
    as a stray byte); use ``"\\r\\n"`` to build a raw message.
    ``bh`` is the body hash when the caller computed it while streaming
    (:class:`BodyHasher`); ``body`` is then not read.
    """
    if not keys:
        return []
    t = int(time.time()) if now is None else int(now)
    if bh is None:
        bh = body_hash(body)
    names = _header_list(headers)
    signed_block = _signed_header_block(headers, names)
    h_value = ":".join(names)
    result: list[tuple[str, str]] = []
    for key in keys:
        tags = [
            ("v", "1"),
            ("a", key.algorithm),
            ("c", "relaxed/relaxed"),
            ("d", key.domain),
            ("s", key.selector),
            ("t", str(t)),
            ("h", h_value),
            ("bh", bh),
            ("b", ""),
        ]
        unsigned = _fold(tags, linesep)
        data = signed_block + _relaxed_header(_FIELD_NAME, unsigned)[:-2]
        sig = base64.b64encode(_sign_digest_input(key, data)).decode("ascii")
        result.append((_FIELD_NAME, _fold_b64(unsigned, sig, linesep)))
    return result


def _parents(domain: str) -> Iterable[str]:
    """``a.b.example.com`` -> ``b.example.com``, ``example.com`` (never a bare TLD)."""
    labels = domain.split(".")
    for i in range(1, len(labels) - 1):
        yield ".".join(labels[i:])


def select_keys(from_domain: str, table: KeyTable, sign_subdomains: bool) -> list[SigningKey]:
    """The keys to sign mail from ``from_domain`` with (an empty list: do not sign).

    An exact (case-insensitive) match wins; otherwise, with
    ``sign_subdomains``, the nearest parent domain in the table, signing with
    ``d=`` that parent, which still aligns with From under relaxed DMARC.
    All keys of the domain are returned, Ed25519 before RSA, for dual signing.
    """
    domain = from_domain.strip().rstrip(".").lower()
    if not domain:
        return []
    candidates = [domain, *(_parents(domain) if sign_subdomains else ())]
    for name in candidates:
        keys = table.get(name)
        if keys:
            return sorted(keys, key=lambda k: k.algorithm != "ed25519-sha256")
    return []
