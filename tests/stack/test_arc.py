"""ARC sealing through the real Postfix: mail a virtual alias forwards off-site (forward-test@lawfirm.test ->
alice.home@example.test, postfix/dev/virtual.in) leaves with an ARC set that dkimpy's arc_verify passes with
the stack's DNS; the first hop seals cv=none, a message arriving with a valid ARC set gets i=2 cv=pass; mail
for the firm's own mailbox gets none."""

from __future__ import annotations

import json
import re
import uuid

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail.dns import Resolver

from .conftest import wait_for
from .test_inbound import send_raw

FORWARD = "forward-test@lawfirm.test"
OUTSIDE = "alice.home@example.test"


@pytest.fixture(scope="module")
def resolver(stack) -> Resolver:
    return Resolver(DNS(nameservers=("127.0.0.1",), port=stack.stack.ports.dns, timeout=2.0, cache_size=0))


def dnsfunc(resolver: Resolver):
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = resolver.txt(name.decode().rstrip("."))
        return records[0].encode() if records else None
    return lookup


def headers_of(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [line.split(":", 1)[1].strip() for line in unfolded.split("\r\n")
            if line.lower().startswith(name.lower() + ":")]


def delivered(stack, needle: str) -> tuple[bytes, dict]:
    path = stack.sink_with(needle.encode())
    return path.read_bytes(), json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def list_key(stack, resolver) -> dkimkeys.SigningKey:
    """A mailing list (list.test) that seals what it forwards; its key published in the stack's DNS."""
    key = dkimkeys.generate("rsa")
    owner, record = dkimkeys.dns_record(key, "arc", "list.test")
    tmp = stack.stack.dns_dir / ".list.test.tmp"
    tmp.write_text("$ORIGIN list.test.\n$TTL 300\n@ IN SOA ns.list.test. hostmaster.list.test. 1 3600 600 86400 300\n"
                   + dkimkeys.zone_line(owner, record, ttl=300) + "\n")
    tmp.rename(stack.stack.dns_dir / "list.test.zone")
    wait_for(lambda: _served(resolver, "arc._domainkey.list.test"), 10, "the DNS server to serve list.test")
    return dkimkeys.SigningKey("list.test", "arc", "rsa-sha256", key)


def _served(resolver: Resolver, name: str) -> bool:
    try:
        return bool(resolver.txt(name))
    except Exception:  # noqa: BLE001 - not loaded yet: ask again
        return False


def test_forwarded_mail_leaves_with_a_first_arc_set_that_verifies(stack, resolver):
    tag = uuid.uuid4().hex[:10]
    msg = stack.message("bob@example.test", [FORWARD], subject=f"arc first hop {tag}")
    qid = stack.inbound(msg, [FORWARD])
    raw, env = delivered(stack, f"arc first hop {tag}")
    assert env["rcpt_tos"] == [OUTSIDE] and env["mail_from"].startswith("SRS0=")

    cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc(resolver))
    assert cv == dkim.CV_Pass, why
    assert [r["instance"] for r in results] == [1]
    (seal,) = headers_of(raw, "ARC-Seal")
    assert re.search(r"\bcv=none\b", seal) and re.search(r"\bd=lawfirm\.test\b", seal)
    (aar,) = headers_of(raw, "ARC-Authentication-Results")
    assert aar.startswith("i=1; mx.lawfirm.test;") and "spf=pass" in aar and "arc=none" in aar
    ar = [v for v in headers_of(raw, "Authentication-Results") if v.startswith("mx.lawfirm.test")]
    assert len(ar) == 1 and "arc=none" in ar[0]
    line = stack.log_line("milter", qid, "arc=sealed")
    assert "i=1 cv=none" in line and f"forwarded_to=<{OUTSIDE}>" in line


def test_a_valid_prior_chain_is_continued_with_cv_pass(stack, resolver, list_key):
    tag = uuid.uuid4().hex[:10]
    msg = stack.message("bob@example.test", [FORWARD], subject=f"arc second hop {tag}")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    raw = b"Authentication-Results: mx.list.test; spf=pass smtp.mailfrom=bob@example.test\r\n" + raw
    pem = list_key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
    sealed = b"".join(dkim.arc_sign(raw, b"arc", b"list.test", pem, b"mx.list.test")) + raw
    assert dkim.arc_verify(sealed, dnsfunc=dnsfunc(resolver))[0] == dkim.CV_Pass  # the list's own set is valid
    code, text = send_raw(stack, sealed, "bob@example.test", FORWARD)
    assert code == 250, text

    out, env = delivered(stack, f"arc second hop {tag}")
    assert env["rcpt_tos"] == [OUTSIDE]
    cv, results, why = dkim.arc_verify(out, dnsfunc=dnsfunc(resolver))
    assert cv == dkim.CV_Pass, why
    assert sorted(r["instance"] for r in results) == [1, 2]
    seals = headers_of(out, "ARC-Seal")
    ours = next(s for s in seals if re.search(r"\bi=2\b", s))
    assert re.search(r"\bcv=pass\b", ours) and re.search(r"\bd=lawfirm\.test\b", ours)
    aar = next(a for a in headers_of(out, "ARC-Authentication-Results") if a.startswith("i=2"))
    assert "mx.lawfirm.test" in aar and "arc=pass" in aar


def test_mail_for_the_firms_own_mailbox_gets_no_arc_set(stack):
    tag = uuid.uuid4().hex[:10]
    msg = stack.message("bob@example.test", ["alice@lawfirm.test"], subject=f"arc not forwarded {tag}")
    qid = stack.inbound(msg, ["alice@lawfirm.test"])
    raw, env = delivered(stack, f"arc not forwarded {tag}")
    assert env["rcpt_tos"] == ["alice@lawfirm.test"]
    assert headers_of(raw, "ARC-Seal") == [] and headers_of(raw, "ARC-Message-Signature") == []
    assert headers_of(raw, "ARC-Authentication-Results") == []
    line = stack.log_line("milter", qid, "verdict=")
    assert " arc=" not in line
