"""The foundation, end to end through a real Postfix, Dovecot, milter and router."""

from __future__ import annotations

import smtplib
import sqlite3

import pytest

from .conftest import PASSWORD


def test_authenticated_submission_reaches_the_internet(stack):
    msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="foundation outbound")
    qid = stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
    delivered = stack.sink_with(b"foundation outbound")
    assert msg["Message-ID"].encode() in delivered.read_bytes()
    line = stack.log_line("milter", qid)
    assert f"{qid}: outbound" in line and "sasl_username=alice@lawfirm.test" in line


def test_inbound_catchall_mail_is_stored_by_the_router(stack):
    msg = stack.message("bob@example.test", ["anything@matters.lawfirm.test"], subject="foundation inbound")
    qid = stack.inbound(msg, ["anything@matters.lawfirm.test"])
    assert f"{qid}: inbound" in stack.log_line("milter", qid)
    stack.log_line("router", qid, "status=stored")
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    row = db.execute("SELECT m.sha256, d.recipient FROM deliveries d JOIN messages m ON m.id = d.message"
                     " WHERE d.queue_id = ?", [qid]).fetchone()
    assert row is not None and row[1] == "anything@matters.lawfirm.test"
    assert b"foundation inbound" in stack.stored_raw(row[0])


def test_auth_before_starttls_is_refused(stack):
    with stack.submission() as c:
        assert not c.has_extn("auth")
        code, resp = c.docmd("AUTH", "PLAIN AGFsaWNlQGxhd2Zpcm0udGVzdABjb3JyZWN0LWhvcnNlLWJhdHRlcnk=")
        assert code == 503 or code // 100 == 5, resp


def test_wrong_password_is_refused(stack):
    with stack.submission() as c:
        stack.tls(c)
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login("alice@lawfirm.test", PASSWORD + "-wrong")
        assert e.value.smtp_code == 535


def test_relaying_without_auth_is_refused_on_the_mx_port(stack):
    msg = stack.message("bob@example.test", ["victim@elsewhere.test"])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        stack.inbound(msg, ["victim@elsewhere.test"])
    code, text = e.value.recipients["victim@elsewhere.test"]
    assert code == 454 or code == 554, text
    assert b"Relay access denied" in text


def test_relaying_without_auth_is_refused_on_submission(stack):
    with stack.submission() as c:
        stack.tls(c)
        assert c.mail("alice@lawfirm.test")[0] == 250
        code, text = c.rcpt("victim@elsewhere.test")
        assert code // 100 == 5, text


def test_milter_down_defers_and_nothing_passes_unfiltered(stack):
    msg = stack.message("bob@example.test", ["deferred@matters.lawfirm.test"], subject="milter down test")
    stack.stack.stop_milter()
    try:
        with pytest.raises((smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)) as e:
            stack.inbound(msg, ["deferred@matters.lawfirm.test"])
        err = e.value
        code = err.smtp_code if isinstance(err, smtplib.SMTPResponseException) else next(iter(err.recipients.values()))[0]
        assert 400 <= code < 500
    finally:
        stack.stack.start_milter()
    # Nothing was stored while the milter was down.
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    assert db.execute("SELECT count(*) FROM deliveries WHERE recipient = 'deferred@matters.lawfirm.test'").fetchone()[0] == 0
    # The sending MTA retries, and now it goes through.
    qid = stack.inbound(msg, ["deferred@matters.lawfirm.test"])
    stack.log_line("router", qid, "status=stored")
