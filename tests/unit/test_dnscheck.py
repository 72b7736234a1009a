"""mattermail.dnscheck against real DNS: devdns serving tmp zone files over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail_dev.devdns import free_port, serve
from mattermail.dns import Resolver
from mattermail.dnscheck import Finding, blocking, check_domain

OUR_IP = "192.0.2.10"
RSA_KEY = dkimkeys.generate("rsa", 2048)


@dataclass
class Env:
    zones: Path
    port: int
    servers: list
    resolver: Resolver

    def zone(self, domain: str, body: str) -> None:
        """Write a BIND zone file for ``domain``; ``body`` names are relative to it."""
        tmp = self.zones / f".{domain}.tmp"  # written aside, then renamed: devdns never sees half a file
        tmp.write_text(
            f"$ORIGIN {domain}.\n$TTL 300\n"
            f"@ IN SOA ns.{domain}. hostmaster.{domain}. ( 1 3600 600 86400 300 )\n"
            f"@ IN NS ns.{domain}.\nns IN A 192.0.2.53\n{body}\n",
            encoding="utf-8",
        )
        tmp.replace(self.zones / f"{domain}.zone")

    def site(self, domain: str, spf: str | None = "v=spf1 mx -all",
             dmarc: str | None = None, key: dkimkeys.PrivateKey | None = RSA_KEY, extra: str = "") -> None:
        """A sending domain: MX on our IP, SPF, DKIM selector ``mm`` and DMARC (each may be None)."""
        lines = ["@ IN MX 10 mx", f"mx IN A {OUR_IP}", extra]
        if spf is not None:
            lines.append(f'@ IN TXT "{spf}"')
        dmarc = f"v=DMARC1; p=reject; rua=mailto:dmarc@{domain}" if dmarc is None else dmarc
        if dmarc:
            lines.append(f'_dmarc IN TXT "{dmarc}"')
        if key is not None:
            lines.append(dkimkeys.zone_line(*dkimkeys.dns_record(key, "mm", domain)))
        self.zone(domain, "\n".join(lines))

    def check(self, domain: str, keys: list[dkimkeys.SigningKey] | None = None,
              ips: tuple[str, ...] = (OUR_IP,)) -> list[Finding]:
        keys = [dkimkeys.SigningKey(domain, "mm", "rsa-sha256", RSA_KEY)] if keys is None else keys
        return check_domain(domain, self.resolver, ips, keys)


def _start(zones: Path) -> Env:
    zones.mkdir()
    port = free_port()
    servers = serve(zones, "127.0.0.1", port)
    return Env(zones, port, servers, Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=2.0)))


def _stop(env: Env) -> None:
    for s in env.servers:
        if s.isAlive():
            s.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One server for the module: every test uses its own domain (zone file)."""
    e = _start(tmp_path_factory.mktemp("zones") / "zones")
    yield e
    _stop(e)


@pytest.fixture
def own_env(tmp_path: Path) -> Iterator[Env]:
    """A server of the test's own, for tests that stop it."""
    e = _start(tmp_path / "zones")
    yield e
    _stop(e)


def only(findings: list[Finding], check: str, level: str | None = None) -> list[Finding]:
    return [f for f in findings if f.check == check and (level is None or f.level == level)]


def test_all_good_domain(env: Env) -> None:
    env.site("good.test")
    findings = env.check("good.test")
    assert [(f.check, f.level) for f in findings] == [("mx", "ok"), ("spf", "ok"), ("dkim", "ok"), ("dmarc", "ok")]
    assert not blocking(findings)
    dmarc = only(findings, "dmarc")[0].message
    assert "p=reject" in dmarc and "dmarc@good.test" in dmarc
    assert OUR_IP in only(findings, "spf")[0].message  # authorised through mx, resolved by pyspf via devdns


def test_no_mx_is_warning(env: Env) -> None:
    env.zone("nomx.test", f'@ IN A {OUR_IP}\n@ IN TXT "v=spf1 a -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
             + dkimkeys.zone_line(*dkimkeys.dns_record(RSA_KEY, "mm", "nomx.test")))
    findings = env.check("nomx.test")
    assert [f.level for f in only(findings, "mx")] == ["warn"]
    assert not blocking(findings)


