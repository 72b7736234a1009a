"""ARC sealing of forwarded mail (milter/arcseal.py): which mail is forwarded, which instance, what the
ARC-Authentication-Results says, and that dkimpy's arc_verify passes what we seal (DNS from devdns)."""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
import pytest

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail.dns import Resolver
from mattermail.milter import arc_sign, arcseal
from mattermail.milter.dkim_sign import _relaxed_header
from mattermail.milter.inbound import DMARCResult, SPFResult, authentication_results
from mattermail_dev.devdns import free_port, serve

FIRM = ("lawfirm.test", "matters.lawfirm.test")
AUTHSERV = "mx.lawfirm.test"
FIRM_KEY = dkimkeys.SigningKey("lawfirm.test", "arc1", "rsa-sha256", dkimkeys.generate("rsa", 2048))
FIRM_ED = dkimkeys.SigningKey("lawfirm.test", "ed1", "ed25519-sha256", dkimkeys.generate("ed25519"))
PRIOR_KEY = dkimkeys.SigningKey("list.test", "lst", "rsa-sha256", dkimkeys.generate("rsa", 2048))

ALIASES = {
    "fwd@lawfirm.test": ["alice.home@example.test"],
    "team@lawfirm.test": ["alice@lawfirm.test", "bob@lawfirm.test"],  # stays inside
    "mixed@lawfirm.test": ["team@lawfirm.test", "carol@outside.test"],
    "self@lawfirm.test": ["self@lawfirm.test", "copy@example.test"],
    "@old.lawfirm.test": ["archive@lawfirm.test"],
    "loop1@lawfirm.test": ["loop2@lawfirm.test"],
    "loop2@lawfirm.test": ["loop1@lawfirm.test"],
    "dave@lawfirm.test": ["dave@private.test"],
}


def table(keys: Sequence[str]) -> dict[str, list[str]]:
    return {k: ALIASES[k] for k in keys if k in ALIASES}


# --- the decision: forwarded outside or not ---------------------------------------------

def test_a_plain_recipient_of_the_firm_is_not_forwarded() -> None:
    assert arcseal.forwarded(["alice@lawfirm.test"], FIRM, table) == {}


def test_an_alias_to_an_outside_mailbox_is_forwarded() -> None:
    assert arcseal.forwarded(["fwd@lawfirm.test"], FIRM, table) == {"fwd@lawfirm.test": ["alice.home@example.test"]}


def test_an_alias_that_stays_inside_the_firm_is_not_forwarded() -> None:
    assert arcseal.forwarded(["team@lawfirm.test"], FIRM, table) == {}
    assert arcseal.forwarded(["x@old.lawfirm.test"], FIRM, table) == {}  # @domain alias to a firm mailbox


def test_nested_aliases_are_followed_and_only_outside_targets_count() -> None:
    assert arcseal.forwarded(["mixed@lawfirm.test", "alice@lawfirm.test"], FIRM, table) == {
        "mixed@lawfirm.test": ["carol@outside.test"]}
    assert arcseal.expand(["mixed@lawfirm.test"], table)["mixed@lawfirm.test"] == [
        "carol@outside.test", "alice@lawfirm.test", "bob@lawfirm.test"]


def test_an_alias_that_keeps_itself_and_adds_an_outside_copy() -> None:
    assert arcseal.expand(["self@lawfirm.test"], table)["self@lawfirm.test"] == ["self@lawfirm.test", "copy@example.test"]
    assert arcseal.forwarded(["self@lawfirm.test"], FIRM, table) == {"self@lawfirm.test": ["copy@example.test"]}


def test_address_extension_uses_the_base_alias_and_case_does_not_matter() -> None:
    assert arcseal.forwarded(["Dave+Case1@LawFirm.test"], FIRM, table, "+") == {
        "Dave+Case1@LawFirm.test": ["dave@private.test"]}
    assert arcseal.forwarded(["dave+case1@lawfirm.test"], FIRM, table) == {}  # no recipient_delimiter


