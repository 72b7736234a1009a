"""DKIM signing (mattermail.milter.dkim_sign) and keys (mattermail.dkimkeys).

dkimpy is the reference verifier; OpenDKIM's ``opendkim -t`` is a second one
when it is installed.  Messages are verified as they leave Postfix: each
returned value written after ``DKIM-Signature: `` at the top, every line
ending in CRLF.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mattermail import dkimkeys
from mattermail.dkimkeys import SigningKey
from mattermail.milter import dkim_sign
from mattermail.milter.dkim_sign import body_hash, select_keys, sign

ROOT = Path(__file__).resolve().parents[2]
EMPTY_BODY_HASH = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # sha256 of b""
NOW = 1_700_000_000

HEADERS: list[tuple[str, str]] = [
    ("Received", "from client.example.com (client [192.0.2.1])\r\n\tby mx.lawfirm.test"),
    ("From", "Alice Lawyer <alice@lawfirm.test>"),
    ("To", "Bob Client <bob@example.net>"),
    ("Subject", "Matter 1234: draft contract"),
    ("Date", "Mon, 01 Jan 2024 10:00:00 +0000"),
    ("Message-ID", "<20240101100000.1234@lawfirm.test>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
    ("X-Mailer", "test"),
]
BODY = b"Dear Bob,\r\n\r\nPlease find the draft below.\r\n\r\nAlice\r\n"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("lawfirm.test", "mm-rsa", "rsa-sha256", dkimkeys.generate("rsa", 2048))


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey("lawfirm.test", "mm-ed", "ed25519-sha256", dkimkeys.generate("ed25519"))


def test_dkimpy_has_its_ed25519_backend():
    """dkimpy verifies ed25519-sha256 only with PyNaCl, which its [ed25519] extra (setup.cfg) installs."""
    import nacl.signing  # noqa: F401 - an ImportError here is the failure


def records(*keys: SigningKey) -> dict[bytes, bytes]:
    """DNS TXT records (as dkimpy's dnsfunc wants them) publishing ``keys``."""
    out = {}
    for key in keys:
        owner, txt = dkimkeys.dns_record(key.private_key, key.selector, key.domain)
        out[(owner + ".").encode()] = txt.encode()
    return out


def dnsfunc(recs: dict[bytes, bytes]):
    return lambda name, timeout=5: recs.get(name)


def wire(headers, body: bytes) -> bytes:
    """The message as Postfix sends it: every line, folded ones too, ending in CRLF."""
    def crlf(data: bytes) -> bytes:
        return re.sub(rb"\r?\n", b"\r\n", data)

    head = b"".join(
        crlf(name.encode() + b": " + dkim_sign._as_bytes(value)) + b"\r\n" for name, value in headers
    )
    return head + b"\r\n" + crlf(body)


def signed(headers, body: bytes, keys, now: int = NOW) -> tuple[list[tuple[str, str]], list]:
    """Sign, then prepend the signatures as a milter does with addheader(idx=0)."""
    sigs = sign(headers, body, keys, now=now)
    out = list(headers)
    for sig in sigs:
        out.insert(0, sig)
    return sigs, out


def verify_each(message: bytes, recs: dict[bytes, bytes]) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of ``message``, top to bottom."""
    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    verdicts = []
    for i in range(count):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc(recs))))
        except dkim.DKIMException:  # e.g. "body hash mismatch" is raised, not returned
            verdicts.append(False)
    return verdicts


def sig_tags(value: str) -> dict[str, str]:
    unfolded = re.sub(r"\s+", " ", value)
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in unfolded.split(";"))}


# --------------------------------------------------------------------------- signing


def test_rsa_2048_verifies(rsa_key):
    sigs, headers = signed(HEADERS, BODY, [rsa_key])
    assert len(sigs) == 1 and sigs[0][0] == "DKIM-Signature"
    msg = wire(headers, BODY)
    assert verify_each(msg, records(rsa_key)) == [True]
    assert dkim.verify(msg, dnsfunc=dnsfunc(records(rsa_key)))


def test_ed25519_verifies(ed_key):
    sigs, headers = signed(HEADERS, BODY, [ed_key])
    assert sig_tags(sigs[0][1])["a"] == "ed25519-sha256"
    assert verify_each(wire(headers, BODY), records(ed_key)) == [True]


def test_dual_signing_both_verify(rsa_key, ed_key):
    sigs, headers = signed(HEADERS, BODY, [ed_key, rsa_key])
    assert [sig_tags(v)["a"] for _, v in sigs] == ["ed25519-sha256", "rsa-sha256"]
    # the body hash is computed once and is the same in both
    assert sig_tags(sigs[0][1])["bh"] == sig_tags(sigs[1][1])["bh"] == body_hash(BODY)
    assert verify_each(wire(headers, BODY), records(ed_key, rsa_key)) == [True, True]


def test_tags(rsa_key):
    (_, value), = sign(HEADERS, BODY, [rsa_key], now=NOW)
    tags = sig_tags(value)
    assert tags["v"] == "1" and tags["c"] == "relaxed/relaxed"
    assert tags["d"] == "lawfirm.test" and tags["s"] == "mm-rsa" and tags["t"] == str(NOW)
    assert "l" not in tags and "x" not in tags


def test_default_timestamp_is_now(rsa_key):
    import time

    before = int(time.time())
    (_, value), = sign(HEADERS, BODY, [rsa_key])
    assert before <= int(sig_tags(value)["t"]) <= int(time.time())


def test_no_keys_no_signatures():
    assert sign(HEADERS, BODY, []) == []


def test_header_list_signs_recommended_and_oversigns(rsa_key):
    headers = HEADERS + [
        ("Return-Path", "<alice@lawfirm.test>"),
        ("Authentication-Results", "mx.lawfirm.test; dkim=pass"),
        ("DKIM-Signature", "v=1; a=rsa-sha256; d=old.test; s=x; b=AAAA"),
        ("Bcc", "secret@example.org"),
        ("X-Spam-Status", "No"),
        ("List-Unsubscribe", "<mailto:unsub@lawfirm.test>"),
        ("To", "Second <second@example.net>"),
    ]
    (_, value), = sign(headers, BODY, [rsa_key], now=NOW)
    h = re.split(r"\s*:\s*", sig_tags(value)["h"])
    for never in ("received", "return-path", "authentication-results", "dkim-signature",
                  "bcc", "x-spam-status", "x-mailer"):
        assert never not in h
    assert "list-unsubscribe" in h and "mime-version" in h and "content-type" in h
    # oversigned: one more than present (Cc and Reply-To are absent: listed once)
    assert h.count("from") == 2 and h.count("to") == 3 and h.count("subject") == 2
    assert h.count("date") == 2 and h.count("message-id") == 2
    assert h.count("cc") == 1 and h.count("reply-to") == 1
    assert h.count("mime-version") == 1


def test_value_shape_for_postfix(rsa_key, ed_key):
    for value in (v for _, v in sign(HEADERS, BODY, [rsa_key, ed_key], now=NOW)):
        assert value[0] not in " \t\r\n"
        assert "\r" not in value  # milter addheader wants LF; Postfix writes CRLF
        lines = ("DKIM-Signature: " + value).split("\n")
        assert all(len(line) <= 78 for line in lines)
        assert all(line[0] == "\t" for line in lines[1:])
    (_, crlf_value), = sign(HEADERS, BODY, [rsa_key], now=NOW, linesep="\r\n")
    assert "\r\n\t" in crlf_value and "\n\t" not in crlf_value.replace("\r\n\t", "")


def test_folded_headers(rsa_key):
    headers = [
        ("From", "\"Lawyer, Alice\"\r\n <alice@lawfirm.test>"),
        ("To", "bob@example.net,\r\n\tcarol@example.net,\r\n  dave@example.net"),
        ("Subject", "a very long subject that was folded\r\n by the client"),
        ("Date", "Mon, 01 Jan 2024 10:00:00 +0000"),
    ]
    _, out = signed(headers, BODY, [rsa_key])
    assert verify_each(wire(out, BODY), records(rsa_key)) == [True]


def test_lf_only_line_ends(rsa_key):
    """Folding and body lines with bare LF: Postfix sends them as CRLF lines."""
    headers = [("From", "alice@lawfirm.test"), ("Subject", "folded\n\twith LF"),
               ("To", "bob@example.net")]
    body = b"line one\nline two\r\nline three\n\n"
    sigs, out = signed(headers, body, [rsa_key])
    msg = wire(out, body)
    assert verify_each(msg, records(rsa_key)) == [True]
    # the same message written with CRLF from the start has the same body hash
    assert sig_tags(sigs[0][1])["bh"] == body_hash(re.sub(rb"\r?\n", b"\r\n", body))


@pytest.mark.parametrize("body", [b"", b"\r\n", b"\r\n\r\n\r\n", b"  \r\n\t\r\n"])
def test_empty_body(rsa_key, body):
    sigs, out = signed(HEADERS, body, [rsa_key])
    assert sig_tags(sigs[0][1])["bh"] == EMPTY_BODY_HASH
    assert verify_each(wire(out, body), records(rsa_key)) == [True]


def test_trailing_blank_lines_and_whitespace(rsa_key):
    body = b"text  with \t spaces \r\nmore\t\r\n\r\n\r\n\r\n"
    sigs, out = signed(HEADERS, body, [rsa_key])
    assert verify_each(wire(out, body), records(rsa_key)) == [True]
    # relaxed: trailing blank lines and WSP runs do not matter...
    relaxed_same = b"text with spaces\r\nmore\r\n"
    assert verify_each(wire(out, relaxed_same), records(rsa_key)) == [True]
    assert body_hash(b"no final newline") == body_hash(b"no final newline\r\n")


def test_body_canonicalization_matches_dkimpy():
    """Random bodies of letters, SP, TAB and CRLF: same relaxed form as dkimpy's."""
    import hashlib
    import random

    from dkim.canonicalization import Relaxed

    rng = random.Random(6376)
    for _ in range(2000):
        body = b"".join(rng.choice([b"a", b"b", b" ", b"\t", b"\r\n", b"\r\n"])
                        for _ in range(rng.randrange(0, 40)))
        # Postfix ends every body line with CRLF.  (Without a final CRLF dkimpy keeps
        # the last line's trailing WSP; we drop it, as the verifier will after
        # the MTA completes the line.)
        body += b"\r\n" if body else b""
        want = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())
        assert body_hash(body) == want.decode(), body