def test_no_spf_record(env: Env) -> None:
    env.site("nospf.test", spf=None)
    [f] = only(env.check("nospf.test"), "spf")
    assert f.level == "error" and "no SPF record" in f.message
    assert f.fix == f"v=spf1 ip4:{OUR_IP} ~all"


def test_two_spf_records(env: Env) -> None:
    env.site("twospf.test", extra='@ IN TXT "v=spf1 ip4:198.51.100.1 -all"')
    findings = env.check("twospf.test")
    [f] = only(findings, "spf")
    assert f.level == "error"
    assert '"v=spf1 mx -all"' in f.message and '"v=spf1 ip4:198.51.100.1 -all"' in f.message
    assert blocking(findings)


@pytest.mark.parametrize("lookups", [10, 11])
def test_lookup_limit_through_nested_includes(env: Env, lookups: int) -> None:
    # include:i1 -> i1 includes i2 -> ... : `lookups` include terms in all.
    d = f"lookups{lookups}.test"
    chain = [f'i{n} IN TXT "v=spf1 include:i{n + 1}.{d} -all"' for n in range(1, lookups)]
    chain.append(f'i{lookups} IN TXT "v=spf1 ip4:198.51.100.7 -all"')
    env.site(d, spf=f"v=spf1 ip4:{OUR_IP} include:i1.{d} -all", extra="\n".join(chain))
    errors = only(env.check(d), "spf", "error")
    if lookups > 10:
        [f] = errors
        assert "11 DNS-querying terms" in f.message
    else:
        assert errors == []


@pytest.mark.parametrize("voids", [2, 3])
def test_void_lookups(env: Env, voids: int) -> None:
    terms = ["a:nx1.void.test", "mx:nx2.void.test", "a:nx3.void.test"][:voids]
    env.site(f"void{voids}.test", spf=f"v=spf1 ip4:{OUR_IP} {' '.join(terms)} -all")
    errors = only(env.check(f"void{voids}.test"), "spf", "error")
    if voids > 2:
        [f] = errors
        assert "3 void lookups" in f.message and "nx3.void.test" in f.message
        assert f.fix == f"v=spf1 ip4:{OUR_IP} -all"
    else:
        assert errors == []


@pytest.mark.parametrize("all_term", ["~all", "-all"])
def test_our_ip_not_authorised_fix_goes_before_all(env: Env, all_term: str) -> None:
    d = "notours-soft.test" if all_term == "~all" else "notours-hard.test"
    env.site(d, spf=f"v=spf1 ip4:198.51.100.1 {all_term}")
    findings = env.check(d)
    [f] = only(findings, "spf")
    assert f.level == "error" and OUR_IP in f.message and "not authorised" in f.message
    assert f.fix == f"v=spf1 ip4:198.51.100.1 ip4:{OUR_IP} {all_term}"
    assert blocking(findings)


def test_ipv6_server_gets_ip6_term(env: Env) -> None:
    env.site("v6.test", spf="v=spf1 mx -all")
    [f] = only(env.check("v6.test", ips=(OUR_IP, "2001:db8::25")), "spf")
    assert f.fix == "v=spf1 mx ip6:2001:db8::25 -all"


def test_all_not_last_is_moved_to_end(env: Env) -> None:
    env.site("notlast.test", spf=f"v=spf1 ip4:{OUR_IP} ~all mx")
    [f] = only(env.check("notlast.test"), "spf")
    assert f.level == "error" and "ignored" in f.message and "mx" in f.message
    assert f.fix == f"v=spf1 ip4:{OUR_IP} mx ~all"


def test_all_first_hides_our_ip_and_fix_does_not_duplicate_it(env: Env) -> None:
    env.site("allfirst.test", spf=f"v=spf1 -all ip4:{OUR_IP}")
    spf = only(env.check("allfirst.test"), "spf")
    assert {f.level for f in spf} == {"error"}
    assert any("not authorised" in f.message for f in spf)
    assert {f.fix for f in spf} == {f"v=spf1 ip4:{OUR_IP} -all"}


