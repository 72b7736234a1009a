"""DNS questions sent ahead (Resolver.prefetch) and read at end of message: the same answers from
one query each, nothing left open, and every failure still a temperror or resolve()'s to decide."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
import dns.resolver
import Milter
import pytest
from Milter import testctx

from mattermail import config, dkimkeys
from mattermail.config import DNS
from mattermail.dns import Resolver, TempError
from mattermail.milter import prefetch
from mattermail.milter.app import MatterMilter
from mattermail.milter.dkim_sign import sign
from mattermail.milter.runtime import Runtime
from mattermail_dev.devdns import ZoneDirResolver, free_port, serve

from .test_dns_direct import Fake


class Counting(Fake):
    """test_dns_direct's Fake on a port of its own, answering every TXT question with one record and
    counting the questions by name; ``reply(query)`` may replace the answer (wire datagrams, [] for none)."""

    def __init__(self, reply=None) -> None:
        self.asked: Counter[str] = Counter()
        answer = reply or self.answer

        def counted(q: dns.message.Message) -> list[bytes]:
            self.asked[q.question[0].name.to_text().lower()] += 1
            return answer(q)

        super().__init__(0, counted)
        self.port = self.sock.getsockname()[1]

    @staticmethod
    def answer(q: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "TXT", f'"for {q.question[0].name}"'))
        return [r.to_wire()]

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 5
        while sum(self.asked.values()) < n:
            assert time.monotonic() < deadline, f"the server saw {dict(self.asked)}, not {n} questions"
            time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[Counting]:
    s = Counting()
    yield s
    s.close()


def resolver(port: int, cache_size: int = 0, timeout: float = 2.0, nameservers=("127.0.0.1",)) -> Resolver:
    return Resolver(DNS(nameservers=nameservers, port=port, timeout=timeout, cache_size=cache_size))


@pytest.mark.parametrize("cache_size", (0, 100))
def test_a_prefetched_question_is_answered_by_its_one_query(server: Counting, cache_size: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    r = resolver(server.port, cache_size)
    sent = r.prefetch([("a.pre.test", "TXT"), ("B.Pre.Test.", "TXT")])
    assert len(sent) == 2
    server.wait_for(2)  # both on their way before anyone asks
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", lambda *a, **k: pytest.fail("resolve() used"))
    monkeypatch.setattr(Resolver, "_exchange", lambda *a: pytest.fail("asked again instead of reading the reply"))
    assert r.txt("b.pre.test") == ["for B.Pre.Test."]  # names compare without case or the final dot
    assert r.txt("A.PRE.TEST") == ["for a.pre.test."]
    r.release(sent)
    assert server.asked == {"a.pre.test.": 1, "b.pre.test.": 1}
    if cache_size:  # kept in the cache as resolve() keeps answers: not asked again, not prefetched again
        assert r.txt("a.pre.test") == ["for a.pre.test."] and r.prefetch([("a.pre.test", "TXT")]) == []
        assert sum(server.asked.values()) == 2


def test_a_cached_answer_lasts_its_ttl_and_no_longer(server: Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked again and again, a cached question is answered without the network until its TTL (300 s)
    has passed, then asked again; neither sent ahead while it is cached nor once that has passed."""
    r = resolver(server.port, cache_size=100)
    assert [r.txt("ttl.pre.test") for _ in range(3)] == [["for ttl.pre.test."]] * 3
    assert [x.to_text() for x in r.query("ttl.pre.test", "TXT")] == ['"for ttl.pre.test."']
    assert r.prefetch([("ttl.pre.test", "TXT")]) == [] and server.asked == {"ttl.pre.test.": 1}
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 301)
    assert r.txt("ttl.pre.test") == ["for ttl.pre.test."]
    assert server.asked == {"ttl.pre.test.": 2}
    assert r.txt("ttl.pre.test") == ["for ttl.pre.test."] and server.asked == {"ttl.pre.test.": 2}