def test_header_canonicalization_matches_dkimpy():
    from dkim.canonicalization import Relaxed

    for name, value in [("SUBJECT ", "  a \t b\r\n\t c  "), ("To", "x,\r\n y"), ("X", "")]:
        (n, v), = Relaxed.canonicalize_headers([(name.encode(), value.encode())])
        assert dkim_sign._relaxed_header(name, value) == n + b":" + v


def test_odd_whitespace_and_case(rsa_key):
    headers = [
        ("FROM", "   Alice   <alice@lawfirm.test>   "),
        ("to", "\tbob@example.net\t"),
        ("SuBjEcT", "lots   of\t\tspace   here  "),
        ("Message-Id", "<x@lawfirm.test>"),
        ("content-TYPE", "text/plain;\r\n    charset=\"us-ascii\""),
    ]
    sigs, out = signed(headers, BODY, [rsa_key])
    h = sig_tags(sigs[0][1])["h"]
    assert h == h.lower() and "message-id" in h and "content-type" in h
    assert verify_each(wire(out, BODY), records(rsa_key)) == [True]


def test_8bit_header_values(rsa_key, ed_key):
    latin1 = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # how pymilter hands it over
    headers = [
        ("From", "Jürgen Müller <juergen@lawfirm.test>"),
        ("To", "Zoë <zoe@example.net>"),
        ("Subject", "Grüße – 日本語"),
        ("Comments", latin1),
        ("Date", "Mon, 01 Jan 2024 10:00:00 +0000"),
    ]
    _, out = signed(headers, BODY, [rsa_key, ed_key])
    assert verify_each(wire(out, BODY), records(rsa_key, ed_key)) == [True, True]
    # bytes values are accepted too and sign the same bytes
    byte_headers = [(n, dkim_sign._as_bytes(v)) for n, v in headers]
    a = sign(headers, BODY, [ed_key], now=NOW)
    b = sign(byte_headers, BODY, [ed_key], now=NOW)
    assert a == b  # Ed25519 is deterministic