def test_alias_loops_end() -> None:
    assert arcseal.forwarded(["loop1@lawfirm.test"], FIRM, table) == {}


def settled(path: Path, text: str) -> None:
    """Write a file Postfix reads at once: it waits (300 ms steps, ~2 s) for one changed this very second."""
    path.write_text(text)
    os.utime(path, (time.time() - 60, time.time() - 60))


def main_cf(path: Path, text: str) -> None:
    settled(path / "main.cf", "myhostname = mx.lawfirm.test\n" + text)


def test_alias_maps_ask_postfix(tmp_path: Path) -> None:
    """Real postmap/postconf against a texthash table, first table wins, missing keys are no error."""
    main_cf(tmp_path, f"virtual_alias_maps = texthash:{tmp_path}/a, texthash:{tmp_path}/b\nrecipient_delimiter = +\n")
    settled(tmp_path / "a", "fwd@lawfirm.test alice.home@example.test\n")
    settled(tmp_path / "b", "fwd@lawfirm.test other@example.test\nx@lawfirm.test a@b.test, c@d.test\n")
    maps = arcseal.AliasMaps(tmp_path)
    assert maps.delimiters == "+"
    assert maps.lookup(["fwd@lawfirm.test", "x@lawfirm.test", "none@lawfirm.test"]) == {
        "fwd@lawfirm.test": ["alice.home@example.test"], "x@lawfirm.test": ["a@b.test", "c@d.test"]}


def test_one_lookup_per_alias_level_for_all_recipients() -> None:
    calls: list[list[str]] = []

    def counting(keys: Sequence[str]) -> dict[str, list[str]]:
        calls.append(list(keys))
        return table(keys)

    away = arcseal.forwarded(["mixed@lawfirm.test", "fwd@lawfirm.test", "alice@lawfirm.test"], FIRM, counting)
    assert set(away) == {"mixed@lawfirm.test", "fwd@lawfirm.test"}
    assert len(calls) == 3  # the recipients; team + carol + alice.home; alice + bob


def test_alias_answers_are_kept_for_a_minute(tmp_path: Path) -> None:
    main_cf(tmp_path, f"virtual_alias_maps = texthash:{tmp_path}/v\n")
    settled(tmp_path / "v", "fwd@lawfirm.test a@example.test\n")
    maps = arcseal.AliasMaps(tmp_path)
    assert maps.lookup(["fwd@lawfirm.test", "new@lawfirm.test"]) == {"fwd@lawfirm.test": ["a@example.test"]}
    settled(tmp_path / "v", "fwd@lawfirm.test b@example.test\nnew@lawfirm.test c@example.test\n")
    assert maps.lookup(["fwd@lawfirm.test", "new@lawfirm.test"]) == {"fwd@lawfirm.test": ["a@example.test"]}
    maps = arcseal.AliasMaps(tmp_path)  # a new runtime (SIGHUP) asks again
    assert maps.lookup(["fwd@lawfirm.test", "new@lawfirm.test"]) == {
        "fwd@lawfirm.test": ["b@example.test"], "new@lawfirm.test": ["c@example.test"]}


# --- sealing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolver]:
    zones = tmp_path_factory.mktemp("arc") / "zones"
    zones.mkdir()
    for key in (FIRM_KEY, PRIOR_KEY):
        owner, record = dkimkeys.dns_record(key.private_key, key.selector, key.domain)
        (zones / f"{key.domain}.zone").write_text(
            f"$ORIGIN {key.domain}.\n$TTL 300\n@ IN SOA ns.{key.domain}. h.{key.domain}. ( 1 3600 600 86400 300 )\n"
            f"@ IN NS ns.{key.domain}.\nns IN A 192.0.2.53\n{dkimkeys.zone_line(owner, record)}\n")
    port = free_port()
    servers = serve(zones, "127.0.0.1", port)
    yield Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=2.0, cache_size=0))
    for s in servers:
        s.stop()


