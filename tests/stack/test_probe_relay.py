"""Probe suite (issue 11), relay and identity: the attack shapes an outside probe tried that held.

Shape                                                    Test
-------------------------------------------------------  -----------------------------------------------------
plain relay bob@evil.test from the internet              test_foundation.test_relaying_without_auth_is_refused_on_the_mx_port
                                                         (and here, as one of the variants)
relay on submission without AUTH                         test_foundation.test_relaying_without_auth_is_refused_on_submission
percent hack, bang path, quoted local part, user@x@y,    test_open_relay_variants_are_refused_at_rcpt
address literal [192.0.2.1], to lawfirm.test and the
catch-all domain
source route @lawfirm.test:bob@evil.test                 test_source_route_is_never_relayed_off_site
AUTH before STARTTLS                                     test_foundation.test_auth_before_starttls_is_refused
MAIL before STARTTLS on submission                       test_mail_before_starttls_is_refused
wrong password -> 535                                    test_foundation.test_wrong_password_is_refused
envelope sender bob@lawfirm.test (alice logged in)       test_outbound.test_envelope_sender_not_owned_is_refused_by_postfix_before_data
envelope sender of an outside domain / trailing dot      test_envelope_sender_variants_are_refused
From: bob@lawfirm.test                                   test_outbound.test_from_header_not_owned_is_refused
From: other firm user in other case, trailing dot,       test_from_spoof_variants_are_refused
IDN look-alike, punycode, quoted / comment forms,
catch-all domain, outside domain; MAIL FROM:<> with
From: bob
alice's own From in another case is not refused          test_own_address_in_another_case_is_accepted_and_signed
forged SRS: bad hash, other key, expired, future,        test_forged_expired_and_malformed_srs_are_refused_at_rcpt
malformed, SRS1, victim domain
valid SRS bounce -> original sender                      test_srs.test_forwarded_mail_gets_an_srs_sender_that_passes_spf_and_bounces_come_back
                                                         (and here: one minted with the stack's secret)
forged Authentication-Results with our authserv-id       test_inbound.test_forged_authentication_results_is_replaced_by_ours (one copy);
                                                         test_forged_authentication_results_variants_are_all_removed (11 shapes)

Not covered here (other helpers): display-name spoofing, A-R stripping on submission, "router down".
our own address literal x@[127.0.0.1], postmaster@[..]   test_our_address_literal_is_refused_at_rcpt
"""

from __future__ import annotations

import smtplib
import time
import tomllib
from pathlib import Path

import pytest
import srslib

from .probe_support import blob, crlf, mx, our_ar_count, queue_id, sink_copies, stored, submission, tag, transaction
from .test_outbound import dkim_results

RELAY_VARIANTS = [
    "bob%evil.test@lawfirm.test",
    "evil.test!bob@lawfirm.test",
    '"bob@evil.test"@lawfirm.test',
    "bob@evil.test@lawfirm.test",
    "bob@[192.0.2.1]",
    "bob@evil.test",
    "bob%evil.test@matters.lawfirm.test",
    "evil.test!bob@matters.lawfirm.test",
    '"bob@evil.test"@matters.lawfirm.test',
]


def test_open_relay_variants_are_refused_at_rcpt(stack):
    seen = {}
    for rcpt in RELAY_VARIANTS:
        sender = f"{tag('relay')}@example.test"
        with mx(stack) as c:
            assert c.mail(sender)[0] == 250
            code, text = c.rcpt(rcpt)
            data = c.docmd("DATA")
        seen[rcpt] = (code, text.decode())
        assert code == 554 and b"5.7.1" in text and b"Relay access denied" in text, f"RCPT {rcpt}: {code} {text!r}"
        # Nothing was queued: Postfix says so for DATA and in its log.
        assert data[0] == 554 and b"no valid recipients" in data[1], f"DATA after RCPT {rcpt}: {data}"
        stack.log_line("postfix", "NOQUEUE: reject: RCPT", "Relay access denied", f"from=<{sender}>")
    print(f"\nrelay variants refused: {seen}")