@pytest.mark.parametrize(
    "added",
    [
        ("From", "Mallory <mallory@evil.example>"),
        ("Subject", "Pay to this account instead"),
        ("Cc", "mallory@evil.example"),
        ("Reply-To", "mallory@evil.example"),
        ("Date", "Tue, 02 Jan 2024 10:00:00 +0000"),
        ("Message-ID", "<forged@evil.example>"),
        ("To", "another@evil.example"),
    ],
)
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_adding_an_oversigned_header_breaks_the_signature(rsa_key, added, where):
    _, out = signed(HEADERS, BODY, [rsa_key])
    out = [added] + out if where == "top" else out + [added]
    assert verify_each(wire(out, BODY), records(rsa_key)) == [False]


def test_adding_unsigned_headers_keeps_it_valid(rsa_key, ed_key):
    _, out = signed(HEADERS, BODY, [rsa_key, ed_key])
    out = [
        ("Received", "from mx.lawfirm.test by mx.example.net"),
        ("Authentication-Results", "mx.example.net; dkim=pass"),
        ("Return-Path", "<alice@lawfirm.test>"),
    ] + out + [("X-Spam-Score", "0.1")]
    assert verify_each(wire(out, BODY), records(rsa_key, ed_key)) == [True, True]


def test_modified_body_or_header_fails(rsa_key, ed_key):
    _, out = signed(HEADERS, BODY, [rsa_key, ed_key])
    recs = records(rsa_key, ed_key)
    assert verify_each(wire(out, BODY + b"P.S. wire the money\r\n"), recs) == [False, False]
    assert verify_each(wire(out, BODY.replace(b"Bob", b"Rob")), recs) == [False, False]
    tampered = [(n, "Matter 9999" if n == "Subject" else v) for n, v in out]
    assert verify_each(wire(tampered, BODY), recs) == [False, False]