@pytest.mark.parametrize("all_term", ["+all", "all"])
def test_plus_all_is_error(env: Env, all_term: str) -> None:
    d = f"plusall{len(all_term)}.test"
    env.site(d, spf=f"v=spf1 mx {all_term}")
    findings = env.check(d)
    [f] = only(findings, "spf")
    assert f.level == "error" and "every host" in f.message
    assert f.fix == "v=spf1 mx ~all"
    assert blocking(findings)


def test_question_all_is_warning(env: Env) -> None:
    env.site("qall.test", spf="v=spf1 mx ?all")
    findings = env.check("qall.test")
    assert [f.level for f in only(findings, "spf")] == ["warn"]
    assert not blocking(findings)


def test_ptr_is_warning(env: Env) -> None:
    env.site("ptr.test", spf=f"v=spf1 ip4:{OUR_IP} ptr -all")
    findings = env.check("ptr.test")
    [f] = only(findings, "spf")
    assert f.level == "warn" and "ptr" in f.message
    assert not blocking(findings)


def test_missing_dmarc(env: Env) -> None:
    env.site("nodmarc.test", dmarc="")
    findings = env.check("nodmarc.test")
    [f] = only(findings, "dmarc")
    assert f.level == "error" and "no DMARC record" in f.message and "temporarily" not in f.message
    assert f.fix is not None and f.fix.startswith("v=DMARC1; p=")
    assert blocking(findings)


def test_invalid_dmarc_tags(env: Env) -> None:
    env.site("baddmarc.test", dmarc="v=DMARC1; p=bogus; pct=150; rua=https://x.test/r; adkim=x")
    [f] = only(env.check("baddmarc.test"), "dmarc")
    assert f.level == "error"
    for bit in ("p=bogus", "pct=150", "https://x.test/r", "adkim=x"):
        assert bit in f.message
    assert f.fix == "v=DMARC1; p=none"


def test_dmarc_p_none_is_warning_and_reports_addresses(env: Env) -> None:
    env.site("pnone.test", dmarc="v=DMARC1; p=none; rua=mailto:a@pnone.test,mailto:b@r.test!10m; ruf=mailto:f@pnone.test")
    findings = env.check("pnone.test")
    [f] = only(findings, "dmarc")
    assert f.level == "warn"
    assert "a@pnone.test" in f.message and "b@r.test" in f.message and "f@pnone.test" in f.message
    assert not blocking(findings)


def test_dkim_record_missing(env: Env) -> None:
    env.site("nodkim.test", key=None)
    findings = env.check("nodkim.test")
    [f] = only(findings, "dkim")
    assert f.level == "error" and "mm._domainkey.nodkim.test" in f.message
    assert f.fix == dkimkeys.dns_record(RSA_KEY, "mm", "nodkim.test")[1]
    assert blocking(findings)


def test_dkim_key_mismatch(env: Env) -> None:
    published, ours = dkimkeys.generate("ed25519"), dkimkeys.generate("ed25519")
    env.site("mismatch.test", key=published)
    findings = env.check("mismatch.test", keys=[dkimkeys.SigningKey("mismatch.test", "mm", "ed25519-sha256", ours)])
    [f] = only(findings, "dkim")
    assert f.level == "error" and "key mismatch" in f.message
    assert f.fix == dkimkeys.dns_record(ours, "mm", "mismatch.test")[1]
    # the same record checked with the key it publishes is fine
    ok = env.check("mismatch.test", keys=[dkimkeys.SigningKey("mismatch.test", "mm", "ed25519-sha256", published)])
    assert [f.level for f in only(ok, "dkim")] == ["ok"]


def test_dns_server_stopped_is_temporary_not_missing(own_env: Env) -> None:
    own_env.site("down.test")
    assert not blocking(own_env.check("down.test"))
    _stop(own_env)
    resolver = Resolver(DNS(nameservers=("127.0.0.1",), port=own_env.port, timeout=0.5))
    findings = check_domain("down.test", resolver, [OUR_IP], [dkimkeys.SigningKey("down.test", "mm", "rsa-sha256", RSA_KEY)])
    assert {f.check for f in findings} == {"mx", "spf", "dkim", "dmarc"}
    for f in findings:
        assert f.level == "error" and "temporarily" in f.message, f
        assert "no " not in f.message and "missing" not in f.message and f.fix is None
    assert blocking(findings)
