"""ARC (RFC 8617): whether a forwarder the admin trusts sealed a valid chain."""

from __future__ import annotations

import re
from collections.abc import Sequence

import dkim
import dns.exception

from mattermail.dns import Resolver, TempError
from mattermail.milter.authresults import authserv_id_of
from mattermail.milter.verdicts import ARCResult

__all__ = ["arc_trusted", "check_arc"]


def check_arc(raw: bytes, resolver: Resolver, trusted_ids: Sequence[str]) -> ARCResult:
    """The ARC chain of ``raw``, and the trusted authserv-id that sealed its newest set, if any.

    A forwarder (a mailing list, a forwarding service) that re-sends mail
    breaks SPF and often DKIM; when it recorded its own verdict in an ARC set
    and the chain validates (dkimpy's ``arc_verify``: every seal and message
    signature checks out), the admin may trust the newest set's authserv-id.
    No ``ARC-Seal`` (or nothing trusted) is "none"; any DNS or parse problem is
    "fail", never an error.
    """
    if not trusted_ids or b"arc-seal:" not in raw[:65536].lower():
        return ARCResult("none")
    trusted = {t.lower().rstrip(".") for t in trusted_ids}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = resolver.txt(name.decode("ascii").rstrip("."))
        except (TempError, UnicodeError, ValueError, dns.exception.DNSException):
            return None
        return records[0].encode("utf-8", "surrogateescape") if records else None

    try:
        cv, results, _ = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    except Exception:  # a malformed chain is an untrusted chain
        return ARCResult("fail")
    if cv != dkim.CV_Pass or not results:
        return ARCResult("fail")
    newest = max(results, key=lambda r: r.get("instance", 0))
    aar = (newest.get("aar-value") or b"").decode("utf-8", "replace")  # "i=1; authserv-id; results"
    authserv = authserv_id_of(re.sub(r"^\s*i\s*=\s*\d+\s*;", "", aar)).lower().rstrip(".")
    return ARCResult("pass", authserv if authserv in trusted else "")


def arc_trusted(raw: bytes, resolver: Resolver, trusted_ids: Sequence[str]) -> str | None:
    """The trusted authserv-id when ``raw`` carries a valid ARC chain sealed by one; else None."""
    return check_arc(raw, resolver, trusted_ids).trusted or None
