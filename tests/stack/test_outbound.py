"""Outbound, end to end: sender check, capture, disclaimer and DKIM through the real stack."""

from __future__ import annotations

import json
import subprocess
import smtplib
import sqlite3
from email import message_from_bytes, policy

import dkim
import dns.resolver
import pytest

from .conftest import wait_for

DISCLAIMER = "This email and any attachment are confidential. -- Lawfirm LLP"


@pytest.fixture(scope="module", autouse=True)
def disclaimer(stack, tmp_path_factory):
    f = tmp_path_factory.mktemp("disc") / "d.txt"
    f.write_text(DISCLAIMER + "\n")
    r = stack.ctl("disclaimer", "set", "--text", str(f))
    assert r.returncode == 0, r.stderr


def dkim_results(stack, raw: bytes) -> list[bool]:
    """Verify every DKIM-Signature with dkimpy against the stack's own DNS server."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = stack.stack.ports.dns

    def dnsfunc(name, timeout=5):
        ans = r.resolve(name.decode().rstrip(".") + ".", "TXT")
        return b"".join(b"".join(x.strings) for x in ans)

    n = sum(1 for k, _ in dkim.DKIM(raw).headers if k.lower() == b"dkim-signature")
    return [dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc) for i in range(n)]


def sink_envelopes(stack, needle: bytes) -> list[tuple[bytes, dict]]:
    out = []
    for p in stack.sink_files():
        raw = p.read_bytes()
        if needle in raw:
            out.append((raw, json.loads(p.with_suffix(".json").read_text())))
    return out


def test_alice_as_alice_is_delivered(stack):
    msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="alice as alice")
    stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
    stack.sink_with(msg["Message-ID"].encode())


def test_envelope_sender_not_owned_is_refused_by_postfix_before_data(stack):
    """The sender login map (written by mattermailctl user) lets Postfix refuse at RCPT time."""
    with stack.submission() as c:
        stack.tls(c)
        c.login("alice@lawfirm.test", "correct-horse-battery")
        c.mail("bob@lawfirm.test")
        code, text = c.rcpt("someone@example.test")
    assert code == 553 and b"not owned by user alice@lawfirm.test" in text


def test_from_header_not_owned_is_refused(stack):
    msg = stack.message("bob@lawfirm.test", ["someone@example.test"])
    with stack.submission() as c:
        stack.tls(c)
        c.login("alice@lawfirm.test", "correct-horse-battery")
        assert c.mail("alice@lawfirm.test")[0] == 250
        assert c.rcpt("someone@example.test")[0] == 250
        code, text = c.data(msg.as_bytes())
    assert code == 553
    assert b"5.7.1 <alice@lawfirm.test> may not send as <bob@lawfirm.test>" in text


def test_message_without_from_gets_the_login_as_from(stack):
    """Postfix adds a missing From: (the envelope sender) before the milter sees the headers,
    so the ownership check and the signature cover it. (The milter's own no-From reply is unit-tested.)"""
    with stack.submission() as c:
        stack.tls(c)
        c.login("alice@lawfirm.test", "correct-horse-battery")
        c.mail("alice@lawfirm.test")
        c.rcpt("someone@example.test")
        code, _ = c.data(b"Subject: no from header\r\n\r\nbody\r\n")
    assert code == 250
    raw = stack.sink_with(b"no from header").read_bytes()
    assert b"\r\nFrom: alice@lawfirm.test\r\n" in raw
    assert all(dkim_results(stack, raw))


def test_to_cc_bcc_each_get_one_signed_copy_with_one_disclaimer_and_capture_has_the_envelope(stack):
    subject = "matter 1234 update"
    msg = stack.message("alice@lawfirm.test", ["client@example.test"], subject=subject,
                        Cc="counsel@other.test", body="Please find the update.\n")
    rcpts = ["client@example.test", "counsel@other.test", "partner-bcc@example.test"]
    qid = stack.submit("alice@lawfirm.test", msg, rcpts)
    wait_for(lambda: sum(len(e["rcpt_tos"]) for _, e in sink_envelopes(stack, msg["Message-ID"].encode())) >= 3,
             what="all three recipients at the sink")
    copies = sink_envelopes(stack, msg["Message-ID"].encode())
    delivered_to = sorted(r for _, e in copies for r in e["rcpt_tos"])
    assert delivered_to == sorted(rcpts)  # each recipient exactly once
    for raw, _ in copies:
        parsed = message_from_bytes(raw, policy=policy.default)
        assert parsed.get_content().count(DISCLAIMER) == 1
        assert b"partner-bcc" not in raw  # nobody learns who was Bcc'd
        assert b"capture" not in raw.lower()
        results = dkim_results(stack, raw)
        assert len(results) == 2 and all(results), results  # RSA and Ed25519

    line = stack.log_line("router", qid, "capture=")
    assert "envelope_rcpts=3" in line
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    ref = db.execute("SELECT c.ref FROM captures c JOIN messages m ON m.id = c.message WHERE c.verified = 1"
                     " AND m.message_id = ?", [msg["Message-ID"]]).fetchone()[0]
    env = db.execute("SELECT mail_from, recipients, login, queue_id FROM envelopes WHERE ref = ?", [ref]).fetchone()
    assert env[0] == "alice@lawfirm.test" and sorted(json.loads(env[1])) == sorted(rcpts)
    assert env[2] == "alice@lawfirm.test" and env[3] == qid
    # The capture copy in the store carries the same disclaimer and signatures as what left.
    sha = db.execute("SELECT sha256 FROM messages WHERE message_id = ?", [msg["Message-ID"]]).fetchone()[0]
    stored = stack.stored_raw(sha)
    assert DISCLAIMER.encode() in stored and b"partner-bcc" not in stored.split(b"\r\n\r\n")[0]


def test_disclaimer_change_applies_without_restart(stack, tmp_path):
    f = tmp_path / "new.txt"
    f.write_text("NEW per-domain disclaimer for lawfirm.test\n")
    assert stack.ctl("disclaimer", "set", "--domain", "lawfirm.test", "--text", str(f)).returncode == 0
    try:
        msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="after change")
        stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
        raw = stack.sink_with(msg["Message-ID"].encode()).read_bytes()
        assert b"NEW per-domain disclaimer" in raw and DISCLAIMER.encode() not in raw
    finally:
        stack.ctl("disclaimer", "remove", "--domain", "lawfirm.test")