BODY = b"Hello,\r\n\r\nthe draft is attached.\r\n"
HEADERS = [("Received", " from mail.example.test by mx.lawfirm.test"), ("From", " Bob <bob@example.test>"),
           ("To", " fwd@lawfirm.test"), ("Subject", " draft"), ("Date", " Mon, 1 Jan 2024 10:00:00 +0000"),
           ("Message-ID", " <1@example.test>")]


def raw_of(headers: Sequence[tuple[str, str]], body: bytes = BODY) -> tuple[bytes, int]:
    head = "\r\n".join(f"{n}:{v}".replace("\n", "\r\n") for n, v in headers).encode() + b"\r\n\r\n"
    return head + body, len(head)


def our_ar() -> str:
    return authentication_results(AUTHSERV, SPFResult("pass", "mailfrom", "example.test", ""), [],
                                  [DMARCResult("none", "example.test", "example.test", "", "none", False, False, "")],
                                  "192.0.2.10")


def sealer(resolver: Resolver, keys: list[dkimkeys.SigningKey] | None = None, enabled: bool = True) -> arcseal.Sealer:
    maps = arcseal.AliasMaps(Path("/nonexistent"), tables=[], delimiters="+")
    maps.lookup = table  # type: ignore[method-assign]
    return arcseal.Sealer(AUTHSERV, "lawfirm.test", FIRM, maps,
                          keys=lambda: {"lawfirm.test": [FIRM_ED, FIRM_KEY] if keys is None else keys},
                          resolver=resolver, enabled=enabled)


def as_delivered(seal: arcseal.Seal, headers: Sequence[tuple[str, str]], body: bytes = BODY,
                 forged: Sequence[int] = ()) -> bytes:
    """The message as Postfix writes it after the milter: the ARC set and our A-R on top."""
    msg = arcseal.message_for_sealing(seal.ar_value, headers, forged, body)
    top = [f"{n}: {v}" for n, v in reversed(seal.headers)]
    return "\r\n".join(t.replace("\n", "\r\n") for t in top).encode() + b"\r\n" + msg


