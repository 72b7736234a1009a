"""mattermail.milter.inbound (SPF, DKIM, DMARC, A-R, decision) against real DNS.

A devdns server on a free loopback port serves BIND zone files written under
tmp_path; DKIM keys come from mattermail.dkimkeys and messages are signed by
mattermail.milter.dkim_sign.  Third-party material from the corpus (the
``corpus`` fixture, tests/conftest.py): the stalwart and MimeKit DKIM messages
(with their DNS records) and the RFC 7208 SPF conformance suite.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import authres
import dkim
import authres.dmarc
import pytest
import yaml  # a test dependency (setup.cfg [test])
from dnslib import RR

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail_dev.devdns import free_port, serve
from mattermail.dns import Resolver, TempError
from mattermail.milter.dkim_sign import sign
from mattermail.milter.inbound import (
    DKIMResult,
    DMARCResult,
    InboundPolicy,
    SPFResult,
    authentication_results,
    check_dmarc,
    check_spf,
    decide,
    organizational_domain,
    strip_our_results,
    verify_dkim,
)

CLIENT = "192.0.2.10"
OTHER = "198.51.100.7"
RSA = dkimkeys.generate("rsa", 2048)
RSA1024 = dkimkeys.generate("rsa", 1024)
ED = dkimkeys.generate("ed25519")


@dataclass
class Env:
    zones: Path
    servers: list
    resolver: Resolver

    def zone(self, domain: str, body: str) -> None:
        """Write a BIND zone file for ``domain`` (names in ``body`` relative to it), atomically."""
        tmp = self.zones / f".{domain}.tmp"
        tmp.write_text(f"$ORIGIN {domain}.\n$TTL 300\n"
                       f"@ IN SOA ns.{domain}. hostmaster.{domain}. ( 1 3600 600 86400 300 )\n"
                       f"@ IN NS ns.{domain}.\nns IN A 192.0.2.53\n{body}\n", encoding="utf-8")
        tmp.replace(self.zones / f"{domain}.zone")

    def stop(self) -> None:
        for s in self.servers:
            if s.isAlive():
                s.stop()


def _start(zones: Path, timeout: float = 2.0) -> Env:
    zones.mkdir()
    port = free_port()
    return Env(zones, serve(zones, "127.0.0.1", port),
               Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=timeout, cache_size=0)))  # zones change per test


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One server for the module; every test uses domains of its own."""
    e = _start(tmp_path_factory.mktemp("inbound") / "zones")
    yield e
    e.stop()


@pytest.fixture
def dead(tmp_path: Path) -> Env:
    """A resolver whose server has been stopped: every lookup fails temporarily."""
    e = _start(tmp_path / "zones", timeout=0.5)
    e.stop()
    return e


def key_line(key: dkimkeys.PrivateKey, selector: str, domain: str) -> str:
    return dkimkeys.zone_line(*dkimkeys.dns_record(key, selector, domain))


def message(from_domain: str, keys: list[dkimkeys.SigningKey], body: bytes = b"Hello,\r\n\r\nSee you at 10.\r\n",
            tamper: bytes | None = None) -> bytes:
    """A raw CRLF message From ``from_domain``, signed with ``keys`` (body replaced by ``tamper`` after)."""
    headers = [("From", f"Alice <alice@{from_domain}>"), ("To", "bob@lawfirm.test"),
               ("Subject", "Matter 1234"), ("Date", "Mon, 1 Jan 2024 10:00:00 +0000"),
               ("Message-ID", f"<1@{from_domain}>")]
    sigs = sign(headers, body, keys, linesep="\r\n")
    head = "".join(f"{n}: {v}\r\n" for n, v in sigs + headers).encode()
    return head + b"\r\n" + (tamper if tamper is not None else body)


def spf_pass(domain: str) -> SPFResult:
    return SPFResult("pass", "mailfrom", domain, "")


def dkim_pass(domain: str) -> DKIMResult:
    return DKIMResult("pass", domain, "mm", "", "rsa-sha256")


# --- SPF ---------------------------------------------------------------------------

def test_spf_results(env: Env) -> None:
    env.zone("spf1.test", f'@ IN TXT "v=spf1 ip4:{CLIENT} -all"\n'
             f'soft IN TXT "v=spf1 ip4:{CLIENT} ~all"\nneutral IN TXT "v=spf1 ?all"\n'
             f'broken IN TXT "v=spf1 ip4:{CLIENT} frobnicate -all"\nnospf IN A {CLIENT}\n'
             f'mx IN A {CLIENT}\nviamx IN MX 10 mx.spf1.test.\nviamx IN TXT "v=spf1 mx -all"\n')
    r = check_spf(env.resolver, CLIENT, "alice@spf1.test", "mail.client.test", 5)
    assert (r.result, r.identity, r.domain) == ("pass", "mailfrom", "spf1.test")
    assert check_spf(env.resolver, OTHER, "<alice@spf1.test>", "mail.client.test", 5).result == "fail"
    assert check_spf(env.resolver, OTHER, "a@soft.spf1.test", "h.test", 5).result == "softfail"
    assert check_spf(env.resolver, OTHER, "a@neutral.spf1.test", "h.test", 5).result == "neutral"
    assert check_spf(env.resolver, CLIENT, "a@nospf.spf1.test", "h.test", 5).result == "none"
    assert check_spf(env.resolver, CLIENT, "a@nxdomain.spf1.test", "h.test", 5).result == "none"
    assert check_spf(env.resolver, CLIENT, "a@broken.spf1.test", "h.test", 5).result == "permerror"
    assert check_spf(env.resolver, CLIENT, "a@viamx.spf1.test", "h.test", 5).result == "pass"
    assert check_spf(env.resolver, f"IPv6:::ffff:{CLIENT}", "a@spf1.test", "h", 5).result in ("pass", "fail")


def test_spf_helo_identity_for_null_sender(env: Env) -> None:
    env.zone("spfhelo.test", f'mail IN A {CLIENT}\nmail IN TXT "v=spf1 a -all"\n'
             '@ IN TXT "v=spf1 -all"\n')
    for null in ("", "<>"):
        r = check_spf(env.resolver, CLIENT, null, "mail.spfhelo.test", 5)
        assert (r.result, r.identity, r.domain) == ("pass", "helo", "mail.spfhelo.test")
    r = check_spf(env.resolver, OTHER, "", "mail.spfhelo.test", 5)
    assert (r.result, r.identity) == ("fail", "helo")
    # With a MAIL FROM the HELO name plays no part.
    assert check_spf(env.resolver, CLIENT, "x@spfhelo.test", "mail.spfhelo.test", 5).result == "fail"
    assert check_spf(env.resolver, CLIENT, "", "", 5).result == "none"


def test_spf_time_budget(env: Env) -> None:
    """``timeout`` bounds the whole check: once spent, the next lookup gives temperror."""
    env.zone("spfslow.test", f'@ IN TXT "v=spf1 include:inc.spfslow.test -all"\ninc IN TXT "v=spf1 ip4:{CLIENT} -all"')
    assert check_spf(env.resolver, CLIENT, "a@spfslow.test", "h.test", 5).result == "pass"
    assert check_spf(env.resolver, CLIENT, "a@spfslow.test", "h.test", 1e-6).result == "temperror"


def test_spf_dns_failure_is_temperror(dead: Env) -> None:
    r = check_spf(dead.resolver, CLIENT, "alice@spf1.test", "mail.client.test", 3)
    assert r.result == "temperror" and r.identity == "mailfrom"
    assert check_spf(dead.resolver, CLIENT, "", "mail.spfhelo.test", 3).result == "temperror"


def _cached(env: Env, timeout: float = 2.0) -> Resolver:
    """A resolver with its cache on, asking ``env``'s DNS server."""
    return Resolver(DNS(nameservers=("127.0.0.1",), port=env.resolver.cfg.port, timeout=timeout, cache_size=100))


def _counting(monkeypatch: pytest.MonkeyPatch, cached: Resolver) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []
    real = Resolver.query
    monkeypatch.setattr(Resolver, "query", lambda self, name, rdtype: asked.append((name, rdtype)) or real(self, name, rdtype))
    return asked