def test_capture_impossible_defers_by_default(stack):
    secret = stack.stack.var / "capture.key"
    hidden = secret.with_suffix(".hidden")
    secret.rename(hidden)
    try:
        msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="uncapturable")
        with pytest.raises(smtplib.SMTPDataError) as e:
            stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
        assert e.value.smtp_code == 451 and b"capture" in e.value.smtp_error
    finally:
        hidden.rename(secret)
    assert not sink_envelopes(stack, msg["Message-ID"].encode())


def test_milter_and_postfix_bcc_map_capture_once(stack):
    etc = str(stack.stack.etc)
    subprocess.run(["postconf", "-c", etc, "-e", "always_bcc = capture@matters.lawfirm.test"], check=True)
    stack.stack.postfix("reload")
    try:
        msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="bcc map and milter")

        qid = stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
        stack.log_line("router", qid, "capture=duplicate")
        lines = [l for l in (stack.stack.logs / "router.log").read_text().splitlines() if f"{qid}: to=" in l]
        assert any("capture=duplicate" in l for l in lines), lines
        assert sum("envelope_rcpts=1" in l for l in lines) == 1
        db = sqlite3.connect(stack.stack.var / "store.sqlite")
        assert db.execute("SELECT count(*) FROM messages WHERE message_id = ?", [msg["Message-ID"]]).fetchone()[0] == 1
    finally:
        subprocess.run(["postconf", "-c", etc, "-X", "always_bcc"], check=True)
        stack.stack.postfix("reload")
