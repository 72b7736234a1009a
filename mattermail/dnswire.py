"""The common DNS reply read without dnspython's message machinery: a plain TXT answer.

:class:`~mattermail.dns.Resolver` asks for TXT records three times per inbound
message (SPF, the DKIM key, DMARC); dnspython's ``from_wire`` and ``Answer``
cost ~0.15 ms of CPU per reply.  :func:`plain_txt` reads the one shape that
almost every such reply has — NOERROR or NXDOMAIN, our question, an answer
section of TXT records for exactly the name asked (or none), nothing in the
authority and additional sections — and gives up (None) on everything else,
so dnspython reads those as before: CNAME chains, negative answers carrying
an SOA, EDNS, other rcodes, anything malformed.  Where it answers, it gives
what dnspython's ``Answer`` would hold: the records in order, duplicates
dropped (an rdataset is a set).
"""

from __future__ import annotations

import struct

__all__ = ["plain_txt", "TXT"]

TXT = 16
_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, TTL, rdlength


def _name(wire: bytes, at: int) -> tuple[bytes, int] | None:
    """(the name at ``at`` in wire form, lower-cased, offset after it), following compression
    pointers (each strictly backwards, as dnspython requires); None if malformed."""
    labels: list[bytes] = []
    end = -1
    size = 0
    while True:
        if at >= len(wire):
            return None
        n = wire[at]
        if n >= 0xC0:
            if at + 1 >= len(wire):
                return None
            target = ((n & 0x3F) << 8) | wire[at + 1]
            if target >= at:
                return None
            if end < 0:
                end = at + 2
            at = target
            continue
        if n > 63:  # 0x40 and 0x80 label types are obsolete or reserved
            return None
        label = wire[at: at + 1 + n]
        if len(label) != 1 + n:
            return None
        size += 1 + n
        if size > 255:
            return None
        labels.append(label.lower())
        at += 1 + n
        if n == 0:
            return b"".join(labels), (end if end >= 0 else at)


def plain_txt(wire: bytes, qname: bytes) -> list[tuple[bytes, ...]] | None:
    """The TXT records (each its strings) answering ``qname`` (wire form) in ``wire``, our reply
    to a TXT query, when the reply has the plain shape; [] for NXDOMAIN or no data; None: let
    dnspython read it."""
    if len(wire) < 12:
        return None
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
    rcode = flags & 0x0F
    if not flags & 0x8000 or flags & 0x7800 or flags & 0x0200 or rcode not in (0, 3) or qd != 1 or ns or ar:
        return None  # not a response, not QUERY, truncated, another rcode, or sections we leave to dnspython
    question = _name(wire, 12)
    if question is None or question[0] != qname.lower() or wire[question[1]: question[1] + 4] != b"\x00\x10\x00\x01":
        return None
    at = question[1] + 4
    if rcode == 3 and an:
        return None  # NXDOMAIN with answers (a CNAME chain): dnspython's
    records: list[tuple[bytes, ...]] = []
    for _ in range(an):
        owner = _name(wire, at)
        if owner is None or owner[0] != question[0] or owner[1] + _RR.size > len(wire):
            return None
        rtype, rclass, _ttl, length = _RR.unpack_from(wire, owner[1])
        at = owner[1] + _RR.size
        if rtype != TXT or rclass != _IN or at + length > len(wire) or not length:
            return None
        strings, end = [], at + length
        while at < end:
            n = wire[at]
            if at + 1 + n > end:
                return None
            strings.append(wire[at + 1: at + 1 + n])
            at += 1 + n
        record = tuple(strings)
        if record not in records:
            records.append(record)
    return records if at == len(wire) else None
