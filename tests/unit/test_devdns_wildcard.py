"""The dev DNS server's wildcards (RFC 4592): bench/inbound's uncached term publishes a name per
message as ``*.u.<domain>`` and ``*.u._domainkey.<domain>``; existing names keep their own answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from mattermail_dev.devdns import ZoneDirResolver

ZONE = """$ORIGIN wild.example.
$TTL 300
@       IN SOA ns.wild.example. hostmaster.wild.example. 1 3600 600 86400 300
@       IN TXT "v=spf1 ip4:192.0.2.1 -all"
s1._domainkey IN TXT "v=DKIM1; k=rsa; p=AAAA"
*.u     0 IN TXT "v=spf1 ip4:192.0.2.2 -all"
*.u._domainkey 0 IN TXT "v=DKIM1; k=rsa; p=BBBB"
"""


@pytest.fixture
def resolver(tmp_path: Path) -> ZoneDirResolver:
    (tmp_path / "wild.zone").write_text(ZONE, encoding="utf-8")
    return ZoneDirResolver(tmp_path)


def ask(r: ZoneDirResolver, name: str, qtype: str = "TXT") -> tuple[str, list[tuple[str, int, str]]]:
    reply = r.resolve(DNSRecord.question(name, qtype), None)
    return RCODE[reply.header.rcode], [(str(rr.rname), rr.ttl, str(rr.rdata)) for rr in reply.rr]


def test_a_name_below_a_wildcard_gets_its_records_under_its_own_name(resolver: ZoneDirResolver) -> None:
    assert ask(resolver, "p0001-3.u.wild.example") == (
        "NOERROR", [("p0001-3.u.wild.example.", 0, '"v=spf1 ip4:192.0.2.2 -all"')])
    assert ask(resolver, "a.b.u.wild.example")[1][0][0] == "a.b.u.wild.example."
    assert ask(resolver, "p0001.u._domainkey.wild.example") == (
        "NOERROR", [("p0001.u._domainkey.wild.example.", 0, '"v=DKIM1; k=rsa; p=BBBB"')])


def test_existing_names_and_other_branches_are_not_wildcarded(resolver: ZoneDirResolver) -> None:
    assert ask(resolver, "s1._domainkey.wild.example")[1] == [("s1._domainkey.wild.example.", 300, '"v=DKIM1; k=rsa; p=AAAA"')]
    assert ask(resolver, "s2._domainkey.wild.example") == ("NXDOMAIN", [])  # closest encloser _domainkey: no *
    assert ask(resolver, "nope.wild.example") == ("NXDOMAIN", [])
    assert ask(resolver, "u.wild.example") == ("NOERROR", [])  # the wildcard's parent: an empty non-terminal
    assert ask(resolver, "x.u.wild.example", "A") == ("NOERROR", [])  # the wildcard has no A: NODATA