def test_signature_order_does_not_matter(rsa_key, ed_key):
    sigs = sign(HEADERS, BODY, [rsa_key, ed_key], now=NOW)
    out = list(sigs) + list(HEADERS)  # appended instead of prepended
    assert verify_each(wire(out, BODY), records(rsa_key, ed_key)) == [True, True]


# --------------------------------------------------------------------------- key selection


def test_select_keys(rsa_key, ed_key):
    table = {"lawfirm.test": [rsa_key, ed_key]}
    assert select_keys("lawfirm.test", table, False) == [ed_key, rsa_key]
    assert select_keys("LawFirm.Test.", table, False) == [ed_key, rsa_key]
    assert select_keys("mail.lawfirm.test", table, False) == []
    sub = select_keys("a.mail.lawfirm.test", table, True)
    assert sub == [ed_key, rsa_key] and all(k.domain == "lawfirm.test" for k in sub)
    assert select_keys("other.test", table, True) == []
    assert select_keys("", table, True) == []
    assert select_keys("test", {"test": [rsa_key]}, True) == [rsa_key]  # exact match only


def test_select_keys_prefers_nearest_parent(rsa_key, ed_key):
    mail = SigningKey("mail.lawfirm.test", "m", "ed25519-sha256", ed_key.private_key)
    table = {"lawfirm.test": [rsa_key], "mail.lawfirm.test": [mail]}
    assert select_keys("x.mail.lawfirm.test", table, True) == [mail]
    assert select_keys("lawfirm.test", table, True) == [rsa_key]
    assert select_keys("x.test", {"test": [rsa_key]}, True) == []  # never a bare TLD


def test_signing_key_checks_algorithm(ed_key):
    with pytest.raises(ValueError):
        SigningKey("lawfirm.test", "x", "rsa-sha256", ed_key.private_key)