def test_our_address_literal_is_refused_at_rcpt(stack):
    """Postfix counts its own address literal as local; with no local delivery it must refuse, not queue."""
    seen = {}
    for rcpt in ("x@[127.0.0.1]", "postmaster@[127.0.0.1]"):
        sender = f"{tag('literal')}@example.test"
        with mx(stack) as c:
            assert c.mail(sender)[0] == 250
            code, text = c.rcpt(rcpt)
        seen[rcpt] = (code, text.decode())
        assert code == 550 and b"5.1.1" in text, f"RCPT {rcpt}: {code} {text!r}"
        stack.log_line("postfix", "NOQUEUE: reject: RCPT", f"from=<{sender}>")
    print(f"\naddress literals refused: {seen}")


def test_source_route_is_never_relayed_off_site(stack):
    """Postfix accepts ``@lawfirm.test:bob@evil.test`` (RFC 5321 says to ignore the route), and routes it to
    the route's domain, lawfirm.test, never to evil.test: whatever the reply, nothing leaves for evil.test."""
    t = tag("srcroute")
    with mx(stack) as c:
        code, text = transaction(c, "bob@example.test", ["@lawfirm.test:bob@evil.test"],
                                 f"From: bob@example.test\r\nSubject: {t}\r\n\r\nroute me\r\n".encode())
    if code != 250:
        assert 500 <= code < 600, (code, text)
        return
    qid = queue_id(text)
    line = stack.log_line("postfix", f"{qid}: to=<", "status=")
    assert "status=sent" in line and "@lawfirm.test>" in line and "evil.test" not in line.split("to=<", 1)[1], line
    copies = sink_copies(stack, t.encode())
    assert len(copies) == 1 and all(r.endswith("@lawfirm.test") for r in copies[0][1]["rcpt_tos"]), copies[0][1]
    print(f"\nsource route: {code} {text!r}, delivered to {copies[0][1]['rcpt_tos']}")


def test_mail_before_starttls_is_refused(stack):
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.submission, timeout=30) as c:
        c.ehlo("client.lawfirm.test")
        assert c.has_extn("starttls") and not c.has_extn("auth"), c.esmtp_features
        code, text = c.mail("alice@lawfirm.test")
        rcode, rtext = c.rcpt("someone@example.test")
    assert code == 530 and b"5.7.0" in text and b"STARTTLS" in text, (code, text)
    assert rcode == 530, (rcode, rtext)


def test_envelope_sender_variants_are_refused(stack):
    seen = {}
    for mail_from in ("alice@evil.test", "bob@LawFirm.Test", "alice@lawfirm.test."):
        t = tag("envspoof")
        msg = f"From: alice@lawfirm.test\r\nTo: someone@example.test\r\nSubject: {t}\r\n\r\nhi\r\n".encode()
        with submission(stack) as c:
            code, text = transaction(c, mail_from, ["someone@example.test"], msg)
        seen[mail_from] = (code, text.decode())
        assert code == 553 and b"5.7.1" in text, f"MAIL FROM:<{mail_from}>: {code} {text!r}"
    print(f"\nenvelope spoofs: {seen}")


FROM_SPOOFS = [
    ("alice@lawfirm.test", "BOB@LAWFIRM.TEST", "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob@lawfirm.test.", "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob@LawFirm.Test.", "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob@lawf\u0131rm.test", "bob@lawf?rm.test"),  # dotless i; replies are ASCII
    ("alice@lawfirm.test", "bob@xn--lawfrm-dua.test", "bob@xn--lawfrm-dua.test"),
    ("alice@lawfirm.test", '"bob"@lawfirm.test', "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob@lawfirm.test (alice@lawfirm.test)", "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob @ lawfirm.test", "bob@lawfirm.test"),
    ("alice@lawfirm.test", "bob@matters.lawfirm.test", "bob@matters.lawfirm.test"),
    ("alice@lawfirm.test", "ceo@bank.test", "ceo@bank.test"),
    ("", "bob@lawfirm.test", "bob@lawfirm.test"),
    ("", "ceo@bank.test", "ceo@bank.test"),
]


