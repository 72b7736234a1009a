"""Issue 11's outside probe, replayed through the real stack: planted capture records and identity spoofing.

* Nobody but our milter's capture step may send to the capture address: a client naming it
  at RCPT (from the internet or logged in) gets 550 5.7.1.
* What still reaches the router at the capture address without a verified reference and a
  recorded envelope (here: injected straight over LMTP, past Postfix and the milter) is
  kept as inbound mail, marked unverified, and shown so in every listing.
* On submission, a display name naming someone else's address, and a Sender: or
  Resent-From: the login does not own, are refused with 553 5.7.1.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import time

import pytest

from .conftest import PASSWORD, wait_for

CA = "matters.lawfirm.test"
CAPTURE = f"capture@{CA}"
REFUSAL = "the capture address accepts only copies made by this server"


def rcpt_reply(c: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, str]:
    code, text = c.mail(sender)
    assert code == 250, (code, text)
    code, text = c.rcpt(rcpt)
    c.rset()
    return code, text.decode()


def outsider_rcpt(stack, rcpt: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=30, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("mail.example.test")
        return rcpt_reply(c, "ceo-impostor@example.test", rcpt)


def store_rows(stack, sql: str, params: list) -> list[tuple]:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("rcpt, shown", [
    (CAPTURE, CAPTURE),
    (f"capture+abcdefabcdef.0123456789abcdef@{CA}", f"capture+abcdefabcdef.0123456789abcdef@{CA}"),
    ("CAPTURE@MATTERS.LAWFIRM.TEST", "CAPTURE@MATTERS.LAWFIRM.TEST"),
    (f"Capture+x@{CA}", f"Capture+x@{CA}"),
    (f"capture@{CA}.", f"capture@{CA}."),
    (f'"capture"@{CA}', f'"capture"@{CA}'),  # Postfix hands the milter the address as the client wrote it
    (f'"Capture+abcdefabcdef.0123456789abcdef"@{CA}', f'"Capture+abcdefabcdef.0123456789abcdef"@{CA}'),
    # the routing forms Postfix's relay check resolves to capture@matters.lawfirm.test (and so lets through)
    (f"{CA}!capture", f"{CA}!capture"),
    (f"capture%{CA}@[127.0.0.1]", f"capture?{CA}@[127.0.0.1]"),  # '%' is a format character for libmilter
    # Postfix itself refuses a source route to a foreign host (554 Relay access denied)
    (f"@relay.example:capture@{CA}", None),
])
def test_outsider_to_the_capture_address_is_refused_at_rcpt(stack, rcpt, shown):
    code, text = outsider_rcpt(stack, rcpt)
    if shown is None:
        assert (code, text) == (554, "5.7.1 <@relay.example>: Relay access denied"), f"{rcpt}: {code} {text!r}"
        return
    assert (code, text) == (550, f"5.7.1 <{shown}>: {REFUSAL}"), \
        f"RCPT TO:<{rcpt}> from the internet got {code} {text!r}"
    stack.log_line("postfix", "milter-reject: RCPT from", f"<{shown}>: {REFUSAL}")


def test_outsider_mixing_the_capture_address_with_a_real_one_gets_only_the_real_one(stack):
    msg = stack.message("impostor@example.test", [f"7201@{CA}"], subject="mixed capture probe")
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=30, source_address=("127.0.0.2", 0)) as c:
        c.ehlo("mail.example.test")
        refused = c.sendmail("impostor@example.test", [f"7201@{CA}", CAPTURE], msg.as_bytes())
    assert refused == {CAPTURE: (550, f"5.7.1 <{CAPTURE}>: {REFUSAL}".encode())}, refused
    line = stack.log_line("router", f"to=<7201@{CA}>", "status=stored")
    assert "capture=" not in line, line
    rows = store_rows(stack, "SELECT direction, capture FROM messages WHERE message_id = ?", [msg["Message-ID"]])
    assert rows == [("inbound", "")], rows


def test_logged_in_user_naming_the_capture_address_is_refused(stack):
    for rcpt in (CAPTURE, f"capture+abcdefabcdef.0123456789abcdef@{CA}"):
        with stack.submission() as c:
            stack.tls(c)
            c.login("alice@lawfirm.test", PASSWORD)
            code, text = rcpt_reply(c, "alice@lawfirm.test", rcpt)
        assert (code, text) == (550, f"5.7.1 <{rcpt}>: {REFUSAL}"), f"alice RCPT TO:<{rcpt}> got {code} {text!r}"
    line = stack.log_line("milter", "capture address named by a client", "sasl_username=alice@lawfirm.test")
    assert "reject: RCPT" in line


def test_normal_outbound_mail_is_still_captured_verified_and_outbound(stack):
    msg = stack.message('"Alice Smith" <alice@lawfirm.test>', ["probe-client@example.test"],
                        subject="verified capture probe")
    qid = stack.submit("alice@lawfirm.test", msg, ["probe-client@example.test"])
    line = stack.log_line("router", qid, "capture=")
    assert "envelope_rcpts=1" in line, line
    listed = wait_for(lambda: [m for m in json.loads(stack.ctl("messages", "list", "--direction", "outbound",
                                                               "--json").stdout)
                               if m["message_id"] == msg["Message-ID"]], what="the capture copy listed outbound")
    assert [(m["direction"], m["capture"]) for m in listed] == [("outbound", "verified")], listed
    assert listed[0]["captured_envelope"]["verified"] is True
    text = stack.ctl("messages", "list", "--direction", "outbound").stdout
    mine = [l for l in text.splitlines() if l.startswith(f"{listed[0]['id']}\t")]
    assert len(mine) == 1 and "UNVERIFIED" not in mine[0], text


def lmtp_inject(stack, raw: bytes, rcpt: str) -> tuple[int, bytes]:
    with smtplib.LMTP("127.0.0.1", stack.stack.ports.lmtp, timeout=30) as c:
        c.ehlo_or_helo_if_needed()
        assert c.mail("ceo@lawfirm.test")[0] == 250
        assert c.rcpt(rcpt)[0] == 250
        return c.data(raw)


def test_copy_injected_past_the_milter_with_a_forged_reference_is_kept_unverified_and_shown(stack):
    mid = f"<{time.time_ns()}.planted@test.mattermail>"
    raw = (f"From: The CEO <ceo@lawfirm.test>\r\nTo: probe-client@example.test\r\nSubject: planted advice\r\n"
           f"Message-ID: {mid}\r\nDate: Thu, 03 Dec 2026 09:00:00 +0000\r\n\r\nWire the funds.\r\n").encode()
    forged = f"capture+abcdefabcdef.0123456789abcdef@{CA}"
    code, text = lmtp_inject(stack, raw, forged)
    assert code == 250, (code, text)  # kept: nothing is lost
    warning = stack.log_line("router", f"<{forged}>", "marked unverified")
    assert "does not verify" in warning and "capture=forged" in warning, warning
    rows = store_rows(stack, "SELECT id, direction, capture FROM messages WHERE message_id = ?", [mid])
    assert [r[1:] for r in rows] == [("inbound", "unverified")], rows
    msg_id = rows[0][0]

    as_json = json.loads(stack.ctl("messages", "list", "--json", "--limit", "0").stdout)
    mine = [m for m in as_json if m["id"] == msg_id]
    assert [(m["direction"], m["capture"]) for m in mine] == [("inbound", "unverified")], mine
    assert msg_id not in [m["id"] for m in json.loads(stack.ctl("messages", "list", "--direction", "outbound",
                                                                "--json", "--limit", "0").stdout)]
    text = stack.ctl("messages", "list", "--limit", "0").stdout
    line = [l for l in text.splitlines() if l.startswith(f"{msg_id}\t")]
    assert len(line) == 1 and "\tinbound\t" in line[0] and line[0].endswith("[UNVERIFIED capture copy]"), line
    shown = stack.ctl("messages", "show", str(msg_id)).stdout
    assert "capture:    UNVERIFIED" in shown and "direction:  inbound" in shown, shown
    assert json.loads(stack.ctl("messages", "show", str(msg_id), "--json").stdout)["capture"] == "unverified"
    assert [m["id"] for m in json.loads(stack.ctl("messages", "list", "--unverified", "--json").stdout)
            ].count(msg_id) == 1


SUBMISSION_REFUSALS = [
    ({"From": '"ceo@lawfirm.test" <alice@lawfirm.test>'},
     "5.7.1 <alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"),
    ({"From": "=?utf-8?q?ceo=40lawfirm.test?= <alice@lawfirm.test>"},
     "5.7.1 <alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"),
    ({"From": "alice@lawfirm.test", "Sender": "ceo@lawfirm.test"},
     "5.7.1 <alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
    ({"From": "alice@lawfirm.test", "Resent-From": "ceo@lawfirm.test"},
     "5.7.1 <alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
    ({"From": "alice@lawfirm.test", "Resent-Sender": "The CEO <ceo@lawfirm.test>"},
     "5.7.1 <alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
]


def raw_submission(headers: dict[str, str], subject: str) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"{head}To: probe-client@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test.mattermail>\r\n\r\nHello.\r\n").encode()


def submit_raw(stack, raw: bytes) -> tuple[int, str]:
    with stack.submission() as c:
        stack.tls(c)
        c.login("alice@lawfirm.test", PASSWORD)
        assert c.mail("alice@lawfirm.test")[0] == 250
        assert c.rcpt("probe-client@example.test")[0] == 250
        code, text = c.data(raw)
    return code, text.decode()


@pytest.mark.parametrize("headers, reply", SUBMISSION_REFUSALS)
def test_identity_spoofing_on_submission_is_refused(stack, headers, reply):
    code, text = submit_raw(stack, raw_submission(headers, "identity spoof probe"))
    assert (code, text) == (553, reply), f"{headers} got {code} {text!r}"


@pytest.mark.parametrize("from_value", ['"Alice Smith" <alice@lawfirm.test>',
                                        '"alice@lawfirm.test" <alice@lawfirm.test>'])
def test_legitimate_display_names_are_accepted_and_delivered(stack, from_value):
    raw = raw_submission({"From": from_value}, "legitimate display name")
    code, text = submit_raw(stack, raw)
    assert code == 250, (code, text)
    mid = raw.split(b"Message-ID: ")[1].split(b"\r\n")[0]
    stack.sink_with(mid)
