"""SRS end to end: forwarded mail leaves with an SRS0 sender that passes SPF at the next hop;
genuine bounces come back to the original sender; forged ones are refused at RCPT."""

from __future__ import annotations

import json
import smtplib
import sqlite3

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
