"""DKIM verification (RFC 6376, RFC 8463) of every ``DKIM-Signature`` of a message.

dkimpy parses and verifies; every key lookup goes through our
:class:`~mattermail.dns.Resolver`, so a timeout or SERVFAIL is ``temperror``,
never ``fail`` or ``none``.  Every reason is a phrase of our own: never text
from the signature, which the sender wrote.
"""

from __future__ import annotations

import binascii
import re

import dkim
import dkim.util
import dns.exception

from mattermail.dns import Resolver, TempError
from mattermail.milter.verdicts import DKIMResult

__all__ = ["verify_dkim"]


class _KeyTempError(Exception):
    """A key lookup failed temporarily (raised through dkimpy, which lets it pass)."""


_SIG_HEADER_RE = re.compile(rb"^DKIM-Signature[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _tag(sig: bytes, name: str) -> str:
    """One tag of a signature that may not parse as a whole (best effort, for reporting)."""
    m = re.search(rb"(?:^|;)\s*" + name.encode() + rb"\s*=\s*([^;]*)", sig)
    return re.sub(r"\s+", "", m.group(1).decode("ascii", "replace")) if m else ""


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
    headers_end = re.search(rb"\r?\n\r?\n", raw)
    header_block = raw[: headers_end.start() + 1] if headers_end else raw
    found = [m.group(1) for m in _SIG_HEADER_RE.finditer(header_block)]
    if not found:
        return []
    try:
        verifier = dkim.DKIM(raw, minkey=min_rsa_bits)
    except (dkim.DKIMException, IndexError, ValueError):  # dkimpy's parser trips on a leading folded line
        return [DKIMResult("permerror", *_sig_tags(v)[:2], "message header cannot be parsed", _sig_tags(v)[2])
                for v in found]
    sigs = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    fetched: dict[str, bytes | None] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            qname = name.decode("ascii").rstrip(".")
            records = resolver.txt(qname)
        except TempError as e:
            raise _KeyTempError(_temp_reason(e)) from e
        except (UnicodeError, ValueError, dns.exception.DNSException):  # not a valid DNS name: no key
            records = []
        value = records[0].encode("utf-8", "surrogateescape") if records else None
        fetched["key"] = value
        return value

    results = []
    for i, value in enumerate(sigs):
        d, s, a = _sig_tags(value)
        fetched.clear()
        try:
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