# --------------------------------------------------------------------------- RFC 8463 vectors


def _stalwart(corpus, name: str) -> tuple[dict[bytes, bytes], bytes]:
    """A corpus file: its DNS records and its message (CRLF line ends)."""
    path = corpus / "dkim" / "stalwart" / "dkim" / name
    dns_part, message = path.read_bytes().split(b"\n\n", 1)
    recs = {}
    for line in dns_part.splitlines():
        owner, _, txt = line.partition(b" ")
        recs[owner + b"."] = txt
    return recs, re.sub(rb"\r?\n", b"\r\n", message)


def _parse(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    headers: list[tuple[str, str]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + "\r\n" + line.decode())
        else:
            name, _, value = line.decode().partition(":")
            headers.append((name, value.lstrip(" ")))
    return headers, body


# RFC 8463 Appendix A.2: the Ed25519 secret key (it is RFC 8032's test vector 1).
RFC8463_SEED = base64.b64decode("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")


def test_rfc8463_key_matches_published_record(corpus):
    recs, _ = _stalwart(corpus, "001.txt")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(RFC8463_SEED)
    txt = recs[b"brisbane._domainkey.football.example.com."].decode()
    assert dkimkeys.public_key_matches(key, txt)
    assert not dkimkeys.public_key_matches(dkimkeys.generate("ed25519"), txt)
    assert not dkimkeys.public_key_matches(key, recs[b"test._domainkey.football.example.com."].decode())
    owner, ours = dkimkeys.dns_record(key, "brisbane", "football.example.com")
    assert (owner + ".").encode() in recs and ours.endswith(txt.split("p=")[1])


def test_rfc8463_reproduce_signature_exactly(corpus):
    """Our canonicalization and Ed25519-SHA256 give the RFC's b= bit for bit."""
    _, message = _stalwart(corpus, "001.txt")
    headers, body = _parse(message)
    sig_value = next(v for n, v in headers if n.lower() == "dkim-signature")
    tags = sig_tags(sig_value)
    assert tags["a"] == "ed25519-sha256"
    assert body_hash(body) == tags["bh"]
    names = [n.lower() for n in re.split(r"\s*:\s*", tags["h"])]
    unsigned = re.sub(r"(b=)[A-Za-z0-9+/=\s]*$", r"\1", sig_value)
    data = (dkim_sign._signed_header_block(headers, names)
            + dkim_sign._relaxed_header("DKIM-Signature", unsigned)[:-2])
    key = SigningKey("football.example.com", "brisbane", "ed25519-sha256",
                     ed25519.Ed25519PrivateKey.from_private_bytes(RFC8463_SEED))
    assert dkim_sign._sign_digest_input(key, data) == base64.b64decode(re.sub(r"\s", "", tags["b"]))


def test_rfc8463_resign_verifies(corpus):
    recs, message = _stalwart(corpus, "001.txt")
    headers, body = _parse(message)
    assert verify_each(message, recs) == [True, True]  # the reference verifier agrees with the RFC
    plain = [(n, v) for n, v in headers if n.lower() != "dkim-signature"]
    key = SigningKey("football.example.com", "brisbane", "ed25519-sha256",
                     ed25519.Ed25519PrivateKey.from_private_bytes(RFC8463_SEED))
    _, out = signed(plain, body, [key])
    assert verify_each(wire(out, body), recs) == [True]


@pytest.mark.parametrize("name", ["003.txt", "004.txt", "005.txt", "006.txt"])
def test_resign_real_world_messages(rsa_key, ed_key, name, corpus):
    """Real messages (lists, Facebook, GitHub) re-signed by us verify."""
    _, message = _stalwart(corpus, name)
    headers, body = _parse(message)
    plain = [(n, v) for n, v in headers if n.lower() != "dkim-signature"]
    _, out = signed(plain, body, [ed_key, rsa_key])
    assert verify_each(wire(out, body), records(ed_key, rsa_key)) == [True, True]


# --------------------------------------------------------------------------- OpenDKIM


OPENDKIM = shutil.which("opendkim") or next(
    (p for p in ("/usr/sbin/opendkim",) if os.access(p, os.X_OK)), None
)


@pytest.mark.skipif(
    OPENDKIM is None,
    reason="OpenDKIM is not installed (apt-get install opendkim): no second verifier; "
    "opendkim-testmsg itself cannot be given test keys, so `opendkim -t` with TestPublicKeys is used",
)
def test_opendkim_verifies(tmp_path, rsa_key, ed_key):
    keyfile = tmp_path / "keys"
    keyfile.write_text("".join(
        f"{dkimkeys.dns_record(k.private_key, k.selector, k.domain)[0]} "
        f"{dkimkeys.dns_record(k.private_key, k.selector, k.domain)[1]}\n" for k in (rsa_key, ed_key)
    ))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"TestPublicKeys {keyfile}\nSyslog no\nMode v\n")
    headers = HEADERS + [("Subject", "second subject"), ("Cc", "x@example.net,\r\n\ty@example.net")]

    def results(msg: bytes) -> dict[str, str]:
        path = tmp_path / "msg.eml"
        path.write_bytes(msg)
        proc = subprocess.run([OPENDKIM, "-x", str(conf), "-vv", "-t", str(path)],
                              capture_output=True, timeout=60)
        out = proc.stdout.decode(errors="replace")
        return dict((s, r) for r, s in re.findall(r"dkim=(\w+)[^;]*?header\.s=([\w.-]+)", out))

    _, out = signed(headers, BODY, [ed_key, rsa_key])
    assert results(wire(out, BODY)) == {"mm-ed": "pass", "mm-rsa": "pass"}
    assert results(wire(out, BODY + b"tampered\r\n")) == {"mm-ed": "fail", "mm-rsa": "fail"}
    assert results(wire(out + [("From", "mallory@evil.example")], BODY)) == {
        "mm-ed": "fail", "mm-rsa": "fail"}