@pytest.mark.parametrize("mail_from,header,named", FROM_SPOOFS,
                         ids=[f"{m or 'null'}-as-{h}" for m, h, _ in FROM_SPOOFS])
def test_from_spoof_variants_are_refused(stack, mail_from, header, named):
    t = tag("fromspoof")
    msg = f"From: {header}\r\nTo: someone@example.test\r\nSubject: {t}\r\n\r\nhi\r\n".encode()
    with submission(stack) as c:
        code, text = transaction(c, mail_from, ["someone@example.test"], msg)
    expected = f"5.7.1 <alice@lawfirm.test> may not send as <{named}>".encode()
    assert code == 553 and expected in text, f"MAIL FROM:<{mail_from}> From: {header}: {code} {text!r}"


def test_own_address_in_another_case_is_accepted_and_signed(stack):
    """The counterpart of the spoof checks: alice's own address, however written, is hers."""
    t = tag("owncase")
    msg = f"From: Alice@LawFirm.Test\r\nTo: someone@example.test\r\nSubject: {t}\r\n\r\nhi\r\n".encode()
    with submission(stack) as c:
        code, text = transaction(c, "alice@lawfirm.test", ["someone@example.test"], msg)
    assert code == 250, (code, text)
    raw = stack.sink_with(t.encode()).read_bytes()
    results = dkim_results(stack, raw)
    assert len(results) == 2 and all(results), results


# -- SRS ------------------------------------------------------------------------------------------------


def srs_secret(stack) -> str:
    cfg = tomllib.loads(stack.stack.config.read_text())
    return Path(cfg["srs"]["secret_file"]).read_text().strip()


def srs_address(secret: str, sender: str, days: float = 0) -> str:
    srs = srslib.SRS(secret)
    srs._time_fn = lambda: time.time() + days * 86400  # srslib's hook for testing timestamp checks
    return srs.forward(sender, "lawfirm.test")


def test_forged_expired_and_malformed_srs_are_refused_at_rcpt(stack):
    secret = srs_secret(stack)
    valid = srs_address(secret, "carol@example.test")
    _, h, ts = valid.split("@")[0].split("=")[:3]
    forged_hash = "AAAA" if h.upper() != "AAAA" else "BBBB"
    cases = {
        "bad hash": (valid.replace(f"SRS0={h}=", f"SRS0={forged_hash}="), b"signature mismatch"),
        "other key": (srslib.SRS("x" * 64).forward("carol@example.test", "lawfirm.test"), b"signature mismatch"),
        "hash of another user": (valid.replace("=carol@", "=alice@"), b"signature mismatch"),
        "victim domain": (f"SRS0={h}={ts}=victim.test=someone@lawfirm.test", b"signature mismatch"),
        "timestamp changed": (valid.replace(f"={ts}=", "=ZZ="), b"signature mismatch"),
        "expired (30 days)": (srs_address(secret, "carol@example.test", -30), b"expired"),
        "from the future (30 days)": (srs_address(secret, "carol@example.test", +30), b"expired"),
        "empty": ("SRS0=@lawfirm.test", b"signature mismatch"),
        "too few fields": ("SRS0=xx@lawfirm.test", b"signature mismatch"),
        "empty domain field": (f"SRS0={h}={ts}==carol@lawfirm.test", b"signature mismatch"),
        "SRS1 forged": ("SRS1=abcd=evil.test==AAAA=AB=example.test=bob@lawfirm.test", b"signature mismatch"),
    }
    seen = {}
    for name, (rcpt, reason) in cases.items():
        with mx(stack, helo="mx.elsewhere.test") as c:
            assert c.mail("<>")[0] == 250
            code, text = c.rcpt(rcpt)
        seen[name] = (code, text.decode())
        assert code == 554 and b"5.1.1" in text and b"(SRS" in text and reason in text, \
            f"{name} {rcpt}: {code} {text!r}"

    # The same secret mints a valid one: refused only because of what was forged.
    t = tag("srs-valid")
    with mx(stack, helo="mx.elsewhere.test") as c:
        code, text = transaction(c, "<>", [valid], f"From: MAILER-DAEMON@elsewhere.test\r\nSubject: {t}\r\n"
                                 "Auto-Submitted: auto-replied\r\n\r\nbounce\r\n".encode())
    assert code == 250, f"valid {valid}: {code} {text!r}"
    stack.sink_with(t.encode())
    copies = sink_copies(stack, t.encode())
    assert [env["rcpt_tos"] for _, env in copies] == [["carol@example.test"]], copies
    print(f"\nforged SRS replies: {seen}; valid {valid} delivered to carol@example.test")


