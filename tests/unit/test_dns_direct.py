"""mattermail.dns.Resolver with one nameserver and no cache: one UDP exchange per query,
the same answers as dnspython's resolve(), which still handles everything unusual."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import dns.resolver
import pytest
from dnslib.server import DNSServer

from mattermail.config import DNS
from mattermail.dns import Resolver, TempError
from mattermail_dev.devdns import ZoneDirResolver, _QuietLogger, free_port, serve

ZONE = """$ORIGIN direct.test.
$TTL 300
@ IN SOA ns.direct.test. h.direct.test. ( 1 3600 600 86400 300 )
@ IN TXT "v=spf1 -all"
@ IN MX 10 mx.direct.test.
mx IN A 192.0.2.25
mx IN AAAA 2001:db8::25
alias IN CNAME direct.test.
big IN TXT "{big}" "{big}" "{big}"
a.b IN A 192.0.2.1
"""


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("direct")
    (d / "direct.test.zone").write_text(ZONE.format(big="x" * 250), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def port(zones: Path) -> Iterator[int]:
    p = free_port()
    servers = serve(zones, "127.0.0.1", p)
    yield p
    for s in servers:
        s.stop()


def direct(port: int, timeout: float = 2.0) -> Resolver:
    return Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=timeout, cache_size=0))


QUESTIONS = [("direct.test", "TXT"), ("direct.test", "MX"), ("mx.direct.test", "A"), ("mx.direct.test", "AAAA"),
             ("alias.direct.test", "TXT"), ("nx.direct.test", "TXT"), ("mx.direct.test", "TXT"),
             ("b.direct.test", "A"), ("big.direct.test", "TXT")]


def test_one_exchange_answers_as_resolve_does(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = {q: [r.to_text() for r in Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=2.0,
                                                    cache_size=100)).query(*q)] for q in QUESTIONS}
    assert wanted[("alias.direct.test", "TXT")] == ['"v=spf1 -all"']  # the CNAME is followed
    assert wanted[("nx.direct.test", "TXT")] == [] and wanted[("b.direct.test", "A")] == []
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", lambda *a, **k: pytest.fail("resolve() used"))
    r = direct(port)
    assert {q: [x.to_text() for x in r.query(*q)] for q in QUESTIONS} == wanted
    assert r.txt("big.direct.test") == ["x" * 750]


def test_a_dead_server_is_a_temperror_within_the_timeout(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        start = time.monotonic()
        with pytest.raises(TempError, match="timed out"):
            direct(silent.getsockname()[1], timeout=0.3).txt("direct.test")
        assert time.monotonic() - start < 0.9
    finally:
        silent.close()
    p = free_port()  # nothing listens: refused, and resolve() decides (a temperror too)
    with pytest.raises(TempError):
        direct(p, timeout=0.3).txt("direct.test")


class Fake:
    """A UDP server that answers each query with ``replies(query)`` (wire datagrams, in order)."""

    def __init__(self, port: int, replies) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.replies = replies
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            try:
                for wire in self.replies(dns.message.from_wire(data)):
                    self.sock.sendto(wire, peer)
            except OSError:  # closed meanwhile
                return

    def close(self) -> None:
        self.sock.close()


def test_only_a_reply_to_our_query_counts(zones: Path) -> None:
    def replies(q: dns.message.Message) -> list[bytes]:
        good = dns.message.make_response(q)
        good.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "TXT", '"real"'))
        forged = dns.message.make_response(q)
        forged.id = (q.id + 1) % 65536
        forged.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "TXT", '"forged"'))
        other_id = ((q.id + 1) % 65536).to_bytes(2, "big")
        return [other_id + b"not dns", forged.to_wire(), good.to_wire()]

    fake = Fake(0, replies)
    try:
        assert direct(fake.sock.getsockname()[1]).txt("direct.test") == ["real"]
    finally:
        fake.close()


def test_truncated_and_servfail_replies_go_to_resolve(zones: Path) -> None:
    p = free_port()
    tcp = DNSServer(ZoneDirResolver(zones), address="127.0.0.1", port=p, tcp=True, logger=_QuietLogger())
    tcp.start_thread()

    def truncated(q: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.TC
        return [r.to_wire()]

    fake = Fake(p, truncated)
    try:
        start = time.monotonic()
        assert direct(p).txt("direct.test") == ["v=spf1 -all"]  # resolve() retried over TCP
        assert time.monotonic() - start < 1.0  # at once, not after a timeout
    finally:
        fake.close()
        tcp.stop()

    def servfail(q: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.SERVFAIL)
        return [r.to_wire()]

    fake = Fake(0, servfail)
    try:
        with pytest.raises(TempError):
            direct(fake.sock.getsockname()[1], timeout=0.5).txt("direct.test")
    finally:
        fake.close()


def test_cached_answers_are_resolves_answers_without_resolve(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cache on, a repeated question (records, CNAME, NXDOMAIN, no data) is answered from
    dnspython's cache as resolve() answers it, without resolve()'s per-query machinery."""
    r = Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=2.0, cache_size=100))
    first = {q: [x.to_text() for x in r.query(*q)] for q in QUESTIONS}
    assert first[("alias.direct.test", "TXT")] == ['"v=spf1 -all"']
    assert first[("nx.direct.test", "TXT")] == [] and first[("mx.direct.test", "TXT")] == []
    asked: list[tuple] = []
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", lambda *a, **k: asked.append(a[1:3]) or pytest.fail("resolve()"))
    assert {q: [x.to_text() for x in r.query(*q)] for q in QUESTIONS} == first
    assert {q: [x.to_text() for x in r.query(q[0].upper() + ".", q[1])] for q in QUESTIONS} == first
    assert not asked