# --------------------------------------------------------------------------- dkimkeys


def test_generate():
    assert isinstance(dkimkeys.generate("ed25519"), ed25519.Ed25519PrivateKey)
    key = dkimkeys.generate("rsa", 1024)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 1024
    with pytest.raises(ValueError):
        dkimkeys.generate("rsa", 512)
    with pytest.raises(ValueError):
        dkimkeys.generate("dsa")  # type: ignore[arg-type]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_write_private_key_mode_and_roundtrip(tmp_path, ed_key, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "keys" / "lawfirm.test" / "sel.ed25519.pem"
        dkimkeys.write_private_key(path, ed_key.private_key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    loaded = dkimkeys.load_private_key(path)
    assert dkimkeys.public_key_matches(loaded, dkimkeys.dns_record(ed_key.private_key, "s", "d")[1])


def test_write_private_key_replaces_and_refuses_world_access(tmp_path, rsa_key, ed_key):
    path = tmp_path / "k.pem"
    dkimkeys.write_private_key(path, ed_key.private_key)
    dkimkeys.write_private_key(path, rsa_key.private_key, mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert isinstance(dkimkeys.load_private_key(path), rsa.RSAPrivateKey)
    with pytest.raises(ValueError):
        dkimkeys.write_private_key(tmp_path / "w.pem", ed_key.private_key, mode=0o644)
    assert not (tmp_path / "w.pem").exists()


def test_load_private_key_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError):
        dkimkeys.load_private_key(bad)


def test_dns_record(rsa_key, ed_key):
    owner, txt = dkimkeys.dns_record(rsa_key.private_key, "mm-rsa", "LawFirm.Test.")
    assert owner == "mm-rsa._domainkey.lawfirm.test"
    assert txt.startswith("v=DKIM1; k=rsa; p=MII")
    owner, txt = dkimkeys.dns_record(ed_key.private_key.public_key(), "mm-ed", "lawfirm.test")
    assert txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(txt.split("p=")[1])) == 32


