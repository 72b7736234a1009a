"""DKIM verification (RFC 6376, RFC 8463) of every ``DKIM-Signature`` of a message.

Every key lookup goes through our :class:`~mattermail.dns.Resolver`, so a
timeout or SERVFAIL is ``temperror``, never ``fail`` or ``none``.  Every
reason is a phrase of our own: never text from the signature, which the
sender wrote.

Two paths, one verdict.  The *fast path* (:func:`_passes`) proves a
signature good with dkimpy's own tag parsing and checks (``parse_tag_value``,
``validate_signature_fields``, ``evaluate_pk``) and with equivalents of its
message parse, canonicalization, header selection and ``b=`` removal that do
less work (each checked equal to dkimpy's on the corpus and on random input,
see the commits), the RSA verification in OpenSSL (``cryptography``) instead
of dkimpy's Python integers, key records parsed once per record (not per
message) and the body canonicalized once per message.  It only ever answers
"pass"; anything else — a failure, an error, an unusual tag (``l=``,
rsa-sha1), a short key — goes to dkimpy's ``verify()``, whose outcome is
mapped to a result as before, with the key record fetched once per message
for both paths.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import dkim
import dkim.util
import dns.exception
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mattermail.dns import Resolver, TempError
from mattermail.milter.verdicts import DKIMResult

__all__ = ["verify_dkim"]


class _KeyTempError(Exception):
    """A key lookup failed temporarily (raised through dkimpy, which lets it pass)."""


_SIG_HEADER_RE = re.compile(rb"^DKIM-Signature[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


_TAG_RES = {name: re.compile(rb"(?:^|;)\s*" + name.encode() + rb"\s*=\s*([^;]*)") for name in ("d", "s", "a")}
_SPACES = re.compile(r"\s+")


def _tag(sig: bytes, name: str) -> str:
    """One tag of a signature that may not parse as a whole (best effort, for reporting)."""
    m = _TAG_RES[name].search(sig)
    return _SPACES.sub("", m.group(1).decode("ascii", "replace")) if m else ""


def _sig_tags(value: bytes) -> tuple[str, str, str]:
    """(d=, s=, a=) of a signature header value."""
    return _tag(value, "d"), _tag(value, "s"), _tag(value, "a")


# Why a signature or key was unusable, in words of our own: dkimpy's messages quote the
# sender's tag values, which must not reach our Authentication-Results (see _reason below).
_SIG_ERRORS: tuple[tuple[str, str], ...] = (
    ("unknown signature algorithm", "unsupported signature algorithm (a=)"),
    ("b= value is not valid base64", "b= is not valid base64"),
    ("bh= value is not valid base64", "bh= is not valid base64"),
    ("cv= value", "invalid cv="),
    ("d= value is not valid", "d= is not a valid domain"),
    ("i= domain is not a subdomain of d=", "i= is not within d="),
    ("l= value", "l= is not a number"),
    ("q= value", "unsupported query method (q=)"),
    ("t= value is not", "t= is not a number"),
    ("t= value is in the future", "t= is in the future"),
    ("v= value", "unsupported version (v=)"),
    ("x= value is not", "x= is not a number"),
    ("x= value is less than t=", "x= is before t="),
    ("tlsrpt", "key is for TLS reports only (s=tlsrpt)"),
    ("invalid c= value", "unsupported canonicalization (c=)"),
)
_KEY_ERRORS: tuple[tuple[str, str], ...] = (
    ("missing public key", "key record not found"),
    ("bad version", "key record is not v=DKIM1"),
    ("incomplete rsa public key", "key record has no p="),
    ("could not parse", "public key data cannot be parsed"),
    ("unknown algorithm in k=", "unsupported key type (k=)"),
    ("digest too large for modulus", "key too small for the signature"),
)
_SIG_TAGS = frozenset({"v", "a", "b", "bh", "d", "h", "s", "i", "l", "q", "t", "x", "c", "z"})


def _reason(e: object, table: tuple[tuple[str, str], ...], default: str) -> str:
    """The fixed phrase for a dkimpy error message (matched on dkimpy's own wording)."""
    text = str(e).lower()
    m = re.match(r"missing b?'?(\w+)'?=", text)
    if m:
        return f"signature has no {m.group(1)}=" if m.group(1) in _SIG_TAGS else "signature lacks a required tag"
    return next((phrase for needle, phrase in table if needle in text), default)


def _key_problem(record: bytes | None) -> str:
    """Why a key record is unusable ("" when it looks usable)."""
    if not record:
        return "key record not found"
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return "key record syntax error"
    if not re.sub(rb"\s+", b"", tags.get(b"p", b"")):
        return "key revoked (empty p=)"
    try:
        dkim.evaluate_pk(b"key", record)
    except (dkim.KeyFormatError, binascii.Error) as e:
        return "unusable key: " + _reason(e, _KEY_ERRORS, "key record cannot be used")
    return ""


def _temp_reason(e: TempError) -> str:
    return ("DNS timeout looking up the key" if "timed out" in str(e).lower() or "timeout" in str(e).lower()
            else "DNS server failure looking up the key")


# --- the fast path --------------------------------------------------------------------

_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())
_FAST_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")
_H_SEPARATOR = re.compile(rb"\s*:\s*")  # between h= names, as dkimpy splits them
_WSP_RUN = re.compile(rb" [ \t]+|\t[ \t]*")  # what [\t ]+ -> " " changes (a lone space stays)
# dkim.RE_BTAG (b= and its value, emptied before hashing the signature field) with its value part,
# (FWS base64-char)*, written as the same language without nested groups: FWS is any run of \s.
_BTAG = re.compile(rb"([;\s]b(?:(?:\s*\r?\n)?\s+)?=)(?:[a-zA-Z0-9+/=\s]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
_LINE_END = re.compile(rb"\r?\n")
_END_OF_HEADER = re.compile(rb"\n\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


# A whole header field of a header block with CRLF line ends only: the name up to its first colon
# (printable, no space), the value with its folded lines and each line's CRLF, as dkimpy keeps it.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):([^\n]*\n(?:[ \t][^\n]*\n)*)")


def _parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(message)``, faster: only the header block is cut into fields (in one
    regex pass when every line ends in CRLF: the fields are then slices of it), and the body is
    rebuilt only when it has a bare LF (dkimpy joins its lines with CRLF)."""
    end = _END_OF_HEADER.search(message)
    if end is None or message.startswith((b"\n", b"\r\n")):  # no body, or no header: dkimpy's own walk
        return dkim.rfc822_parse(message)
    block = message[: end.start() + 1]
    headers: list[list[bytes]] = []
    if block.count(b"\n") == block.count(b"\r\n"):
        headers = [[n, v] for n, v in _FIELD.findall(block)]
        if sum(len(n) + len(v) + 1 for n, v in headers) != len(block):  # a line that is no field: walk it
            headers = []
    if not headers:
        for line in _LINE_END.split(block)[:-1]:  # no empty line before ``end``
            if line[0] in (0x09, 0x20):
                headers[-1][1] += line + b"\r\n"  # IndexError on a leading folded line, as in dkimpy
                continue
            name = _FIELD_NAME.match(line)
            if name is not None:
                headers.append([name.group(1), line[name.end(0):] + b"\r\n"])
            elif not line.startswith(b"From "):
                raise dkim.MessageFormatError("Unexpected characters in RFC822 header")
    body = message[end.end():]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = b"\r\n".join(_LINE_END.split(body))
    return headers, body


@functools.lru_cache(maxsize=1024)
def _key(record: bytes) -> tuple[Any, int, bytes, bool, rsa.RSAPublicKey | None] | None:
    """dkimpy's reading of a key record (evaluate_pk), plus the RSA key for OpenSSL; None: not usable."""
    try:
        pk, keysize, ktag, tlsrpt = dkim.evaluate_pk(b"key", record)
        ossl = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key() if ktag == b"rsa" else None
    except Exception:  # any problem: dkimpy's path says which
        return None
    return pk, keysize, ktag, tlsrpt, ossl


def _relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalization; the two substitutions only where they change something."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        body = _WSP_RUN.sub(b" ", dkim.canonicalization.strip_trailing_whitespace(body))
    return dkim.canonicalization.correct_empty_body(dkim.canonicalization.strip_trailing_lines(body))


def _relaxed_header(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """dkimpy's relaxed header canonicalization (unfold, compress WSP, strip), without re per call."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")  # = re.sub(b"\r?\n", b"", value)
    if b"\t" in value or b"  " in value:  # a run of WSP to compress
        if b"\r" in value or b"\x0b" in value or b"\x0c" in value:  # whitespace that is no WSP: as dkimpy
            value = _WSP_RUN.sub(b" ", value)
        else:  # only spaces and tabs are whitespace here: compressing their runs and stripping is split/join
            return name.lower().rstrip(), b" ".join(value.split()) + b"\r\n"
    return name.lower().rstrip(), value.strip() + b"\r\n"


def _header_digest(relaxed: bool, headers: Sequence[Sequence[bytes]], include: list[bytes],
                   sig_header: tuple[bytes, bytes]) -> bytes:
    """SHA-256 over what dkimpy's hash_headers feeds its hasher: the signed fields (chosen by
    dkim.select_headers, bottom up), then the signature field with b= emptied, without its CRLF.
    Only the fields it can choose are canonicalized (selection is by lower-cased name)."""
    below: dict[bytes, list[Sequence[bytes]]] = {name: [] for name in include}
    for h in headers:  # dkim.select_headers: each name in h= takes the next field of that name, bottom up
        name = h[0].lower()
        if name in below:
            below[name].append(h)
    chosen = [below[name].pop() for name in include if below[name]]
    sig_value = _BTAG.sub(b"\\1", sig_header[1])
    if relaxed:
        chosen = [_relaxed_header(n, v) for n, v in chosen]
        sig_name, sig_value = _relaxed_header(sig_header[0], sig_value)
    else:
        sig_name = sig_header[0]
    return hashlib.sha256(b"".join([n + b":" + v for n, v in chosen] + [sig_name + b":" + sig_value.rstrip()])).digest()


_MANDATORY = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # dkimpy's mandatory_fields
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_D_SPECIALS = b"()<>[]:;@\\,"
_CLOCK_SLOP = 36000  # dkimpy's leeway for t= and x= (10 hours)


def _packed(value: bytes) -> bytes:
    """``value`` without whitespace (``re.sub(rb"\\s+", b"", value)``: bytes.split() splits on the same six)."""
    return b"".join(value.split())


def _base64_ok(value: bytes) -> bool:
    """What dkimpy's check of b= (and bh=) accepts, or less: base64 characters, then padding, with
    whitespace anywhere, a multiple of four characters without it."""
    packed = _packed(value)
    data = packed.rstrip(b"=")
    return bool(data) and not data.translate(None, _BASE64) and len(packed) % 4 == 0


def _fast_tags(value: bytes) -> dict[bytes, bytes] | None:
    """``dkim.util.parse_tag_value(value)`` when ``dkim.validate_signature_fields`` accepts it, without
    their regular expressions; None for anything it would refuse and for anything unusual (a tag
    dkimpy may accept but the fast path leaves to it: cv=, l=, a non-ASCII d=, a doubtful i=), and
    for anything that raises (a t= too long for int())."""
    try:
        return _read_tags(value)
    except Exception:  # dkimpy's path says what is wrong
        return None


def _read_tags(value: bytes) -> dict[bytes, bytes] | None:
    tags: dict[bytes, bytes] = {}
    specs = value.strip().split(b";")
    if not specs[-1]:  # trailing semicolons are valid
        specs.pop()
    for spec in specs:
        key, eq, tag_value = spec.partition(b"=")
        key = key.strip()
        if not eq or not key[:1].isalpha() or key in tags:  # parse_tag_value's ^[a-zA-Z], no duplicates
            return None
        tags[key] = tag_value.strip()
    if any(k not in tags for k in _MANDATORY) or tags[b"v"] != b"1" or tags[b"a"] not in _FAST_ALGORITHMS:
        return None
    if not _base64_ok(tags[b"b"]) or not _base64_ok(tags[b"bh"]) or b"cv" in tags or b"l" in tags:
        return None
    d = tags[b"d"]
    if not d.isascii() or len(d.translate(None, _D_SPECIALS)) != len(d):
        return None
    i = tags.get(b"i")
    if i is not None and not (len(i) > len(d) and i.lower().endswith(d.lower()) and i[-len(d) - 1] in (64, 46)):
        return None
    if tags.get(b"q", b"dns/txt") != b"dns/txt":
        return None
    now = int(time.time())
    t, x = tags.get(b"t"), tags.get(b"x")
    if t is not None and not (t.isdigit() and int(t) <= now + _CLOCK_SLOP):
        return None
    if x is not None and not (x.isdigit() and int(x) >= now - _CLOCK_SLOP and (t is None or int(x) >= int(t))):
        return None
    return tags


def _text(tags: dict[bytes, bytes], name: bytes) -> str:
    """A tag as :func:`_tag` reads it from the signature (the value without any whitespace)."""
    return _SPACES.sub("", tags[name].decode("ascii", "replace"))


def _passes(sig: dict[bytes, bytes] | None, sig_header: tuple[bytes, bytes], headers: Sequence[Sequence[bytes]], body: bytes,
            body_hashes: dict[bytes, bytes], lookup: Callable[[bytes], bytes | None], min_rsa_bits: int) -> bool:
    """True when the signature (its tags read by :func:`_fast_tags`) verifies exactly as dkimpy's
    ``verify()`` would say True; False: ask dkimpy."""
    try:
        if sig is None:
            return False
        policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        record = lookup(sig[b"s"] + b"._domainkey." + sig[b"d"] + b".")
        key = _key(record) if record else None
        if key is None:
            return False
        pk, keysize, ktag, tlsrpt, ossl = key
        if tlsrpt or (ktag == b"rsa" and (keysize < min_rsa_bits or ossl is None)):
            return False
        algorithm = policy.body_algorithm.name
        if algorithm not in body_hashes:
            canonical = _relaxed_body(body) if algorithm == b"relaxed" else policy.canonicalize_body(body)
            body_hashes[algorithm] = hashlib.sha256(canonical).digest()
        if body_hashes[algorithm] != base64.b64decode(_packed(sig[b"bh"])):
            return False
        include = [x.lower() for x in _H_SEPARATOR.split(sig[b"h"])]
        if b"from" in include:  # as dkimpy does (its bug#644046): any extra From is signed too
            include.append(b"from")
        digest = _header_digest(policy.header_algorithm.name == b"relaxed", headers, include, sig_header)
        signature = base64.b64decode(_packed(sig[b"b"]))
        if ktag == b"rsa":
            ossl.verify(signature, digest, _PKCS1, _PREHASHED_SHA256)
        elif ktag == b"ed25519":
            pk.verify(digest, signature)
        else:
            return False
    except Exception:  # a mismatch (InvalidSignature, nacl's BadSignatureError), a key lookup's
        return False  # _KeyTempError, malformed input of any kind: dkimpy's path says which
    return True


def verify_dkim(raw: bytes, resolver: Resolver, min_rsa_bits: int = 1024) -> list[DKIMResult]:
    """Verify every ``DKIM-Signature`` of ``raw`` (top to bottom); [] when there is none.

    dkimpy's ``verify()`` checks only one signature, so each is verified with
    ``verify(idx=i)``.  dkimpy swallows key-lookup problems into ``False``, so
    the key is fetched through our own ``dnsfunc``: a temporary DNS failure is
    raised as :class:`_KeyTempError` (dkimpy lets unknown exceptions through)
    and reported as ``temperror``; a missing, revoked or unparsable key is
    ``permerror``; a body hash or signature mismatch, or an expired signature
    (``x=`` past), ``fail``; a malformed signature ``neutral``; a valid
    signature made with an RSA key shorter than ``min_rsa_bits``, or with
    rsa-sha1 (RFC 8301), ``policy``.

    Every ``reason`` is a phrase of our own (``_SIG_ERRORS``, ``_KEY_ERRORS``):
    never text from the signature, which the sender wrote.
    """
    headers_end = _END_OF_HEADER.search(raw)  # where _parse ends the header block
    header_block = raw[: headers_end.start() + 1] if headers_end else raw
    if b"dkim-signature" not in header_block.lower():  # no field can be one: nothing to check
        return []
    try:
        headers, body = _parse(raw)  # as dkimpy's DKIM(raw) parses it
    except (dkim.DKIMException, IndexError, ValueError):  # dkimpy's parser trips on a leading folded line
        return [DKIMResult("permerror", *_sig_tags(v)[:2], "message header cannot be parsed", _sig_tags(v)[2])
                for v in (m.group(1) for m in _SIG_HEADER_RE.finditer(header_block))]
    sig_headers = [(n, v) for n, v in headers if n.lower() == b"dkim-signature"]
    if not sig_headers:
        return []
    fetched: dict[str, bytes | None] = {}
    answers: dict[bytes, bytes | None | str] = {}  # key name -> record, or why the lookup failed: one query each

    def lookup(name: bytes) -> bytes | None:
        if name not in answers:
            try:
                records = resolver.txt(name.decode("ascii").rstrip("."))
            except TempError as e:
                records = _temp_reason(e)
            except (UnicodeError, ValueError, dns.exception.DNSException):  # not a valid DNS name: no key
                records = []
            answers[name] = records if isinstance(records, str) else (
                records[0].encode("utf-8", "surrogateescape") if records else None)
        value = answers[name]
        if isinstance(value, str):
            raise _KeyTempError(value)
        return value

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        fetched["key"] = value = lookup(name)
        return value

    body_hashes: dict[bytes, bytes] = {}
    verifier: dkim.DKIM | None = None
    results = []
    for i, (name, value) in enumerate(sig_headers):
        tags = _fast_tags(value)
        if _passes(tags, (name, value), headers, body, body_hashes, lookup, min_rsa_bits):
            assert tags is not None
            results.append(DKIMResult("pass", _text(tags, b"d"), _text(tags, b"s"), "", _text(tags, b"a")))
            continue
        d, s, a = _sig_tags(value)
        fetched.clear()
        try:
            verifier = verifier or dkim.DKIM(raw, minkey=min_rsa_bits)
            ok = verifier.verify(idx=i, dnsfunc=dnsfunc)
        except _KeyTempError as e:
            results.append(DKIMResult("temperror", d, s, str(e), a))
            continue
        except dkim.KeyFormatError as e:
            m = re.search(r"public key too small: (\d+)", str(e))
            why = (f"RSA key of {m.group(1)} bits is shorter than the {min_rsa_bits} bits required (RFC 8301)"
                   if m else "unusable key: " + _reason(e, _KEY_ERRORS, "key record cannot be used"))
            results.append(DKIMResult("policy" if m else "permerror", d, s, why, a))
            continue
        except dkim.UnknownKeyTypeError:  # dkimpy's sign of a key record for another service (s=)
            results.append(DKIMResult("permerror", d, s, "unusable key: not for email (s=)", a))
            continue
        except dkim.ValidationError as e:
            if "body hash mismatch" in str(e):
                results.append(DKIMResult("fail", d, s, "body hash did not verify", a))
            elif "x= value is past" in str(e):
                results.append(DKIMResult("fail", d, s, "signature expired (x= is past)", a))
            else:
                results.append(DKIMResult("neutral", d, s, _reason(e, _SIG_ERRORS, "signature syntax error"), a))
            continue
        except dkim.MessageFormatError as e:
            results.append(DKIMResult("neutral", d, s, _reason(e, _SIG_ERRORS, "signature is not a valid tag list"), a))
            continue
        except binascii.Error:
            results.append(DKIMResult("neutral", d, s, "b= or bh= is not valid base64", a))
            continue
        except KeyError:
            results.append(DKIMResult("neutral", d, s, "signature lacks a required tag", a))
            continue
        except (dkim.DKIMException, ValueError, IndexError, TypeError) as e:  # dkimpy tripping on odd input
            results.append(DKIMResult("neutral", d, s, "signature cannot be processed: "
                                      + type(e).__name__.replace("Error", " error").lower().strip(), a))
            continue
        if ok and a.lower() == "rsa-sha1":
            results.append(DKIMResult("policy", d, s, "rsa-sha1 signatures are not accepted (RFC 8301)", a))
        elif ok:
            results.append(DKIMResult("pass", d, s, "", a))
        else:
            problem = _key_problem(fetched.get("key")) if "key" in fetched else ""
            results.append(DKIMResult("permerror", d, s, problem, a) if problem
                           else DKIMResult("fail", d, s, "signature did not verify", a))
    return results