def test_what_no_one_read_is_closed_and_asked_again_later(server: Counting) -> None:
    r = resolver(server.port)
    mine = r.prefetch([("unread.pre.test", "TXT")])
    assert r.prefetch([("unread.pre.test", "TXT")]) == []  # on its way already: not sent twice
    r.release(mine)
    assert mine[0].sock.fileno() == -1 and not r._pending
    assert r.txt("unread.pre.test") == ["for unread.pre.test."]  # the usual exchange
    server.wait_for(2)
    assert server.asked == {"unread.pre.test.": 2}


def test_release_leaves_what_another_message_sent_since(server: Counting) -> None:
    r = resolver(server.port)
    first = r.prefetch([("shared.pre.test", "TXT")])
    assert r.txt("shared.pre.test")  # another session asked it: the first one's reply was read
    second = r.prefetch([("shared.pre.test", "TXT")])
    r.release(first)
    assert r._pending == {second[0].key: second[0]}
    r.release(second)
    assert not r._pending


def test_nothing_is_sent_ahead_with_several_nameservers_or_for_a_bad_name(server: Counting) -> None:
    assert resolver(server.port, nameservers=("127.0.0.1", "127.0.0.2")).prefetch([("x.pre.test", "TXT")]) == []
    r = resolver(server.port)
    assert r.prefetch([("a..b", "TXT"), ("x" * 64 + ".test", "TXT"), ("ok.pre.test", "NOSUCHTYPE")]) == []
    assert not server.asked


def test_a_prefetched_question_nobody_answers_is_a_temperror_within_the_timeout() -> None:
    silent = Counting(reply=lambda q: [])
    try:
        r = resolver(silent.port, timeout=0.3)
        r.prefetch([("silent.pre.test", "TXT")])
        start = time.monotonic()
        with pytest.raises(TempError, match="timed out"):
            r.txt("silent.pre.test")
        assert time.monotonic() - start < 0.9
        assert silent.asked == {"silent.pre.test.": 1}  # no second try after the timeout
    finally:
        silent.close()