# -- forged Authentication-Results ----------------------------------------------------------------------

FORGED_AR = [
    "Authentication-Results: mx.lawfirm.test; dkim=pass header.d=forged1.test",
    "Authentication-Results: MX.LAWFIRM.TEST; dmarc=pass header.from=forged2.test",
    "Authentication-Results:   mx.lawfirm.test.  ; spf=pass smtp.mailfrom=forged3.test",
    "Authentication-Results: mx.lawfirm.test 1; dkim=pass header.d=forged4.test",
    "Authentication-Results: (our id) mx.lawfirm.test; dkim=pass header.d=forged5.test",
    "Authentication-Results:\r\n mx.lawfirm.test;\r\n\tdkim=pass\r\n header.d=forged6.test",
    "authentication-results: Mx.LawFirm.Test;dkim=pass header.d=forged7.test",
    "AUTHENTICATION-RESULTS: mx.lawfirm.test; dmarc=pass header.from=forged8.test",
    "Authentication-Results:mx.lawfirm.test;dkim=pass header.d=forged9.test",
    "Authentication-Results: mx.lawfirm.test/1; dkim=pass header.d=forged10.test",
    "Authentication-Results: mx.lawfirm.test 1 ; dkim=pass header.d=forged11.test",
]
KEPT_AR = [
    "Authentication-Results: other.example; spf=pass smtp.mailfrom=kept1.test",
    "Authentication-Results: mx.lawfirm.test.evil.test; dkim=pass header.d=kept2.test",
]


@pytest.mark.parametrize("rcpt", ["alice@lawfirm.test", "ar-probe@matters.lawfirm.test"])
def test_forged_authentication_results_variants_are_all_removed(stack, rcpt):
    t = tag("ar")
    f = FORGED_AR
    raw = crlf(("\r\n".join(f[:4]) + "\r\nFrom: bob@example.test\r\n" + "\r\n".join(f[4:7] + KEPT_AR[:1])
                + f"\r\nTo: {rcpt}\r\nSubject: {t}\r\nMessage-ID: <{t}@probe.test>\r\n"
                + "\r\n".join(f[7:] + KEPT_AR[1:]) + "\r\n\r\nbody\r\n").encode())
    with mx(stack) as c:
        code, text = transaction(c, "bob@example.test", [rcpt], raw)
    assert code == 250, (code, text)
    qid = queue_id(text)
    line = stack.log_line("milter", f"{qid}: inbound")
    assert f"removed_forged_ar={len(FORGED_AR)}" in line, line
    if rcpt.endswith("@matters.lawfirm.test"):
        stack.log_line("router", qid, f"to=<{rcpt}>", "status=stored")
        rows = stored(stack, f"<{t}@probe.test>")
        assert len(rows) == 1, rows
        delivered = blob(stack, rows[0][1])
    else:
        delivered = stack.sink_with(t.encode()).read_bytes()
    for n in range(1, len(FORGED_AR) + 1):
        assert f"forged{n}.test".encode() not in delivered, f"forged{n}.test survived:\n{delivered[:3000]!r}"
    assert b"kept1.test" in delivered and b"kept2.test" in delivered
    assert our_ar_count(delivered) == 1, delivered.split(b"\r\n\r\n")[0].decode(errors="replace")
    assert delivered.startswith(b"Authentication-Results: mx.lawfirm.test;")