@pytest.mark.parametrize("bits", [1024, 2048, 4096])
def test_txt_strings(bits):
    key = dkimkeys.generate("rsa", bits)
    _, txt = dkimkeys.dns_record(key, "s", "lawfirm.test")
    strings = dkimkeys.txt_strings(txt)
    assert "".join(strings) == txt
    assert all(0 < len(s.encode()) <= 255 for s in strings)
    assert strings[0] == "v=DKIM1; k=rsa; " and strings[1].startswith("p=")
    assert dkimkeys.txt_strings("v=DKIM1; p=") == ["v=DKIM1; ", "p="]
    long = "x" * 600
    assert dkimkeys.txt_strings(long) == ["x" * 255, "x" * 255, "x" * 90]


def test_zone_line(rsa_key):
    owner, txt = dkimkeys.dns_record(rsa_key.private_key, "mm-rsa", "lawfirm.test")
    line = dkimkeys.zone_line(owner, txt)
    m = re.fullmatch(r'mm-rsa\._domainkey\.lawfirm\.test\. 3600 IN TXT \( ((?:"[^"]*" ?)+)\)', line)
    assert m, line
    assert line.startswith('mm-rsa._domainkey.lawfirm.test. 3600 IN TXT ( "v=DKIM1; k=rsa; " "p=')
    assert "".join(re.findall(r'"([^"]*)"', m.group(1))) == txt
    assert dkimkeys.zone_line(owner + ".", txt, ttl=300).startswith(owner + ". 300 IN TXT (")
    # what `dns check` reads back from a zone file matches too
    assert dkimkeys.public_key_matches(rsa_key.private_key, line.split("TXT", 1)[1])


def test_public_key_matches(rsa_key, ed_key):
    r_txt = dkimkeys.dns_record(rsa_key.private_key, "s", "d")[1]
    e_txt = dkimkeys.dns_record(ed_key.private_key, "s", "d")[1]
    assert dkimkeys.public_key_matches(rsa_key.private_key, r_txt)
    assert dkimkeys.public_key_matches(ed_key.private_key, e_txt)
    assert not dkimkeys.public_key_matches(rsa_key.private_key, e_txt)
    assert not dkimkeys.public_key_matches(ed_key.private_key, r_txt)
    assert not dkimkeys.public_key_matches(dkimkeys.generate("rsa", 1024), r_txt)
    assert not dkimkeys.public_key_matches(rsa_key.private_key, "v=DKIM1; k=rsa; p=")  # revoked
    assert not dkimkeys.public_key_matches(rsa_key.private_key, "v=DKIM1; k=rsa; p=!!notb64")
    assert not dkimkeys.public_key_matches(rsa_key.private_key, "v=DKIM1; k=rsa; p=AAAA")
    assert not dkimkeys.public_key_matches(rsa_key.private_key, r_txt.replace("DKIM1", "DKIM2"))
    assert not dkimkeys.public_key_matches(rsa_key.private_key, "")
    # tolerant of how DNS tools print it: no v=/k=, spaces inside p=, PKCS#1 key data
    p = r_txt.split("p=")[1]
    assert dkimkeys.public_key_matches(rsa_key.private_key, f"p={p[:100]} {p[100:]}")
    from cryptography.hazmat.primitives import serialization
    pkcs1 = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert dkimkeys.public_key_matches(
        rsa_key.private_key, "v=DKIM1; p=" + base64.b64encode(pkcs1).decode())


def test_public_key_matches_corpus_pkcs1_record(corpus):
    recs, _ = _stalwart(corpus, "002.txt")  # an RSA key published as bare PKCS#1
    txt = recs[b"newengland._domainkey.example.com."].decode()
    assert not dkimkeys.public_key_matches(dkimkeys.generate("rsa", 1024), txt)