def test_first_hop_seal_is_cv_none_and_verifies(resolver: Resolver) -> None:
    raw, off = raw_of(HEADERS)
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], HEADERS, [], our_ar(), raw, off)
    assert [n for n, _ in seal.headers] == ["ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"]
    aar, ams, arc_seal = (v for _, v in seal.headers)
    assert aar.startswith("i=1; mx.lawfirm.test;")
    assert "spf=pass" in aar and "dmarc=none" in aar and "arc=none" in aar
    assert "arc=none" in seal.ar_value and seal.ar_value.startswith(our_ar())
    assert re.search(r"\bcv=none\b", arc_seal) and "d=lawfirm.test" in arc_seal and "s=arc1" in arc_seal
    assert "a=rsa-sha256" in ams and "i=1" in ams
    assert "arc=sealed i=1 cv=none" in seal.note and "forwarded_to=<alice.home@example.test>" in seal.note
    delivered = as_delivered(seal, HEADERS)
    cv, results, why = dkim.arc_verify(delivered, dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv == dkim.CV_Pass, why
    # a changed body breaks it: the seal means something
    cv, _, _ = dkim.arc_verify(delivered.replace(b"draft is", b"draft was"), dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv == dkim.CV_Fail


def _txt(resolver: Resolver, name: bytes) -> bytes | None:
    r = resolver.txt(name.decode().rstrip("."))
    return r[0].encode() if r else None


def prior_sealed(body: bytes = BODY) -> list[tuple[str, str]]:
    """A message a list (list.test) forwarded to us with its own valid ARC set (i=1)."""
    headers = [(n, v) for n, v in HEADERS if n != "Received"]
    msg, _ = raw_of([("Authentication-Results", " mx.list.test; spf=pass smtp.mailfrom=bob@example.test")] + headers,
                    body)
    lines = dkim.arc_sign(msg, b"lst", b"list.test", PRIOR_KEY.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                      serialization.NoEncryption()), b"mx.list.test")
    prior = []
    for line in lines:
        n, _, v = line.decode().partition(":")
        prior.append((n, v.rstrip("\r\n").replace("\r\n", "\n")))
    return [HEADERS[0]] + prior + [("Authentication-Results", " mx.list.test; spf=pass smtp.mailfrom=bob@example.test")] \
        + headers


def test_second_set_on_a_valid_chain_is_i2_cv_pass_and_verifies(resolver: Resolver) -> None:
    headers = prior_sealed()
    raw, off = raw_of(headers)
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], headers, [], our_ar(), raw, off)
    aar, _, arc_seal = (v for _, v in seal.headers)
    assert aar.startswith("i=2; mx.lawfirm.test;") and "arc=pass" in aar
    assert re.search(r"\bcv=pass\b", arc_seal) and re.search(r"\bi=2\b", arc_seal)
    assert "arc=sealed i=2 cv=pass" in seal.note
    cv, results, why = dkim.arc_verify(as_delivered(seal, headers), dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv == dkim.CV_Pass, why
    assert [r["instance"] for r in results] == [2, 1]


def test_a_broken_prior_chain_is_sealed_cv_fail(resolver: Resolver) -> None:
    headers = prior_sealed()
    raw, off = raw_of(headers, b"changed on the way\r\n")
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], headers, [], our_ar(), raw, off)
    assert "arc=fail" in seal.headers[0][1] and re.search(r"\bcv=fail\b", seal.headers[2][1])
    # our seal over the new set alone (RFC 8617 §5.1.2) is itself valid: the next hop sees a chain we ended
    cv, results, why = dkim.arc_verify(as_delivered(seal, headers, b"changed on the way\r\n"),
                                       dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv is None and "terminated" in why
    assert results[0]["instance"] == 2 and results[0]["ams-valid"]
    # dkimpy's verifier hashes every set under a seal; §5.1.2's cv=fail seal covers its own set only
    aar, ams, arc_seal = seal.headers
    b_value = re.search(r"\bb=([A-Za-z0-9+/=\s]+)$", arc_seal[1]).group(1)
    unsigned = arc_seal[1][:-len(b_value)]
    signed = (_relaxed_header(*aar) + _relaxed_header(*ams) + _relaxed_header("ARC-Seal", unsigned)[:-2])
    FIRM_KEY.private_key.public_key().verify(base64.b64decode(re.sub(r"\s", "", b_value)), signed,
                                             padding.PKCS1v15(), hashes.SHA256())  # raises if it does not


def received_sealed(seal: arcseal.Seal, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header fields of a message we sealed, as the next hop receives it."""
    return [(n, f" {v}") for n, v in reversed(seal.headers)] + [("Authentication-Results", f" {seal.ar_value}")] \
        + list(headers)


def test_a_chain_we_sealed_twice_verifies_at_the_third_hop(resolver: Resolver) -> None:
    headers = prior_sealed()
    raw, off = raw_of(headers)
    second = received_sealed(sealer(resolver).seal(["fwd@lawfirm.test"], headers, [], our_ar(), raw, off), headers)
    raw, off = raw_of(second)
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], second, [], our_ar(), raw, off)
    assert "arc=sealed i=3 cv=pass" in seal.note
    cv, results, why = dkim.arc_verify(as_delivered(seal, second), dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv == dkim.CV_Pass, why
    assert [r["instance"] for r in results] == [3, 2, 1]


def test_a_large_message_is_sealed_and_verifies(resolver: Resolver) -> None:
    body = b"".join(b"line %d of a long forwarded brief, with  spaces\t and tabs \r\n" % n for n in range(40_000))
    raw, off = raw_of(HEADERS, body)
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], HEADERS, [], our_ar(), raw, off)
    assert "arc=sealed i=1 cv=none" in seal.note
    cv, _, why = dkim.arc_verify(as_delivered(seal, HEADERS, body), dnsfunc=lambda n, timeout=5: _txt(resolver, n))
    assert cv == dkim.CV_Pass, why


def test_a_chain_that_contradicts_its_result_is_not_extended() -> None:
    """cv must be none on the first set and only there (dkimpy's arc_verify says none for an ARC-Seal without i=)."""
    with pytest.raises(ValueError, match="cv=none with 1 prior set"):
        arc_sign.arc_set(prior_sealed(), BODY, our_ar(), "none", FIRM_KEY)
    with pytest.raises(ValueError, match="cv=pass with 0 prior set"):
        arc_sign.arc_set(HEADERS, BODY, our_ar(), "pass", FIRM_KEY)
    with pytest.raises(ValueError, match="rsa-sha256 only"):
        arc_sign.arc_set(HEADERS, BODY, our_ar(), "none", FIRM_ED)


def test_forged_results_of_ours_do_not_reach_the_aar(resolver: Resolver) -> None:
    headers = [("Authentication-Results", " mx.lawfirm.test; dmarc=pass header.from=bank.test")] + HEADERS
    raw, off = raw_of(headers)
    seal = sealer(resolver).seal(["fwd@lawfirm.test"], headers, [1], our_ar(), raw, off)
    assert "bank.test" not in seal.headers[0][1] and "dmarc=none" in seal.headers[0][1]


def test_mail_not_forwarded_gets_no_arc_set_and_our_results_unchanged(resolver: Resolver) -> None:
    raw, off = raw_of(HEADERS)
    for s, rcpts in ((sealer(resolver), ["alice@lawfirm.test", "team@lawfirm.test"]),
                     (sealer(resolver, enabled=False), ["fwd@lawfirm.test"])):
        seal = s.seal(rcpts, HEADERS, [], our_ar(), raw, off)
        assert seal == arcseal.Seal(our_ar())


def test_no_rsa_key_passes_unsealed_and_logs(resolver: Resolver, caplog: pytest.LogCaptureFixture) -> None:
    raw, off = raw_of(HEADERS)
    with caplog.at_level(logging.ERROR, logger="mattermail.milter"):
        seal = sealer(resolver, keys=[FIRM_ED]).seal(["fwd@lawfirm.test"], HEADERS, [], our_ar(), raw, off)
    assert seal.headers == [] and seal.ar_value == our_ar()
    assert "arc=unsealed reason=no RSA DKIM key for lawfirm.test" in caplog.text


def test_alias_lookup_failure_passes_unsealed(resolver: Resolver, caplog: pytest.LogCaptureFixture) -> None:
    s = sealer(resolver)

    def broken(keys: Sequence[str]) -> dict[str, list[str]]:
        raise RuntimeError("postmap -q texthash:/etc/postfix/virtual: open: Permission denied")

    s.aliases.lookup = broken  # type: ignore[method-assign]
    raw, off = raw_of(HEADERS)
    with caplog.at_level(logging.ERROR, logger="mattermail.milter"):
        seal = s.seal(["fwd@lawfirm.test"], HEADERS, [], our_ar(), raw, off)
    assert seal.headers == [] and "virtual alias lookup failed" in caplog.text


def test_dns_timeout_on_the_prior_chain_passes_unsealed_rather_than_claim_fail(tmp_path: Path) -> None:
    port = free_port()
    dead = Resolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=0.3, cache_size=0))
    headers = prior_sealed()
    raw, off = raw_of(headers)
    seal = sealer(dead).seal(["fwd@lawfirm.test"], headers, [], our_ar(), raw, off)
    assert seal.headers == [] and "DNS timeout" in seal.note