def test_spf_result_is_kept_while_its_dns_answers_are_cached(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cache on, the same client, sender and HELO get the kept result without DNS or pyspf,
    until the first answer it was computed from expires (its TTL, 300 s here)."""
    env.zone("spfkeep.test", f'@ IN TXT "v=spf1 include:inc.spfkeep.test -all"\ninc IN TXT "v=spf1 ip4:{CLIENT} -all"')
    cached = _cached(env)
    asked = _counting(monkeypatch, cached)
    first = check_spf(cached, CLIENT, "a@spfkeep.test", "h.test", 5)
    assert first.result == "pass" and asked
    asked.clear()
    assert check_spf(cached, CLIENT, "a@spfkeep.test", "h.test", 5) == first and not asked
    assert check_spf(cached, OTHER, "a@spfkeep.test", "h.test", 5).result == "fail" and asked  # another client
    asked.clear()
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 301)  # every answer expired: asked and evaluated again
    assert check_spf(cached, CLIENT, "a@spfkeep.test", "h.test", 5) == first and asked


def test_spf_result_is_kept_for_the_domain_unless_a_record_reads_the_sender_or_helo(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another sender at the same domain, with any HELO name, gets the kept result (no DNS, no pyspf)
    unless a record the evaluation read has a macro of the sender, its local part or the HELO name
    (%{s}, %{l}, %{h}): then each sender and HELO is its own."""
    env.zone("spfdom.test", f'@ IN TXT "v=spf1 include:inc.spfdom.test -all"\ninc IN TXT "v=spf1 ip4:{CLIENT} -all"')
    env.zone("spfmacro.test", '@ IN TXT "v=spf1 exists:%{l}.ok.spfmacro.test -all"\nalice.ok IN A 127.0.0.2')
    env.zone("spfexp.test", f'@ IN TXT "v=spf1 ip4:{CLIENT} -all exp=why.spfexp.test"\n'
                            'why IN TXT "%{S} may not send from %{i}"')
    env.zone("spfhelo2.test", '@ IN TXT "v=spf1 exists:%{h}.ok.spfhelo2.test -all"\ngood.ok IN A 127.0.0.2')
    cached = _cached(env)
    asked = _counting(monkeypatch, cached)
    first = check_spf(cached, CLIENT, "alice@spfdom.test", "h.test", 5)
    assert first.result == "pass" and asked
    asked.clear()
    assert check_spf(cached, CLIENT, "bob@spfdom.test", "h.test", 5) == first and not asked
    assert check_spf(cached, CLIENT, "<carol@spfdom.test>", "h.test", 5) == first and not asked
    assert check_spf(cached, CLIENT, "dave@spfdom.test", "other.h.test", 5) == first and not asked
    assert check_spf(cached, OTHER, "bob@spfdom.test", "h.test", 5).result == "fail" and asked  # another client
    # %{l} decides: alice passes, bob fails, each evaluated
    assert check_spf(cached, CLIENT, "alice@spfmacro.test", "h.test", 5).result == "pass"
    asked.clear()
    assert check_spf(cached, CLIENT, "bob@spfmacro.test", "h.test", 5).result == "fail" and asked
    # %{h} decides: each HELO evaluated
    assert check_spf(cached, CLIENT, "alice@spfhelo2.test", "good", 5).result == "pass"
    asked.clear()
    assert check_spf(cached, CLIENT, "bob@spfhelo2.test", "bad", 5).result == "fail" and asked
    # %{S} in the explanation: each sender's own text
    alice = check_spf(cached, OTHER, "alice@spfexp.test", "h.test", 5)
    bob = check_spf(cached, OTHER, "bob@spfexp.test", "h.test", 5)
    assert (alice.result, bob.result) == ("fail", "fail") and "alice" in alice.explanation and "bob" in bob.explanation


def test_spf_temperror_is_not_kept(dead: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _cached(dead, timeout=0.3)
    asked = _counting(monkeypatch, cached)
    for _ in range(2):
        asked.clear()
        assert check_spf(cached, CLIENT, "alice@spf1.test", "h.test", 3).result == "temperror" and asked


# --- DKIM --------------------------------------------------------------------------

def test_dkim_rsa_and_ed25519_pass(env: Env) -> None:
    env.zone("dk1.test", key_line(RSA, "mm", "dk1.test") + "\n" + key_line(ED, "mme", "dk1.test"))
    keys = [dkimkeys.SigningKey("dk1.test", "mme", "ed25519-sha256", ED),
            dkimkeys.SigningKey("dk1.test", "mm", "rsa-sha256", RSA)]
    results = verify_dkim(message("dk1.test", keys), env.resolver)
    assert [(r.result, r.domain, r.selector, r.algorithm) for r in results] == [
        ("pass", "dk1.test", "mme", "ed25519-sha256"), ("pass", "dk1.test", "mm", "rsa-sha256")]
    # LF line ends (as a file on disk) verify too.
    assert [r.result for r in verify_dkim(message("dk1.test", keys).replace(b"\r\n", b"\n"), env.resolver)] == [
        "pass", "pass"]


def test_dkim_no_signature() -> None:
    assert verify_dkim(b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n", None) == []  # type: ignore[arg-type]


def test_dkim_body_modified_fails(env: Env) -> None:
    env.zone("dk2.test", key_line(RSA, "mm", "dk2.test"))
    raw = message("dk2.test", [dkimkeys.SigningKey("dk2.test", "mm", "rsa-sha256", RSA)], tamper=b"Pay now.\r\n")
    [r] = verify_dkim(raw, env.resolver)
    assert r.result == "fail" and "body hash" in r.reason


def test_dkim_two_signatures_one_broken(env: Env) -> None:
    # Selector "old" publishes a different key than the one that signed.
    env.zone("dk3.test", key_line(RSA, "mm", "dk3.test") + "\n" + key_line(RSA1024, "old", "dk3.test"))
    raw = message("dk3.test", [dkimkeys.SigningKey("dk3.test", "mm", "rsa-sha256", RSA),
                               dkimkeys.SigningKey("dk3.test", "old", "rsa-sha256", RSA)])
    results = verify_dkim(raw, env.resolver)
    assert [(r.result, r.selector) for r in results] == [("pass", "mm"), ("fail", "old")]
    assert results[1].reason == "signature did not verify"


def test_dkim_short_key_is_policy(env: Env) -> None:
    env.zone("dk4.test", key_line(RSA1024, "mm", "dk4.test"))
    raw = message("dk4.test", [dkimkeys.SigningKey("dk4.test", "mm", "rsa-sha256", RSA1024)])
    assert verify_dkim(raw, env.resolver)[0].result == "pass"
    [r] = verify_dkim(raw, env.resolver, min_rsa_bits=2048)
    assert r.result == "policy" and "1024 bits" in r.reason and "2048" in r.reason


def test_dkim_key_problems_are_permerror_and_say_what_is_wrong(env: Env) -> None:
    env.zone("dk5.test", 'revoked._domainkey IN TXT "v=DKIM1; k=rsa; p="\n'
             'junk._domainkey IN TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"\n'
             'v2._domainkey IN TXT "v=DKIM2; k=rsa; p=bm90IGEga2V5"\n'
             'kx._domainkey IN TXT "v=DKIM1; k=xyz; p=bm90IGEga2V5"\n'
             'tag._domainkey IN TXT "v=DKIM1; p"\n'
             + key_line(RSA, "web", "dk5.test").replace('"v=DKIM1;', '"v=DKIM1; s=web;') + "\n")
    expected = {"missing": "key record not found", "revoked": "key revoked (empty p=)",
                "junk": "unusable key: public key data cannot be parsed",
                "v2": "unusable key: key record is not v=DKIM1", "kx": "unusable key: unsupported key type (k=)",
                "web": "unusable key: not for email (s=)", "tag": "key record syntax error"}
    got = {}
    for sel in expected:
        raw = message("dk5.test", [dkimkeys.SigningKey("dk5.test", sel, "rsa-sha256", RSA)])
        [r] = verify_dkim(raw, env.resolver)
        got[sel] = (r.result, r.reason)
    assert got == {sel: ("permerror", why) for sel, why in expected.items()}


def test_dkim_malformed_signature_is_neutral(env: Env) -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=dk6.test; b=abc\r\nFrom: a@dk6.test\r\n\r\nx\r\n"
    [r] = verify_dkim(raw, env.resolver)
    assert (r.result, r.domain) == ("neutral", "dk6.test") and r.reason


def test_dkim_dns_failure_is_temperror(dead: Env) -> None:
    raw = message("dk1.test", [dkimkeys.SigningKey("dk1.test", "mm", "rsa-sha256", RSA)])
    [r] = verify_dkim(raw, dead.resolver)
    assert r.result == "temperror" and (r.domain, r.selector) == ("dk1.test", "mm")


# --- DMARC -------------------------------------------------------------------------

def test_organizational_domain() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.lawfirm.test") == "lawfirm.test"  # implicit "*" rule
    assert organizational_domain("Example.COM.") == "example.com"
    assert organizational_domain("co.uk") == "co.uk"
    # Suffixes added to the list after publicsuffix2's copy (2019): with that copy these gave
    # ai.vn and api.br, so every ai.vn sender would have aligned with every other.
    assert organizational_domain("mail.example.ai.vn") == "example.ai.vn"
    assert organizational_domain("a.b.shop.api.br") == "shop.api.br"
    assert organizational_domain("ai.vn") == "ai.vn"


def test_dmarc_pass_via_dkim_alignment(env: Env) -> None:
    env.zone("dm1.test", '_dmarc IN TXT "v=DMARC1; p=reject"')
    spf = SPFResult("fail", "mailfrom", "bounces.esp.test", "")
    r = check_dmarc("dm1.test", spf, "bounces.esp.test", [dkim_pass("esp.test"), dkim_pass("dm1.test")], env.resolver)
    assert (r.result, r.aligned_dkim, r.aligned_spf, r.policy, r.disposition) == ("pass", True, False, "reject", "none")
    assert decide(spf, r, InboundPolicy(spf_fail="reject")).action == "accept"  # DMARC pass overrides SPF fail


def test_dmarc_pass_via_spf_alignment(env: Env) -> None:
    env.zone("dm2.test", '_dmarc IN TXT "v=DMARC1; p=quarantine"')
    r = check_dmarc("dm2.test", spf_pass("bounce.dm2.test"), "bounce.dm2.test", [], env.resolver)
    assert (r.result, r.aligned_spf, r.aligned_dkim) == ("pass", True, False)
    # SPF passing for another domain does not align.
    r = check_dmarc("dm2.test", spf_pass("esp.test"), "esp.test", [], env.resolver)
    assert (r.result, r.disposition) == ("fail", "quarantine")


def test_dmarc_relaxed_and_strict_alignment(env: Env) -> None:
    env.zone("relaxed.test", '_dmarc IN TXT "v=DMARC1; p=reject"')
    env.zone("strict.test", '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"')
    assert check_dmarc("news.relaxed.test", SPFResult("none", "mailfrom", "x.test", ""), "x.test",
                       [dkim_pass("relaxed.test")], env.resolver).result == "pass"
    assert check_dmarc("relaxed.test", spf_pass("mail.relaxed.test"), "mail.relaxed.test", [],
                       env.resolver).result == "pass"
    r = check_dmarc("strict.test", spf_pass("mail.strict.test"), "mail.strict.test",
                    [dkim_pass("sub.strict.test")], env.resolver)
    assert (r.result, r.disposition) == ("fail", "reject")
    assert check_dmarc("strict.test", spf_pass("strict.test"), "strict.test", [], env.resolver).result == "pass"


def test_dmarc_subdomain_policy(env: Env) -> None:
    env.zone("spdom.test", '_dmarc IN TXT "v=DMARC1; p=none; sp=reject"\n'
             '_dmarc.own IN TXT "v=DMARC1; p=quarantine"')
    none = SPFResult("none", "mailfrom", "x.test", "")
    r = check_dmarc("deep.sub.spdom.test", none, "x.test", [], env.resolver)
    assert (r.result, r.org_domain, r.policy, r.disposition) == ("fail", "spdom.test", "reject", "reject")
    r = check_dmarc("spdom.test", none, "x.test", [], env.resolver)
    assert (r.policy, r.disposition) == ("none", "none")
    r = check_dmarc("own.spdom.test", none, "x.test", [], env.resolver)  # its own record wins; no sp=
    assert (r.policy, r.disposition) == ("quarantine", "quarantine")


def test_dmarc_reject_decision_names_domain(env: Env) -> None:
    env.zone("dm3.test", '_dmarc IN TXT "v=DMARC1; p=reject"')
    spf = SPFResult("fail", "mailfrom", "dm3.test", "")
    r = check_dmarc("dm3.test", spf, "dm3.test", [DKIMResult("fail", "dm3.test", "mm", "x", "rsa-sha256")],
                    env.resolver)
    assert (r.result, r.disposition) == ("fail", "reject")
    d = decide(spf, r, InboundPolicy())
    assert (d.action, d.smtp_code, d.xcode) == ("reject", "550", "5.7.1")
    assert d.text == "The domain dm3.test publishes a DMARC policy of reject and this message failed authentication"
    assert decide(spf, r, InboundPolicy(trusted_forwarder=True)).action == "tag"


def test_dmarc_quarantine_decision(env: Env) -> None:
    env.zone("dm4.test", '_dmarc IN TXT "v=DMARC1; p=quarantine; rua=mailto:d@dm4.test"')
    spf = SPFResult("softfail", "mailfrom", "dm4.test", "")
    r = check_dmarc("dm4.test", spf, "dm4.test", [], env.resolver)
    assert r.disposition == "quarantine"
    assert decide(spf, r, InboundPolicy()).action == "quarantine"
    assert decide(spf, r, InboundPolicy(dmarc_quarantine="tag")).action == "tag"


def test_dmarc_pct_sampling(env: Env) -> None:
    env.zone("pct.test", '_dmarc IN TXT "v=DMARC1; p=reject; pct=0"\n'
             '_dmarc.half IN TXT "v=DMARC1; p=quarantine; pct=50"')
    none = SPFResult("none", "mailfrom", "x.test", "")
    r = check_dmarc("pct.test", none, "x.test", [], env.resolver, rng=lambda: 0.0)
    assert (r.result, r.policy, r.disposition) == ("fail", "reject", "quarantine") and "pct=0" in r.reason
    assert check_dmarc("half.pct.test", none, "x.test", [], env.resolver, rng=lambda: 0.2).disposition == "quarantine"
    assert check_dmarc("half.pct.test", none, "x.test", [], env.resolver, rng=lambda: 0.7).disposition == "none"


def test_dmarc_no_invalid_and_multiple_records(env: Env) -> None:
    env.zone("dm5.test", '_dmarc.bad IN TXT "v=DMARC1; adkim=s"\n'
             '_dmarc.two IN TXT "v=DMARC1; p=none"\n_dmarc.two IN TXT "v=DMARC1; p=reject"\n'
             '_dmarc.other IN TXT "not dmarc"\n_dmarc.bogus IN TXT "v=DMARC1; p=bogus; rua=mailto:a@dm5.test"')
    none = SPFResult("none", "mailfrom", "x.test", "")
    r = check_dmarc("nodmarc.dm5.test", none, "x.test", [], env.resolver)
    assert (r.result, r.policy, r.disposition) == ("none", "", "none")
    assert check_dmarc("other.dm5.test", none, "x.test", [], env.resolver).result == "none"
    assert check_dmarc("bad.dm5.test", none, "x.test", [], env.resolver).result == "none"
    assert check_dmarc("two.dm5.test", none, "x.test", [], env.resolver).result == "permerror"
    r = check_dmarc("bogus.dm5.test", none, "x.test", [], env.resolver)  # RFC 7489 6.6.3: acts as p=none
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")
    assert decide(none, r, InboundPolicy()).action == "accept"
    assert check_dmarc("", none, "x.test", [], env.resolver).result == "permerror"


def test_dmarc_temperror(env: Env, dead: Env) -> None:
    none = SPFResult("none", "mailfrom", "x.test", "")
    r = check_dmarc("dm6.test", none, "x.test", [], dead.resolver)
    assert (r.result, r.disposition) == ("temperror", "none")
    d = decide(none, r, InboundPolicy())
    assert (d.action, d.smtp_code, d.xcode) == ("tempfail", "451", "4.4.3")
    assert decide(none, r, InboundPolicy(on_temperror="accept")).action == "tag"
    # A temporary DKIM failure of an aligned signature makes DMARC temperror, not fail.
    env.zone("dm7.test", '_dmarc IN TXT "v=DMARC1; p=reject"')
    temp = DKIMResult("temperror", "dm7.test", "mm", "timeout", "rsa-sha256")
    r = check_dmarc("dm7.test", none, "x.test", [temp], env.resolver)
    assert (r.result, r.disposition) == ("temperror", "none")


def test_decide_spf_rules() -> None:
    fail = SPFResult("fail", "mailfrom", "spf.test", "Mail from spf.test comes only from our servers %s")
    dm_none = DMARCResult("none", "spf.test", "spf.test", "", "none", False, False, "no record")
    assert decide(fail, dm_none, InboundPolicy(spf_fail="tag")).action == "tag"
    d = decide(fail, dm_none, InboundPolicy(spf_fail="reject"))
    assert (d.action, d.smtp_code, d.xcode) == ("reject", "550", "5.7.23")
    assert "spf.test" in d.text and "%" not in d.text and "only from our servers" in d.text
    assert decide(fail, dm_none, InboundPolicy(spf_fail="reject", trusted_forwarder=True)).action == "tag"
    temp = SPFResult("temperror", "mailfrom", "spf.test", "timeout")
    assert decide(temp, dm_none, InboundPolicy()).action == "tempfail"
    dm_pass = DMARCResult("pass", "spf.test", "spf.test", "reject", "none", False, True, "")
    assert decide(temp, dm_pass, InboundPolicy()).action == "accept"
    assert decide(spf_pass("spf.test"), dm_pass, InboundPolicy()).action == "accept"


def test_end_to_end_pipeline(env: Env) -> None:
    """SPF + DKIM + DMARC + A-R + decision over one signed message."""
    env.zone("e2e.test", f'@ IN TXT "v=spf1 ip4:{CLIENT} -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
             + key_line(ED, "mme", "e2e.test"))
    raw = message("e2e.test", [dkimkeys.SigningKey("e2e.test", "mme", "ed25519-sha256", ED)])
    spf = check_spf(env.resolver, OTHER, "alice@e2e.test", "h.test", 5)
    dk = verify_dkim(raw, env.resolver)
    dm = check_dmarc("e2e.test", spf, "e2e.test", dk, env.resolver)
    assert (spf.result, [r.result for r in dk], dm.result) == ("fail", ["pass"], "pass")
    assert decide(spf, dm, InboundPolicy(spf_fail="reject")).action == "accept"
    tampered = raw.replace(b"See you at 10.", b"See you at 11.")
    dm = check_dmarc("e2e.test", spf, "e2e.test", verify_dkim(tampered, env.resolver), env.resolver)
    assert decide(spf, dm, InboundPolicy()).action == "reject"


# --- Authentication-Results ---------------------------------------------------------

def test_authentication_results_round_trip() -> None:
    spf = SPFResult("pass", "mailfrom", "sender.test", "sender SPF authorized")
    dk = [DKIMResult("pass", "sender.test", "mm", "", "rsa-sha256"),
          DKIMResult("fail", "esp.test", "s1", "body hash did not verify", "ed25519-sha256")]
    dm = DMARCResult("pass", "sender.test", "sender.test", "reject", "none", True, True, "")
    value = authentication_results("mx.lawfirm.test", spf, dk, dm, CLIENT)
    assert value.startswith("mx.lawfirm.test;\n\t") and "\r" not in value
    assert all(len(line) < 200 for line in value.splitlines())
    assert authres.parse(f"Authentication-Results: {value}").authserv_id == "mx.lawfirm.test"  # folded is fine
    header = authres.all_features().parse_value(re.sub(r"\r?\n\t", " ", value))
    assert header.authserv_id == "mx.lawfirm.test"
    got = [(r.method, r.result) for r in header.results]
    assert got == [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("dmarc", "pass")]
    s, d1, d2, m = header.results
    assert s.smtp_mailfrom == "sender.test"
    assert (d1.header_d, d1.header_s, d1.header_a) == ("sender.test", "mm", "rsa-sha256")
    assert (d2.header_d, d2.reason) == ("esp.test", "body hash did not verify")
    assert m.header_from == "sender.test"
    # authres's parser drops comments: check those in the text.
    assert f"spf=pass (sender IP is {CLIENT})" in value and "dmarc=pass (p=reject dis=none)" in value


def test_authentication_results_helo_and_no_dkim() -> None:
    spf = SPFResult("temperror", "helo", "mail.sender.test", "timeout (x)")
    dm = DMARCResult("none", "sender.test", "sender.test", "", "none", False, False, "no record")
    value = authentication_results("mx.lawfirm.test", spf, [], dm, "2001:db8::1", linesep="\r\n")
    assert "\r\n\t" in value
    header = authres.all_features().parse_value(re.sub(r"\r?\n\t", " ", value))
    s, d, m = header.results
    assert (s.result, s.smtp_helo, d.method, d.result, m.result) == ("temperror", "mail.sender.test", "dkim",
                                                                     "none", "none")


def test_strip_our_results() -> None:
    ours = "mx.lawfirm.test"
    headers = [
        ("Received", "from x"),
        ("Authentication-Results", "mx.lawfirm.test; spf=pass smtp.mailfrom=evil.test"),  # 1: ours
        ("Authentication-Results", "mx.google.com; dkim=pass header.i=@gmail.com"),  # 2
        ("authentication-results", "  MX.LawFirm.Test 1 ; dkim=pass"),  # 3: case, version
        ("ARC-Authentication-Results", "i=1; mx.lawfirm.test; dmarc=pass"),
        ("Authentication-Results", "(forged)\r\n\tmx.lawfirm.test(c); dmarc=pass"),  # 4: comment first
        ("Authentication-Results", "mx.lawfirm.test.evil.test; spf=pass"),  # 5: someone else's
        ("Authentication-Results", "mx.lawfirm.test"),  # 6: malformed, ours
        ("Authentication-Results", '"mx.lawfirm.test"; none'),  # 7: quoted
        ("AUTHENTICATION-RESULTS", "\tmx.lawfirm.test.;spf=fail"),  # 8: trailing dot
        ("Authentication-Results", "lawfirm.test; spf=pass"),  # 9
        ("Authentication-Results", ""),  # 10: empty
        ("Authentication-Results", "mx.lawfirm.test/1; spf=pass"),  # 11: junk glued to our id
    ]
    assert strip_our_results(headers, ours) == [11, 8, 7, 6, 4, 3, 1]
    assert strip_our_results(headers, "MX.LAWFIRM.TEST") == [11, 8, 7, 6, 4, 3, 1]
    assert strip_our_results([("Subject", "mx.lawfirm.test")], ours) == []


# --- third-party corpus: DKIM -----------------------------------------------------

def _corpus_case(path: Path) -> tuple[list[tuple[str, str]], bytes]:
    """A stalwart resource: DNS lines ("name record") up to the first blank line, then the message."""
    head, raw = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)
    dns = [tuple(line.split(" ", 1)) for line in head.decode().splitlines() if line.strip()]
    return dns, raw  # type: ignore[return-value]


def _serve_keys(env: Env, name: str, records: list[tuple[str, str]]) -> None:
    """Publish DKIM key records (any owner names) in a zone file of their own."""
    lines = [dkimkeys.zone_line(owner, rec.strip()) for owner, rec in records]
    tmp = env.zones / f".{name}.tmp"
    tmp.write_text("$ORIGIN corpus.invalid.\n$TTL 300\n"
                   "@ IN SOA ns hostmaster ( 1 3600 600 86400 300 )\n" + "\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(env.zones / f"{name}.zone")


def _stalwart(corpus) -> list[Path]:
    return [p for p in corpus.files("dkim/stalwart/dkim") if p.suffix == ".txt"]


def test_corpus_stalwart_dkim(env: Env, corpus) -> None:
    outcome = {}
    stalwart = _stalwart(corpus)
    for path in stalwart:
        records, raw = _corpus_case(path)
        _serve_keys(env, f"stalwart-{path.stem}", records)
        outcome[path.name] = [r.result for r in verify_dkim(raw, env.resolver)]
    # Every signature in these real-world and RFC 8463 messages is good, except 005's,
    # whose x= expired in 2022 (stalwart verifies it at a fixed past time).
    assert outcome == {
        "001.txt": ["pass", "pass"],  # RFC 8463: Ed25519 and RSA
        "002.txt": ["pass"],  # simple/simple, PKCS#1 key
        "003.txt": ["pass", "pass"],  # mailing list, the same signature twice
        "004.txt": ["pass"], "005.txt": ["fail"], "006.txt": ["pass"],
    }, outcome
    records, raw = _corpus_case(stalwart[4])
    assert "expired" in verify_dkim(raw, env.resolver)[0].reason


def test_corpus_mimekit_dkim(env: Env, corpus) -> None:
    mimekit = corpus / "mime" / "mimekit" / "dkim"
    pem = (mimekit / "gmail.pub").read_text()
    p = "".join(line.strip() for line in pem.splitlines() if "-----" not in line)
    ed, rsa = [rec for _, rec in _corpus_case(_stalwart(corpus)[0])[0]]
    records = [("20120113._domainkey.gmail.com", f"v=DKIM1; k=rsa; p={p}"),
               ("brisbane._domainkey.football.example.com", ed), ("test._domainkey.football.example.com", rsa)]
    _serve_keys(env, "mimekit", records)
    got = {f: [r.result for r in verify_dkim((mimekit / f).read_bytes(), env.resolver)]
           for f in ("gmail.msg", "related.msg", "multipart-no-end-boundary.msg", "rfc8463-example.msg")}
    assert got["gmail.msg"] == ["pass"]
    assert got["related.msg"] == ["pass"]
    assert got["multipart-no-end-boundary.msg"] == ["pass"]
    assert got["rfc8463-example.msg"] == ["pass", "pass"]
    # Any change to a signed byte breaks them.
    broken = (mimekit / "gmail.msg").read_bytes().replace(b"Subject:", b"Subject: Re:", 1)
    assert [r.result for r in verify_dkim(broken, env.resolver)] == ["fail"]


# --- third-party corpus: the RFC 7208 SPF conformance suite ---------------------------

SPF_SUITE = "spf/rfc7208-tests.yml"
#: Measured 202/203 (99.5%): the one miss needs a name with spaces, which dnslib's zone
#: parser cannot express.  The floor leaves a little room.
SPF_MIN_PASS_RATE = 0.97


def _quote_txt(value: str | list[str]) -> str:
    strings = [value] if isinstance(value, str) else [str(v) for v in value]
    out = []
    for s in strings:
        b = s.encode("utf-8")
        chunks = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
        out += ['"' + c.decode("utf-8", "ignore").replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks]
    return " ".join(out)


@dataclass
class SuiteResolver(Resolver):
    """Our Resolver, plus the suite's simulated timeouts (a zone file cannot time out).

    ``timeouts`` maps a name to the query types that time out (None: all but
    ``served``, the types listed before a bare TIMEOUT, as the suite's own
    driver does); names under ``error.`` that the scenario lacks time out too.
    """

    timeouts: dict[str, tuple[set[str] | None, set[str]]] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)

    def query(self, name: str, rdtype: str) -> list:
        n = name.rstrip(".").lower()
        types, served = self.timeouts.get(n, (set(), set()))
        if (types is None and rdtype not in served) or (types and rdtype in types) or (
                n.startswith("error.") and n not in self.known):
            raise TempError(f"{rdtype} {name}: simulated timeout")
        return super().query(name, rdtype)


def _scenario_zone(zonedata: dict, omitted: list[str]) -> tuple[str | None, str, dict, set[str]]:
    """(zone file text, "", timeouts, names) for a scenario's zonedata, or (None, why, ...) when
    devdns cannot serve it.  Records whose owner name dnslib cannot parse are left out and
    their names appended to ``omitted``."""
    soa = "spf-suite.invalid. IN SOA ns.spf-suite.invalid. h.spf-suite.invalid. ( 1 3600 600 86400 300 )"
    lines = ["$ORIGIN .", "$TTL 300", soa]
    timeouts: dict[str, tuple[set[str] | None, set[str]]] = {}
    names = {str(n).rstrip(".").lower() for n in zonedata}
    for name, records in zonedata.items():
        owner = str(name).rstrip(".") + "."
        if "*" in owner:
            return None, "wildcard owner name", {}, names
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in records)
        seen: set[str] = set()
        for rec in records:
            if rec == "TIMEOUT":
                timeouts[owner[:-1].lower()] = (None, set(seen))
                break
            (rtype, value), = rec.items()
            if value == "TIMEOUT":
                timeouts.setdefault(owner[:-1].lower(), (set(), set()))[0].add(rtype)  # type: ignore[union-attr]
                continue
            if value == "NONE" or value == []:  # no record (a TXT record needs at least one string)
                continue
            seen.add(rtype)
            if rtype == "SPF":  # RFC 7208 checkers query TXT only; suite drivers copy SPF to TXT
                if has_txt:
                    continue
                rtype = "TXT"
            if rtype == "TXT":
                data = _quote_txt(value)
            elif rtype == "MX":
                data = f"{value[0]} {str(value[1]).rstrip('.')}."
            elif rtype in ("PTR", "CNAME"):
                data = str(value).rstrip(".") + "."
            elif rtype in ("A", "AAAA"):
                data = str(value)
            else:
                return None, f"record type {rtype}", {}, names
            line = f"{owner} IN {rtype} {data}"
            try:
                RR.fromZone(line)
            except Exception:  # noqa: BLE001 -- served as missing; the tests that query it may fail
                omitted.append(owner)
                continue
            lines.append(line)
    return "\n".join(lines) + "\n", "", timeouts, names


def test_spf_conformance_suite(tmp_path: Path, corpus) -> None:
    env = _start(tmp_path / "zones", timeout=1.0)
    resolver = SuiteResolver(env.resolver.cfg)
    passed, failed, skipped, omitted = [], [], Counter(), []
    try:
        for n, scenario in enumerate(yaml.safe_load_all((corpus / SPF_SUITE).read_text(encoding="utf-8"))):
            tests = scenario.get("tests", {})
            text, why, resolver.timeouts, resolver.known = _scenario_zone(scenario.get("zonedata") or {}, omitted)
            if text is None:
                skipped[why] += len(tests)
                continue
            for old in env.zones.glob("*.zone"):
                old.unlink()
            (env.zones / ".tmp").write_text(text, encoding="utf-8")
            (env.zones / ".tmp").replace(env.zones / f"scenario{n}.zone")
            for name, t in tests.items():
                expected = t["result"] if isinstance(t["result"], list) else [t["result"]]
                got = check_spf(resolver, t["host"], t["mailfrom"], t["helo"], 20).result
                (passed if got in expected else failed).append(f"{name}: {got} not in {expected}")
    finally:
        env.stop()
    total = len(passed) + len(failed)
    rate = len(passed) / total
    report = (f"SPF suite: {len(passed)}/{total} passed ({rate:.1%}), skipped {sum(skipped.values())}: "
              f"{dict(skipped)}; names dnslib cannot express (served as missing): {omitted}; failures: {failed}")
    print(report)
    assert total >= 200, report
    assert rate >= SPF_MIN_PASS_RATE, report


def test_arc_chain_from_a_trusted_forwarder(env):
    from cryptography.hazmat.primitives import serialization

    from mattermail.milter.inbound import arc_trusted

    key = dkimkeys.generate("rsa")
    owner, record = dkimkeys.dns_record(key, "arc", "forwarder.test")
    env.zone("forwarder.test", dkimkeys.zone_line(owner, record, ttl=300))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    msg = (b"Authentication-Results: mx.forwarder.test; spf=pass smtp.mailfrom=a@origin.test\r\n"
           b"From: a@origin.test\r\nTo: list@forwarder.test\r\nSubject: hi\r\n"
           b"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@origin.test>\r\n\r\nbody\r\n")
    sealed = b"".join(dkim.arc_sign(msg, b"arc", b"forwarder.test", pem, b"mx.forwarder.test")) + msg
    assert arc_trusted(sealed, env.resolver, ["MX.forwarder.test"]) == "mx.forwarder.test"
    assert arc_trusted(sealed, env.resolver, ["mx.other.test"]) is None
    assert arc_trusted(sealed.replace(b"body", b"bodY"), env.resolver, ["mx.forwarder.test"]) is None
    assert arc_trusted(msg, env.resolver, ["mx.forwarder.test"]) is None


# --- issue 11: authors, display names, hostile text in our Authentication-Results ----------

from mattermail.milter import author  # noqa: E402
from mattermail.milter.inbound import check_author, pvalue, quoted_value, strictest  # noqa: E402
from mattermail.milter.outbound import split_message  # noqa: E402

AUTHSERV = "mx.lawfirm.test"
FIRM = ("lawfirm.test",)


class NoDNS:
    """A resolver that answers every question with "no record", at once."""

    def txt(self, name: str) -> list[str]:
        return []


def parsed_ar(value: str) -> authres.AuthenticationResultsHeader:
    return authres.all_features().parse_value(re.sub(r"\r?\n\t", " ", value))


def assert_ar_as_decided(value: str, spf: SPFResult, dk: list[DKIMResult], dms: list[DMARCResult],
                         impersonated: str = "", where: str = "") -> None:
    """Our A-R parses with authres, and says exactly what we decided: nothing injected, nothing lost."""
    assert "\r" not in value.replace("\r\n\t", "") and all(len(line) < 998 for line in value.splitlines()), where
    header = parsed_ar(value)
    want = ([("spf", spf.result)] + ([("dkim", d.result) for d in dk] or [("dkim", "none")])
            + [("dmarc", d.result) for d in dms] + ([("x-display-name", "spoofed")] if impersonated else []))
    got = [(r.method, r.result) for r in header.results]
    assert header.authserv_id == AUTHSERV and got == want, (where, value, got)
    for r, d in zip(header.results[1:], dk):
        assert bool(r.reason) == bool(d.reason), (where, value)
        if d.domain and re.fullmatch(r"[A-Za-z0-9_.-]+", d.domain) and len(d.domain) <= 253 and ".." not in d.domain \
                and not d.domain.startswith((".", "-")):
            assert r.header_d == d.domain, (where, value)
    for r, d in zip(header.results[len(dk or [None]) + 1:], dms):
        assert r.method == "dmarc" and (not d.from_domain or r.header_from), (where, value)


HOSTILE = [
    "@x')dkim=pass header.d=paypal.com(",
    'say "hi" (there) \\ back\\slash',
    "line\r\ndkim=pass header.d=paypal.com",
    "ünïcode \udce9 and \x80\x00 bytes",
    "a" * 1000,
    "\\" * 1000,
    '"' * 1000,
    "x;dkim=pass",
    "; dmarc=pass header.from=paypal.com",
    "",
    "(",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_authentication_results_quotes_every_hostile_value(text: str) -> None:
    spf = SPFResult("softfail", "mailfrom", text or "x", "")
    dk = [DKIMResult("neutral", text, text, text, text), DKIMResult("fail", "ok.test", "s1", text, "rsa-sha256")]
    dm = [DMARCResult("permerror", text, "", "", "none", False, False, text),
          DMARCResult("fail", "ok.test", "ok.test", "reject", "reject", False, False, "")]
    value = authentication_results(AUTHSERV, spf, dk, dm, text)
    assert_ar_as_decided(value, spf, dk, dm, where=repr(text[:40]))
    helo = SPFResult("none", "helo", text or "[127.0.0.1]", "")
    assert_ar_as_decided(authentication_results(AUTHSERV, helo, [], dm[:1], "192.0.2.1"), helo, [], dm[:1])
    assert all(len(line) < 400 for line in value.splitlines()), value  # bounded (<= 2 values of 202), whatever came in


def test_quoted_value_and_pvalue() -> None:
    assert quoted_value("body-hash-did-not-verify") == "body-hash-did-not-verify"
    assert quoted_value("i= is not within d=") == '"i= is not within d="'
    assert quoted_value("@x')dkim=pass header.d=paypal.com(") == '"@x\')dkim=pass header.d=paypal.com("'
    assert quoted_value('a"b\\c\r\nd\x00é') == '"a\\"b\\\\c d??"'
    cut = quoted_value("\\" * 1000)
    assert cut == '"' + "\\\\" * 97 + '..."'  # cut before escaping: never half a quoted-pair
    assert len(quoted_value("x y" * 500)) == 102
    assert pvalue("example.test") == "example.test" and pvalue("bob@example.test") == "bob@example.test"
    assert pvalue("@example.test") == "@example.test"
    assert pvalue("[127.0.0.1]") == '"[127.0.0.1]"'
    assert pvalue('"a b"@example.test') == '"\\"a b\\"@example.test"'
    assert pvalue("paypal.com; dkim=pass") == '"paypal.com; dkim=pass"'


def test_dkim_tag_injection_stays_inside_a_quoted_reason(env: Env) -> None:
    """The probe's shape: text in i= must not become a dkim=pass of ours."""
    raw = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=x; i=@x')dkim=pass header.d=paypal.com(; "
           b"h=from; bh=AAAA; b=AAAA\r\nFrom: bob@example.test\r\nSubject: t\r\n\r\nhi\r\n")
    [r] = verify_dkim(raw, env.resolver)
    assert (r.result, r.domain, r.selector, r.reason) == ("neutral", "example.test", "x", "i= is not within d=")
    spf = SPFResult("pass", "mailfrom", "example.test", "")
    dm = [DMARCResult("none", "example.test", "example.test", "", "none", False, False, "")]
    value = authentication_results(AUTHSERV, spf, [r], dm, CLIENT)
    assert 'dkim=neutral reason="i= is not within d=" header.d=example.test header.s=x header.a=rsa-sha256' in value
    assert "paypal" not in value
    assert_ar_as_decided(value, spf, [r], dm)


@pytest.mark.parametrize(("sig", "reason"), [
    (b"v=1; a=rsa-sha256; d=dk7.test; h=from; bh=AAAA; b=AAAA", "signature has no s="),
    (b"v=1; a=rsa-md5; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA", "unsupported signature algorithm (a=)"),
    (b"v=2; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA", "unsupported version (v=)"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA; t=99999999999", "t= is in the future"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA; l=ten", "l= is not a number"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA; q=http", "unsupported query method (q=)"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA; c=odd/odd", "unsupported canonicalization (c=)"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; h=from; bh=AAAA; b=AAAA; x=1", "signature expired (x= is past)"),
    (b"v=1; a=rsa-sha256; d=dk7.test; s=x; s=y; h=from; bh=AAAA; b=AAAA", "signature is not a valid tag list"),
])
def test_dkim_reasons_name_the_problem_in_our_words(env: Env, sig: bytes, reason: str) -> None:
    env.zone("dk7.test", key_line(RSA, "x", "dk7.test"))  # some checks come after the key lookup
    [r] = verify_dkim(b"DKIM-Signature: " + sig + b"\r\nFrom: a@dk7.test\r\n\r\nx\r\n", env.resolver)
    assert r.reason == reason and r.result in ("neutral", "fail"), r


def test_dkim_dns_failure_reason_is_fixed_text(dead: Env) -> None:
    raw = message("dk1.test", [dkimkeys.SigningKey("dk1.test", "mm", "rsa-sha256", RSA)])
    [r] = verify_dkim(raw, dead.resolver)
    assert r.reason in ("DNS timeout looking up the key", "DNS server failure looking up the key"), r


def test_our_authentication_results_parse_for_every_corpus_message(corpus) -> None:
    """Real and malformed messages through the real A-R path: DKIM verified (no keys anywhere),
    DMARC per author domain, display-name check; the header must parse and say what we decided."""
    paths = sorted(p for p in corpus.path.rglob("*") if p.suffix in (".eml", ".msg", ".txt") and p.is_file())
    seen = signatures = authors_seen = 0
    for path in paths:
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if b"\r\n\r\n" not in raw:
            continue
        headers, _ = split_message(raw)
        seen += 1
        who = author.authors([v for n, v in headers if n.strip().lower() == "from"])
        rp = next((v for n, v in headers if n.strip().lower() == "return-path"), "")
        spf = SPFResult("none", "mailfrom", rp.strip().strip("<>").rpartition("@")[2], "")
        dk = verify_dkim(raw, NoDNS())  # type: ignore[arg-type]
        dms = [check_dmarc(d, spf, spf.domain, dk, NoDNS()) for d in (who.domains if who.valid else ("",))]  # type: ignore[arg-type]
        spoof = author.impersonated(who, FIRM)
        value = authentication_results(AUTHSERV, spf, dk, dms, "192.0.2.1", impersonated=spoof)
        assert_ar_as_decided(value, spf, dk, dms, spoof, where=str(path))
        assert not any(r.result == "pass" for r in parsed_ar(value).results if r.method == "dkim"), path
        signatures += len(dk)
        authors_seen += len(who.mailboxes)
    print(f"A-R corpus: {seen} messages, {signatures} DKIM signatures, {authors_seen} author mailboxes")
    assert seen >= 700 and signatures >= 20, f"{seen} messages, {signatures} DKIM signatures, {authors_seen} authors"


# --- authors and DMARC for several of them ---------------------------------------------

POLICY = InboundPolicy()


def verdict(values: list[str], null_sender: bool = False, **policy: str):
    d = check_author(author.authors(values), null_sender, InboundPolicy(**policy))  # type: ignore[arg-type]
    return d and (d.action, d.smtp_code, d.xcode, d.text)


def test_several_from_fields_are_refused_even_for_bounces() -> None:
    two = [" alice@lawfirm.test", " bob@example.test"]
    want = ("reject", "550", "5.7.1", "Message has 2 From: header fields; RFC 5322 allows exactly one")
    assert verdict(two) == want and verdict(two, null_sender=True) == want
    assert verdict(two, invalid_from="tag") == want


def test_no_usable_author_is_refused_unless_a_bounce_shows_no_address() -> None:
    none = ("reject", "550", "5.7.1", "Message has no From: header field, so no valid author address (RFC 5322)")
    bad = ("reject", "550", "5.7.1", "Message has no valid author address in its From: header field (RFC 5322)")
    assert verdict([]) == none
    for value in (" =?utf-8?q?ceo=40lawfirm.test?=", " undisclosed-recipients:;", " <>", " alice@lawfirm.test@evil.test",
                  " alice@lawfirm.test, junk", " MAILER-DAEMON"):
        assert verdict([value]) == bad, value
    # Real bounces (sisimai corpus shapes) come with a null sender and no address: accepted.
    for value in (" MAILER-DAEMON <>", " <>", " Mail Delivery Subsystem <MAILER-DAEMON>", " mailer-daemon"):
        assert verdict([value], null_sender=True) is None, value
    assert verdict([], null_sender=True) is None
    # ...but not when the From shows an address a reader would trust.
    assert verdict([" =?utf-8?q?ceo=40lawfirm.test?="], null_sender=True) == bad
    assert verdict([" =?utf-8?q?ceo=40lawfirm.test?="], invalid_from="tag")[0] == "tag"


def test_several_mailboxes_and_groups_give_every_author_domain() -> None:
    cases = {
        " alice@lawfirm.test, bob@example.test": ("lawfirm.test", "example.test"),
        " Team: alice@lawfirm.test, bob@example.test;": ("lawfirm.test", "example.test"),
        " alice@lawfirm.test <bob@example.test>": ("lawfirm.test", "example.test"),
        " A <a@Example.Test.>, B <b@example.test>": ("example.test",),
        ' "Bob, Jr." <bob@example.test>': ("example.test",),
        " Ålice <alice@bücher.test>": ("xn--bcher-kva.test",),
    }
    for value, domains in cases.items():
        who = author.authors([value])
        assert who.valid and who.domains == domains and verdict([value]) is None, (value, who)
    many = " " + ", ".join(f"a@d{i}.test" for i in range(9))
    assert verdict([many]) == ("reject", "550", "5.7.1", "From: names 9 author domains; at most 8 are accepted")


def dmarc(result: str, domain: str, disposition: str = "none", policy: str = "reject") -> DMARCResult:
    return DMARCResult(result, domain, domain, policy, disposition, False, False, "")  # type: ignore[arg-type]


def test_strictest_dmarc_result_decides() -> None:
    p, n = dmarc("pass", "example.test"), dmarc("none", "other.test", policy="")
    rej, qua = dmarc("fail", "lawfirm.test", "reject"), dmarc("fail", "q.test", "quarantine", "quarantine")
    tmp = dmarc("temperror", "t.test")
    assert strictest([p, rej]) is rej and strictest([rej, p]) is rej
    assert strictest([p, qua, tmp]) is qua and strictest([p, tmp, n]) is tmp
    assert strictest([p, n]) is n and strictest([p, p]).result == "pass"
    d = decide(spf_pass("example.test"), strictest([p, rej]), POLICY)
    assert (d.action, d.smtp_code, d.xcode) == ("reject", "550", "5.7.1") and "lawfirm.test" in d.text


def test_dmarc_for_a_multi_author_message_rejects_on_the_failing_domain(env: Env) -> None:
    env.zone("firm11.test", '_dmarc IN TXT "v=DMARC1; p=reject"')
    env.zone("out11.test", f'@ IN TXT "v=spf1 ip4:{CLIENT} -all"\n_dmarc IN TXT "v=DMARC1; p=none"')
    spf = check_spf(env.resolver, CLIENT, "bob@out11.test", "h.test", 5)
    who = author.authors([" alice@firm11.test, bob@out11.test"])
    results = [check_dmarc(d, spf, "out11.test", [], env.resolver) for d in who.domains]
    assert [(r.from_domain, r.result, r.disposition) for r in results] == [
        ("firm11.test", "fail", "reject"), ("out11.test", "pass", "none")]
    d = decide(spf, strictest(results), POLICY)
    assert (d.action, d.text) == ("reject", "The domain firm11.test publishes a DMARC policy of reject and this "
                                            "message failed authentication")
    value = authentication_results(AUTHSERV, spf, [], results, CLIENT)
    assert "dmarc=fail (p=reject dis=reject) header.from=firm11.test" in value
    assert "dmarc=pass (p=none dis=none) header.from=out11.test" in value
    assert_ar_as_decided(value, spf, [], results)


# --- display names -----------------------------------------------------------------------

def test_display_name_showing_a_firm_address_from_outside_is_found() -> None:
    spoofs = {
        ' "ceo@lawfirm.test" <bob@example.test>': "ceo@lawfirm.test",
        " =?utf-8?q?ceo=40lawfirm.test?= <bob@example.test>": "ceo@lawfirm.test",
        " =?utf-8?b?Q0VPIDxjZW9AbGF3ZmlybS50ZXN0Pg==?= <bob@example.test>": "ceo@lawfirm.test",  # CEO <ceo@...>
        ' "CEO (ceo\uff20lawfirm.test)" <bob@example.test>': "ceo@lawfirm.test",  # fullwidth @
        " bob@example.test (Partner@LawFirm.Test)": "partner@lawfirm.test",
        ' "ceo @ mail.lawfirm.test" <bob@example.test>': "ceo@mail.lawfirm.test",  # a subdomain is ours too
        ' "ceo@lawfirm.test" <ceo@lawfirm.test.evil.test>': "ceo@lawfirm.test",
        " =?utf-8*en?q?ceo=40lawfirm.test?= <bob@example.test>": "ceo@lawfirm.test",  # RFC 2231 language
        " =?utf-8?q?ceo=40law?=\n\t=?utf-8?q?firm.test?= <bob@example.test>": "ceo@lawfirm.test",  # split word
    }
    for value, addr in spoofs.items():
        assert author.impersonated(author.authors([value]), FIRM) == addr, value
    fine = [" Bob <bob@example.test>", " =?utf-8?b?####?= <bob@example.test>", " =?x-unknown?q?ceo?= <b@example.test>", ' "alice@lawfirm.test" <alice@lawfirm.test>',
            " alice@lawfirm.test, bob@example.test",  # two authors: DMARC judges both
            ' "bob@example.test" <bob@example.test>', ' "ceo@lawfirm.testing.test" <bob@example.test>']
    for value in fine:
        assert author.impersonated(author.authors([value]), FIRM) == "", value
    assert author.impersonated(author.authors([' "ceo@lawfirm.test" <b@example.test>']), ()) == ""


def test_display_name_spoof_tag_reject_off_and_trusted_forwarder() -> None:
    spf, dm = spf_pass("example.test"), dmarc("pass", "example.test")
    d = decide(spf, dm, InboundPolicy(), "ceo@lawfirm.test")
    assert (d.action, d.reason) == ("tag", "From display name impersonates <ceo@lawfirm.test>")
    d = decide(spf, dm, InboundPolicy(display_name_spoof="reject"), "ceo@lawfirm.test")
    assert (d.action, d.smtp_code, d.xcode, d.text) == (
        "reject", "550", "5.7.1", "The From: display name impersonates <ceo@lawfirm.test>, an address of this organization")
    assert decide(spf, dm, InboundPolicy(display_name_spoof="off"), "ceo@lawfirm.test").action == "accept"
    assert decide(spf, dm, InboundPolicy(display_name_spoof="reject", trusted_forwarder=True),
                  "ceo@lawfirm.test").action == "tag"
    # DMARC reject still comes first and names the domain.
    d = decide(spf, dmarc("fail", "lawfirm.test", "reject"), InboundPolicy(display_name_spoof="reject"), "ceo@lawfirm.test")
    assert "DMARC" in d.text
    value = authentication_results(AUTHSERV, spf, [], [dm], CLIENT, impersonated="ceo@lawfirm.test")
    assert value.endswith(";\n\tx-display-name=spoofed policy.impersonates=ceo@lawfirm.test")
    header = parsed_ar(value)
    assert [(r.method, r.result) for r in header.results][-1] == ("x-display-name", "spoofed")
    assert str(header.results[-1].properties[0].value) == "ceo@lawfirm.test"


def test_strip_our_results_odd_shapes() -> None:
    headers = [
        ("Authentication-Results", "\n\tmx.lawfirm.test\n\t 1\n\t;\n\tdkim=pass header.d=bank.test"),  # folded + version
        ("Authentication-Results ", " MX.LAWFIRM.TEST (ours?)  ; dmarc=pass"),  # space before the colon
        ("Authentication-Results", " mx.lawfirm.test1; spf=pass"),  # another id
        ("Authentication-Results", " (c (nested) \\) x) mx.lawfirm.test;spf=pass"),
    ]
    assert strip_our_results(headers, AUTHSERV) == [4, 2, 1]


def test_display_name_check_stays_linear_and_bounded_on_100kb_from_values() -> None:
    """Postfix lets a header reach 100 KB: the check must not rescan a long run from every position
    (quadratic: minutes), and the address it reports stays short enough for a log line or a reply."""
    import time

    shapes = {
        "letters then address": (' "' + "a" * 100_000 + ' ceo@lawfirm.test" <b@example.test>', "ceo@lawfirm.test"),
        "one long local part": (' "' + "x" * 100_000 + 'ceo@lawfirm.test" <b@example.test>', "x" * 61 + "ceo@lawfirm.test"),
        "dotted run": (' "' + "a." * 50_000 + '@lawfirm.test" <b@example.test>', "a." * 32 + "@lawfirm.test"),
        "words and spaces": (' "' + "ab " * 33_000 + 'ceo @ lawfirm.test" <b@example.test>', "ceo@lawfirm.test"),
    }
    for name, (value, want) in shapes.items():
        start = time.perf_counter()
        got = author.impersonated(author.authors([value]), FIRM)
        took = time.perf_counter() - start
        assert got == want and took < 5, f"{name}: {took:.3f}s for {len(value)} chars, got {got[:80]!r}"


# --- issue 14: the decision core ---------------------------------------------------------

from mattermail.milter.inbound import InboundMessage, InboundSettings, evaluate  # noqa: E402
from mattermail.milter.outbound import header_block  # noqa: E402


class DMARCReject(NoDNS):
    def txt(self, name: str) -> list[str]:
        return ["v=DMARC1; p=reject"] if name.startswith("_dmarc.") else []


def test_evaluate_gives_the_verdict_the_milter_applies() -> None:
    settings = InboundSettings(AUTHSERV, FIRM)
    spf = SPFResult("pass", "mailfrom", "esp.test", "")  # not aligned with From
    headers = [("Authentication-Results", " mx.lawfirm.test; dkim=pass header.d=bank.test"),
               ("Authentication-Results", " mx.example.test; spf=pass"),
               ("From", ' "ceo@lawfirm.test" <bob@example.test>'), ("Subject", " hi")]
    raw = header_block(headers) + b"hi\r\n"
    v = evaluate(InboundMessage(CLIENT, "h.test", "bounce@esp.test", headers, lambda: raw), spf, settings, NoDNS())
    assert (v.decision.action, v.strip, v.impersonated, v.refused) == ("tag", (1,), "ceo@lawfirm.test", False)
    assert_ar_as_decided(v.authentication_results, spf, [], list(v.dmarc), "ceo@lawfirm.test")
    assert v.log_fields == ("spf=pass dkim=none dmarc=none display_name_spoof=<ceo@lawfirm.test> removed_forged_ar=1 "
                            "verdict=tag reason=From display name impersonates <ceo@lawfirm.test>")
    # DMARC reject: the reply, and nothing to add or remove.
    v = evaluate(InboundMessage(CLIENT, "h.test", "bounce@esp.test", headers, lambda: raw), spf, settings,
                 DMARCReject())  # type: ignore[arg-type]
    assert (v.decision.action, v.decision.smtp_code, v.authentication_results, v.strip) == ("reject", "550", "", ())
    assert v.log_fields.startswith("spf=pass dkim=none dmarc=fail display_name_spoof=<ceo@lawfirm.test> verdict=reject "
                                   "reason=DMARC fail, example.test policy reject")
    # ... unless the client is a trusted forwarder: tagged.
    v = evaluate(InboundMessage(CLIENT, "h.test", "bounce@esp.test", headers, lambda: raw, trusted_forwarder=True),
                 spf, settings, DMARCReject())  # type: ignore[arg-type]
    assert v.decision.action == "tag" and "trusted forwarder" in v.decision.reason and v.authentication_results


def test_evaluate_refuses_several_from_fields_without_reading_the_message() -> None:
    two = [("From", " a@example.test"), ("From", " b@example.test")]
    v = evaluate(InboundMessage(CLIENT, "h.test", "a@example.test", two, lambda: pytest.fail("message read")),
                 SPFResult("pass", "mailfrom", "example.test", ""), InboundSettings(AUTHSERV), NoDNS())  # type: ignore[arg-type]
    assert v.refused and (v.decision.smtp_code, v.decision.xcode) == ("550", "5.7.1")
    assert (v.authentication_results, v.dkim, v.log_fields) == ("", (), "verdict=reject reason=2 From header fields")


def test_good_signatures_are_proven_without_dkimpy_verify_and_bad_ones_go_to_it(env: Env, monkeypatch) -> None:
    """The fast path (OpenSSL for RSA) answers "pass" alone; any other outcome is dkimpy's, as before."""
    from mattermail.milter import dkim_verify

    env.zone("fast14.test", key_line(RSA, "mm", "fast14.test") + "\n" + key_line(ED, "mme", "fast14.test"))
    keys = [dkimkeys.SigningKey("fast14.test", "mme", "ed25519-sha256", ED),
            dkimkeys.SigningKey("fast14.test", "mm", "rsa-sha256", RSA)]
    good, bad = message("fast14.test", keys), message("fast14.test", keys, tamper=b"Pay now.\r\n")
    verifies = []
    real = dkim.DKIM.verify
    monkeypatch.setattr(dkim.DKIM, "verify", lambda self, *a, **k: verifies.append(1) or real(self, *a, **k))
    assert [r.result for r in verify_dkim(good, env.resolver)] == ["pass", "pass"] and verifies == []
    assert [(r.result, r.reason) for r in verify_dkim(bad, env.resolver)] == [("fail", "body hash did not verify")] * 2
    assert len(verifies) == 2
    # A key too short for the policy is dkimpy's to judge, as before; one DNS query per key either way.
    asked = []
    monkeypatch.setattr(env.resolver, "txt", lambda name: asked.append(name) or Resolver.txt(env.resolver, name))
    assert [r.result for r in verify_dkim(good, env.resolver, min_rsa_bits=4096)] == ["pass", "policy"]
    assert sorted(asked) == ["mm._domainkey.fast14.test", "mme._domainkey.fast14.test"]
    assert dkim_verify._key.cache_info().hits > 0  # key records are parsed once, not per message