def test_load_keytable(tmp_path, rsa_key, ed_key):
    keys = tmp_path / "keys"
    dkimkeys.write_private_key(keys / "LawFirm.test" / "mm2024.rsa.pem", rsa_key.private_key)
    dkimkeys.write_private_key(keys / "LawFirm.test" / "mm2024e.ed25519.pem", ed_key.private_key)
    dkimkeys.write_private_key(keys / "other.test" / "2024.01.ed25519.pem", ed_key.private_key)
    dkimkeys.write_private_key(keys / "other.test" / "old.rsa.pem.retired", rsa_key.private_key)
    (keys / "other.test" / "README").write_text("ignored")
    (keys / "other.test" / "s.rsa.txt").write_text("ignored")
    (keys / "README").write_text("ignored")
    table = dkimkeys.load_keytable(keys)
    assert sorted(table) == ["lawfirm.test", "other.test"]
    assert [(k.selector, k.algorithm, k.domain) for k in table["lawfirm.test"]] == [
        ("mm2024e", "ed25519-sha256", "lawfirm.test"), ("mm2024", "rsa-sha256", "lawfirm.test")]
    assert [k.selector for k in table["other.test"]] == ["2024.01"]
    assert dkimkeys.load_keytable(tmp_path / "missing") == {}
    # the loaded table signs, and verifies
    chosen = select_keys("lawfirm.test", table, False)
    _, out = signed(HEADERS, BODY, chosen[1:])
    assert verify_each(wire(out, BODY), records(*chosen)) == [True]


def test_load_keytable_rejects_mislabelled_key(tmp_path, ed_key):
    dkimkeys.write_private_key(tmp_path / "lawfirm.test" / "s.rsa.pem", ed_key.private_key)
    with pytest.raises(ValueError, match="s.rsa.pem"):
        dkimkeys.load_keytable(tmp_path)


def test_streaming_body_hash_matches_whole_body_hash():
    import random

    from mattermail.milter.dkim_sign import BodyHasher, body_hash

    rng = random.Random(7)
    alphabet = [b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r\n\r\n", b"  \r\n", b"x y"]
    for _ in range(500):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        h = BodyHasher()
        pos = 0
        while pos < len(body):
            step = rng.randint(1, 7)
            h.update(body[pos:pos + step])
            pos += step
        assert h.hexdigest_b64() == body_hash(body), body


def test_body_hash_over_ranges_of_a_buffer_matches_whole_body_hash():
    """update_range (the milter's in-memory path, no copies) agrees with body_hash, whatever the
    line ends (CRLF, bare LF, lone CR) and whitespace, and wherever the ranges are cut."""
    import random

    from mattermail.milter.dkim_sign import BodyHasher, body_hash

    rng = random.Random(11)
    alphabet = [b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\r\n\r\n", b"  \r\n", b" \r", b"x y",
                b"long line " * 20 + b"\r\n"]
    for _ in range(800):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        head = b"Subject: x\r\n\r\n"
        buf = head + body
        h = BodyHasher()
        pos = len(head)
        while pos < len(buf):
            step = rng.choice([1, 3, 17, 500, len(buf)])
            if rng.random() < 0.2:
                h.update(memoryview(buf)[pos:pos + step])
            else:
                h.update_range(buf, pos, min(len(buf), pos + step))
            pos += step
        extra = rng.choice([b"", b"\r\n-- \r\nDisclaimer.\r\n", b"tail without newline"])
        h.update(extra)
        assert h.hexdigest_b64() == body_hash(body + extra), body


def test_cached_fold_layout_equals_a_fresh_fold():
    import random

    from mattermail.milter.dkim_sign import _fold, _fold_layout

    rng = random.Random(3)
    for _ in range(300):
        names = ":".join(rng.choice(["from", "to", "subject", "date", "message-id", "content-type"])
                         for _ in range(rng.randint(1, 14)))
        tags = [("v", "1"), ("a", "rsa-sha256"), ("c", "relaxed/relaxed"), ("d", rng.choice(["a.test", "lawfirm.test"])),
                ("s", rng.choice(["s", "dev2026r"])), ("t", str(rng.randint(10**9, 10**10 - 1))), ("h", names),
                ("bh", "".join(rng.choice("AB+/=") for _ in range(44))), ("b", "")]
        for linesep in ("\n", "\r\n"):
            assert _fold(tags, linesep) == "".join(_fold_layout(tags, linesep)[0])
