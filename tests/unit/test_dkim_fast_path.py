"""The DKIM fast path (milter/dkim_verify.py) gives exactly dkimpy's verdicts.

verify_dkim with the fast path is compared with verify_dkim forced through dkimpy alone
(``_passes`` patched to decline), on the corpus and on dkimpy-signed messages in many
shapes; each equivalent of a dkimpy function is compared with it on random input.
"""

from __future__ import annotations

import base64
import itertools
import random
import re

import dkim
import dkim.canonicalization
import pytest
from cryptography.hazmat.primitives import serialization

from mattermail import dkimkeys
from mattermail.milter import dkim_verify
from mattermail.milter.dkim_verify import verify_dkim

DOMAIN = "fp.test"


class Keys:
    """A resolver answering TXT from a dict (key records only)."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}

    def txt(self, name: str) -> list[str]:
        return [self.records[name.lower()]] if name.lower() in self.records else []


def both(raw: bytes, resolver: Keys, monkeypatch: pytest.MonkeyPatch, min_rsa_bits: int = 1024):
    fast = verify_dkim(raw, resolver, min_rsa_bits)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(dkim_verify, "_passes", lambda *a: False)
        slow = verify_dkim(raw, resolver, min_rsa_bits)  # type: ignore[arg-type]
    return fast, slow


def test_corpus_messages_get_dkimpys_verdicts(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Keys()
    for path in corpus.files("dkim/stalwart/dkim"):
        head = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        for line in head.decode().splitlines():
            if line.strip():
                owner, record = line.split(" ", 1)
                resolver.records[owner.lower()] = record.strip()
    pem = (corpus / "mime" / "mimekit" / "dkim" / "gmail.pub").read_text()
    resolver.records["20120113._domainkey.gmail.com"] = "v=DKIM1; k=rsa; p=" + "".join(
        line.strip() for line in pem.splitlines() if "-----" not in line)
    compared = passed = 0
    for path in sorted(p for p in corpus.path.rglob("*") if p.suffix in (".eml", ".msg", ".txt") and p.is_file()):
        data = path.read_bytes()
        if "stalwart" in str(path):
            data = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[-1]
        for raw in (data, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")):
            fast, slow = both(raw, resolver, monkeypatch)
            assert fast == slow, path
            compared += len(fast)
            passed += sum(r.result == "pass" for r in fast)
    assert compared >= 40 and passed >= 20, (compared, passed)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


BODIES = [b"Hello,\r\n\r\nSee you at 10.\r\n", b"", b"a  b\t c \r\n\t\r\n  \r\n\r\n", b"no newline at end",
          b"bare\rCR \r\nline\r\n", b"bare\nLF  \nx\r\n"]
HEADS = [b"From: Alice <alice@fp.test>\r\nTo: bob@lawfirm.test\r\nSubject: hi   there\r\n",
         b"FROM:alice@fp.test\r\nsubject:\tfolded\r\n  continued\r\nTo: a\r\nTo: b\r\n"]
MUTATIONS = [lambda r: r, lambda r: r.replace(b"Subject:", b"Subject: ", 1), lambda r: r + b"extra\r\n",
             lambda r: r + b"\r\n\r\n", lambda r: r.replace(b"\r\n", b"\n"), lambda r: b"From: x@evil.test\r\n" + r,
             lambda r: r.replace(b"  ", b" ")]


def test_signed_messages_in_many_shapes_get_dkimpys_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    rsa, short, ed = dkimkeys.generate("rsa", 2048), dkimkeys.generate("rsa", 1024), dkimkeys.generate("ed25519")
    resolver = Keys()
    for sel, key in (("r", rsa), ("short", short), ("e", ed)):
        owner, record = dkimkeys.dns_record(key, sel, DOMAIN)
        resolver.records[owner] = record
    p = resolver.records[f"r._domainkey.{DOMAIN}"].split("p=")[1]
    for sel, record in (("web", f"v=DKIM1; s=web; p={p}"), ("tls", f"v=DKIM1; s=tlsrpt; p={p}"),
                        ("nov", f"p={p}"), ("bad", "v=DKIM1; p=AAAA"), ("gone", "v=DKIM1; p=")):
        resolver.records[f"{sel}._domainkey.{DOMAIN}"] = record
    ed_raw = base64.b64encode(ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption()))
    signers = [("r", b"rsa-sha256", _pem(rsa)), ("short", b"rsa-sha256", _pem(short)), ("e", b"ed25519-sha256", ed_raw),
               ("r", b"rsa-sha1", _pem(rsa)), ("web", b"rsa-sha256", _pem(rsa)), ("tls", b"rsa-sha256", _pem(rsa)),
               ("nov", b"rsa-sha256", _pem(rsa)), ("bad", b"rsa-sha256", _pem(rsa)), ("gone", b"rsa-sha256", _pem(rsa)),
               ("missing", b"rsa-sha256", _pem(rsa))]
    canons = [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]
    results: dict[str, int] = {}
    for head, body, (sel, alg, key), canon, length in itertools.product(HEADS, BODIES, signers, canons, (False, True)):
        if (sel not in ("r", "e", "short") or alg == b"rsa-sha1") and (head, body, canon) != (HEADS[0], BODIES[0], canons[0]):
            continue  # the key-record and algorithm cases need one message shape, not all
        msg = head + b"\r\n" + body
        sig = dkim.sign(msg, sel.encode(), DOMAIN.encode(), key, canonicalize=canon, length=length,
                        include_headers=[b"from", b"to", b"subject"], signature_algorithm=alg)
        for mutate in MUTATIONS if sel in ("r", "e") else MUTATIONS[:1]:
            raw = mutate(sig + msg)
            for bits in (1024, 2048):
                fast, slow = both(raw, resolver, monkeypatch, bits)
                assert fast == slow, (sel, alg, canon, length, bits, raw[:300])
                for r in fast:
                    results[r.result] = results.get(r.result, 0) + 1
    assert {"pass", "fail", "permerror", "policy", "neutral"} <= set(results) and results["pass"] > 300, results


def test_each_equivalent_matches_dkimpy_on_random_input() -> None:
    rnd = random.Random(14)

    def text(alphabet: list[bytes], n: int) -> bytes:
        return b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, n)))

    message = [b"a", b"B", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"From ", b"X-H:", b"\r\n\r\n", b"\n\n"]
    # header blocks with CRLF line ends only, where the parse takes whole fields in one pass
    crlf = [b"X-H:", b"DKIM-Signature:", b"a", b":", b" ", b"\t", b"\r", b"\r\n", b"\r\n ", b"\r\n\t", b"From ", b"\x7f"]
    one_pass = 0
    value = [b"a", b" ", b"\t", b"\r", b"\n", b"\r\n", b"  ", b"\x0b", b"\xff", b";", b"b", b"=", b"b=", b"; b=", b"+"]

    def outcome(f, m):
        try:
            return f(m)
        except Exception as e:  # noqa: BLE001 - the same exception is the same outcome
            return type(e).__name__

    for _ in range(20000):
        m = text(message, 30)
        assert outcome(dkim.rfc822_parse, m) == outcome(dkim_verify._parse, m), m
        m = rnd.choice([b"", b"X-H:"]) + text(crlf, 20) + b"\r\n\r\nbody\r\n"
        assert outcome(dkim.rfc822_parse, m) == outcome(dkim_verify._parse, m), m
        block = m[: m.index(b"\n\r\n") + 1]
        one_pass += b"\n" not in block.replace(b"\r\n", b"") and sum(
            len(n) + len(v) + 1 for n, v in dkim_verify._FIELD.findall(block)) == len(block)
        v = text(value, 25)
        assert dkim.RE_BTAG.sub(b"\\1", v) == dkim_verify._BTAG.sub(b"\\1", v), v
        assert dkim.canonicalization.Relaxed.canonicalize_headers([(b"Sub-J", v)])[0] == \
            dkim_verify._relaxed_header(b"Sub-J", v), v
        body = b"\r\n".join(re.split(b"\r?\n", v))  # as the parse hands a body over
        assert dkim.canonicalization.Relaxed.canonicalize_body(body) == dkim_verify._relaxed_body(body), v
    assert one_pass > 2000, one_pass  # the one-pass parse was compared, not only its fallback


def test_fast_tags_accept_only_what_dkimpy_accepts() -> None:
    """Whatever the fast path's own tag parse accepts, dkimpy's parse_tag_value reads the same and
    validate_signature_fields accepts; checked on signatures mutated at random."""
    rnd = random.Random(8463)
    b64 = base64.b64encode(bytes(range(48))).decode()
    base = [b"v=1", b"a=rsa-sha256", f"b={b64}".encode(), f"bh={b64[:44]}".encode(), b"d=fp.test", b"h=from:to",
            b"s=sel"]
    extras = [b"i=@fp.test", b"i=a@sub.fp.test", b"i=afp.test", b"i=fp.test", b"i=@FP.Test", b"t=1700000000",
              b"t=99999999999", b"t=17e8", b"x=1", b"x=99999999999", b"x=1600000000", b"q=dns/txt", b"q=dns",
              b"l=5", b"cv=pass", b"z=x", b"c=relaxed/relaxed", b"a=ed25519-sha256", b"a=rsa-sha1", b"v=2",
              b"d=fp(.test", "d=fé.test".encode(), b"b=AB=C", b"bh=ABC", f"b= {b64[:4]} {b64[4:]}".encode(),
              b"bh=====", b"1x=2", b"x-y=1", b"=1", b"novalue", b"b=", b"d=", b"t=" + b"9" * 5000]
    junk = [b" ", b"\t", b"\r\n ", b";", b"=", b"\x0b", b"\xff"]
    accepted = 0
    for _ in range(20000):
        parts = [p for p in base if rnd.random() > 0.05] + rnd.sample(extras, rnd.randint(0, 3))
        rnd.shuffle(parts)
        parts = [p if rnd.random() > 0.1 else rnd.choice([p + rnd.choice(junk), rnd.choice(junk) + p]) for p in parts]
        value = b";".join(parts) + rnd.choice([b"", b";", b" ;\r\n"])
        fast = dkim_verify._fast_tags(value)
        if fast is None:
            continue
        accepted += 1
        assert dkim.util.parse_tag_value(value) == fast, value
        dkim.validate_signature_fields(fast)  # raises if dkimpy refuses what the fast path took
        assert [dkim_verify._text(fast, t) for t in (b"d", b"s", b"a")] == list(dkim_verify._sig_tags(value))
    assert accepted > 2000, accepted


def test_a_timestamp_too_long_for_int_is_neutral_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signature's t= of 5,000 digits (past Python's int() limit) is refused as dkimpy refuses it."""
    key = dkimkeys.generate("rsa", 2048)
    resolver = Keys()
    owner, resolver.records[owner] = dkimkeys.dns_record(key, "r", DOMAIN)
    msg = HEADS[0] + b"\r\n" + BODIES[0]
    sig = dkim.sign(msg, b"r", DOMAIN.encode(), _pem(key), include_headers=[b"from", b"subject"])
    raw = re.sub(rb"t=\d+", b"t=" + b"9" * 5000, sig) + msg
    fast, slow = both(raw, resolver, monkeypatch)
    assert fast == slow and [r.result for r in fast] == ["neutral"]
