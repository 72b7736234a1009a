"""SRS end to end, served by its own daemon (mattermail-srs): forwarded mail leaves with an SRS0 sender
that passes SPF at the next hop; genuine bounces come back to the original sender; forged ones are
refused at RCPT; with the daemon down Postfix defers (4xx) the mail that needs it rather than pass it
un-rewritten, while the firm's own outbound mail (which it never changes) flows."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import sqlite3
import uuid

from mattermail.config import DNS
from mattermail.dns import Resolver
from mattermail.milter.inbound import check_spf


def envelope_of(stack, needle: bytes) -> dict:
    path = stack.sink_with(needle)
    return json.loads(path.with_suffix(".json").read_text())


def test_forwarded_mail_gets_an_srs_sender_that_passes_spf_and_bounces_come_back(stack):
    msg = stack.message("bob@example.test", ["alice@lawfirm.test"], subject="to be forwarded")
    stack.inbound(msg, ["alice@lawfirm.test"])
    env = envelope_of(stack, b"to be forwarded")
    srs = env["mail_from"]
    assert srs.startswith("SRS0=") and srs.endswith("@lawfirm.test") and "=example.test=bob@" in srs

    # The next hop checks SPF for the SRS domain from our address: it passes.
    resolver = Resolver(DNS(nameservers=("127.0.0.1",), port=stack.stack.ports.dns, timeout=2.0))
    assert check_spf(resolver, "127.0.0.1", srs, "mx.lawfirm.test", 10).result == "pass"

    # The next hop bounces it: the bounce reaches the original sender.
    bounce = stack.message("MAILER-DAEMON@elsewhere.test", [srs], subject="Undelivered Mail Returned to Sender")
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("mx.elsewhere.test")
        assert c.mail("<>")[0] == 250
        assert c.rcpt(srs)[0] == 250
        assert c.data(bounce.as_bytes())[0] == 250
    assert envelope_of(stack, bounce["Message-ID"].encode())["rcpt_tos"] == ["bob@example.test"]


def test_forged_srs_bounce_is_refused_at_rcpt(stack):
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("mx.elsewhere.test")
        c.mail("<>")
        code, text = c.rcpt("SRS0=abcd=AB=victim.test=someone@lawfirm.test")
    assert code == 554 or code == 550, text
    assert b"5.1.1" in text and b"SRS" in text


def test_router_records_the_real_sender_not_the_srs_one(stack):
    msg = stack.message("carol@example.test", ["srs-check@matters.lawfirm.test"], subject="srs at the router")
    qid = stack.inbound(msg, ["srs-check@matters.lawfirm.test"])
    stack.log_line("router", qid, "status=stored")
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    sender = db.execute("SELECT envelope_from FROM deliveries WHERE queue_id = ?", [qid]).fetchone()[0]
    assert sender == "carol@example.test"


def srs_pid(stack) -> int:
    return int((stack.stack.run_dir / "srs.pid").read_text())


def kill_srs(stack) -> int:
    pid = srs_pid(stack)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # the session fixture spawned it: reap it
    except ChildProcessError:
        pass
    return pid


def test_srs_daemon_down_defers_mail_that_needs_it_and_the_firms_own_mail_flows(stack):
    """Without its socketmap Postfix cannot rewrite senders: mail from a foreign sender gets a 4xx at RCPT (the
    sender retries), nothing leaves with the original sender; after a restart it flows again. The firm's own
    outbound mail needs no SRS (its sender is never rewritten, its recipients are outside the SRS domain): the
    filters in front of the socketmaps never ask the daemon about it, so it is accepted and leaves as sent."""
    tag = uuid.uuid4().hex[:10]
    killed = kill_srs(stack)
    try:
        with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, source_address=("127.0.0.2", 0)) as c:
            c.ehlo("mail.example.test")
            assert c.mail("bob@example.test")[0] == 250
            rcpt = c.rcpt("alice@lawfirm.test")
        assert 400 <= rcpt[0] < 500, f"inbound RCPT with the SRS daemon down: {rcpt}"

        msg = stack.message("alice@lawfirm.test", ["dave@example.test"], subject=f"srs down outbound {tag}")
        stack.submit("alice@lawfirm.test", msg, ["dave@example.test"])
        assert envelope_of(stack, f"srs down outbound {tag}".encode())["mail_from"] == "alice@lawfirm.test"

        status = stack.ctl("status", "--json")
        report = json.loads(status.stdout)
        assert status.returncode == 1 and report["unreachable"] == ["srs"], (status.returncode, report["unreachable"])
        print(f"\nSRS daemon down: inbound RCPT {rcpt[0]} {rcpt[1].decode()!r}; the firm's own submission accepted")
    finally:
        stack.stack.start_srs()
    assert srs_pid(stack) != killed

    # Back: the deferred kind of mail goes through, with an SRS0 sender for the forwarded one.
    inbound = stack.message("bob@example.test", ["alice@lawfirm.test"], subject=f"srs back inbound {tag}")
    stack.inbound(inbound, ["alice@lawfirm.test"])
    assert envelope_of(stack, f"srs back inbound {tag}".encode())["mail_from"].startswith("SRS0=")