def test_a_truncated_or_servfail_reply_to_a_prefetch_goes_the_usual_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def unusual(q: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(q)
        if q.question[0].name.labels[0] == b"tc":
            r.flags |= dns.flags.TC
        else:
            r.set_rcode(dns.rcode.SERVFAIL)
        return [r.to_wire()]

    fake = Counting(reply=unusual)
    try:
        r = resolver(fake.port, timeout=0.3)
        r.prefetch([("tc.pre.test", "TXT"), ("sf.pre.test", "TXT")])
        asked: list[str] = []
        real = dns.resolver.Resolver.resolve
        monkeypatch.setattr(dns.resolver.Resolver, "resolve",
                            lambda self, qname, *a, **k: asked.append(str(qname)) or real(self, qname, *a, **k))
        with pytest.raises(TempError):  # resolve(): TCP finds no server, then its own temperror
            r.txt("tc.pre.test")
        with pytest.raises(TempError):
            r.txt("sf.pre.test")
        assert asked == ["tc.pre.test.", "sf.pre.test."]
    finally:
        fake.close()


# -- what the milter asks ahead --------------------------------------------------------------------

def test_spf_lookups_name_the_mail_from_domain_or_the_helo_name() -> None:
    assert prefetch.spf_lookups("<news@Sender.Example>", "mail.x.test") == [("Sender.Example", "TXT")]
    assert prefetch.spf_lookups("", "mail.x.test.") == [("mail.x.test", "TXT")]
    assert prefetch.spf_lookups("", "[192.0.2.1]") == [] and prefetch.spf_lookups("root@localhost", "h") == []


def test_header_lookups_name_each_key_and_each_author_domains_dmarc_record() -> None:
    keys = [("Received", " from x"),
            ("DKIM-Signature", " v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n\td=Sender.example;"
                               " s = s2 ; h=from; bh=x; b=y"),
            ("DKIM-Signature", " v=1; a=rsa-sha256; d=sender.example; s=s1; h=from; bh=x; b=y"),
            ("DKIM-Signature", " v=1; a=rsa-sha256; b=no-domain")]
    assert prefetch.header_lookups([*keys, ("From", ' "a@b.test" <News@Sender.Example>')]) == [
        ("s2._domainkey.Sender.example", "TXT"), ("s1._domainkey.sender.example", "TXT"),
        ("_dmarc.sender.example", "TXT")]  # the address's domain, not the display name's
    # every author domain (the checks evaluate DMARC for each), as the checks spell them (A-labels)
    assert prefetch.header_lookups([("From", " a@one.test, B <b@Mächine.example>")]) == [
        ("_dmarc.one.test", "TXT"), ("_dmarc.xn--mchine-bua.example", "TXT")]
    # From fields the checks refuse before any DNS work get no DMARC question
    assert prefetch.header_lookups([*keys, ("From", " a@one.test"), ("From", " b@two.test")]) == [
        ("s2._domainkey.Sender.example", "TXT"), ("s1._domainkey.sender.example", "TXT")]
    assert prefetch.header_lookups([("From", " Undisclosed <MAILER-DAEMON>")]) == []


ZONE = """$ORIGIN sender.example.
$TTL 300
@ IN SOA ns.sender.example. h.sender.example. ( 1 3600 600 86400 300 )
@ IN TXT "v=spf1 ip4:192.0.2.7 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
{key}
"""


@pytest.fixture
def signed_mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[bytes, Counter]]:
    """A devdns serving sender.example (SPF, DMARC, an RSA key), counting the questions it gets, and
    a message signed with that key; the milter's runtime asks it with ``cache_size = 0``."""
    key = dkimkeys.SigningKey("sender.example", "s1", "rsa-sha256", dkimkeys.generate("rsa", 1024))
    owner, record = dkimkeys.dns_record(key.private_key, "s1", "sender.example")
    text = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    (tmp_path / "sender.example.zone").write_text(ZONE.format(key=f"{owner}. IN TXT {text}"), encoding="utf-8")
    asked: Counter = Counter()
    real = ZoneDirResolver.resolve

    def counting(self, request, handler):
        asked[str(request.q.qname).lower()] += 1
        return real(self, request, handler)

    monkeypatch.setattr(ZoneDirResolver, "resolve", counting)
    port = free_port()
    servers = serve(tmp_path, "127.0.0.1", port)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])
    MatterMilter.runtime = Runtime(config.from_dict({
        "store": {"path": str(tmp_path / "s.sqlite"), "messages_dir": str(tmp_path / "m")},
        "dkim": {"keys_dir": str(tmp_path / "keys")},
        "dns": {"nameservers": ["127.0.0.1"], "port": port, "timeout": 2.0, "cache_size": 0}}))
    Milter.factory = MatterMilter
    headers = [("From", " News <news@sender.example>"), ("To", " <alice@lawfirm.test>"), ("Subject", " hi")]
    body = b"hello\r\n" * 50
    sigs = sign(headers, body, [key], linesep="\r\n")
    raw = b"".join(f"{n}:{v}\r\n".encode() for n, v in [(n, " " + v) for n, v in sigs] + headers) + b"\r\n" + body
    yield raw, asked
    for s in servers:
        s.stop()


def test_the_milter_asks_each_question_once_and_ahead(signed_mail, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, asked = signed_mail
    monkeypatch.setattr(Resolver, "_exchange", lambda *a: pytest.fail("a question asked at end of message, not ahead"))
    for n in range(2):
        ctx = testctx.TestCtx()
        ctx._setsymval("i", f"4QPRE{n}")
        assert ctx._connect(ip="192.0.2.7", helo="mail.sender.example") == Milter.CONTINUE
        assert ctx._feedFile(io.BytesIO(raw), "news@sender.example", "alice@lawfirm.test") == Milter.ACCEPT
        ar = str(ctx._msg["Authentication-Results"])
        assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar, ar
        assert not MatterMilter.runtime.resolver._pending
    assert asked == {"sender.example.": 2, "s1._domainkey.sender.example.": 2, "_dmarc.sender.example.": 2}
