"""Issue 11, the outside probe of the inbound path, replayed through the real stack.

"The internet" connects from 127.0.0.2 as bob@example.test (SPF pass, DMARC p=none);
lawfirm.test publishes DMARC p=reject.  Each shape asserts the SMTP reply, and for
delivered mail the headers at the sink: our Authentication-Results must parse with
authres and say exactly what the milter decided.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager

import authres
import pytest

from .conftest import PASSWORD
from .test_outbound import dkim_results
from .test_reload import hup

OURS = "mx.lawfirm.test"
BODY = b"To: alice@lawfirm.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@probe.test>\r\n\r\nhi\r\n"


def send(stack, head: bytes, subject: str, mail_from: str = "bob@example.test", source: str = "127.0.0.2",
         rcpt: str = "alice@lawfirm.test") -> tuple[int, str]:
    """One message on the MX port; the reply to DATA (or to the first refused command)."""
    raw = head + BODY.replace(b"{subject}", subject.encode())
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.example.test")
        for code, text in (c.mail(mail_from), c.rcpt(rcpt)):
            if code != 250:
                return code, text.decode()
        code, text = c.data(raw)
    return code, text.decode()


def delivered(stack, subject: str) -> bytes:
    return stack.sink_with(f"<{subject}@probe.test>".encode()).read_bytes()


def our_ar(raw: bytes) -> tuple[str, list[tuple[str, str]], authres.AuthenticationResultsHeader]:
    """Our one A-R of a delivered message (unfolded), its (method, result) pairs, and authres's parse."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = re.split(r"\r\n(?![ \t])", head)
    ours = [re.sub(r"\r\n[ \t]", " ", f) for f in fields
            if re.match(r"authentication-results:\s*mx\.lawfirm\.test\s*;", f, re.I)]
    assert len(ours) == 1, f"{len(ours)} A-R fields of ours: {ours}"
    parsed = authres.all_features().parse(ours[0])
    assert parsed.authserv_id == OURS
    return ours[0], [(r.method, r.result) for r in parsed.results], parsed


def refused(code: int, text: str, want: str) -> None:
    assert code == 550 and text.startswith("5.7.1 ") and want in text, f"got {code} {text!r}, wanted 550 5.7.1 {want!r}"


def queue_id(text: str) -> str:
    return text.rsplit(" ", 1)[-1]


# --- 1. who is the author? ------------------------------------------------------------------

def test_two_from_fields_are_refused(stack):
    code, text = send(stack, b"From: alice@lawfirm.test\r\nFrom: bob@example.test\r\n", "two-from")
    refused(code, text, "Message has 2 From: header fields; RFC 5322 allows exactly one")


@pytest.mark.parametrize(("shape", "head"), [
    ("multi-address", b"From: alice@lawfirm.test, bob@example.test\r\n"),
    ("group", b"From: Partners: alice@lawfirm.test, bob@example.test;\r\n"),
    ("address-then-address", b"From: alice@lawfirm.test <bob@example.test>\r\n"),
])
def test_a_firm_address_among_several_authors_meets_the_firm_dmarc_reject(stack, shape, head):
    code, text = send(stack, head, f"multi-{shape}")
    refused(code, text, "The domain lawfirm.test publishes a DMARC policy of reject and this message failed "
                        "authentication")


def test_several_authors_of_one_outside_domain_are_just_that_domain(stack):
    code, text = send(stack, b"From: bob@example.test, Carol <carol@EXAMPLE.test>\r\n", "multi-same")
    assert code == 250, (code, text)
    line, results, parsed = our_ar(delivered(stack, "multi-same"))
    assert results == [("spf", "pass"), ("dkim", "none"), ("dmarc", "pass")], line
    assert parsed.results[-1].header_from == "example.test", line


def test_no_from_is_refused(stack):
    code, text = send(stack, b"", "no-from")
    refused(code, text, "Message has no From: header field, so no valid author address (RFC 5322)")


def test_encoded_word_only_from_is_refused(stack):
    code, text = send(stack, b"From: =?utf-8?q?ceo=40lawfirm.test?=\r\n", "encoded-from")
    refused(code, text, "Message has no valid author address in its From: header field (RFC 5322)")


def test_a_bounce_without_an_author_address_is_still_delivered(stack):
    """Real MTAs write 'MAILER-DAEMON <>' into DSNs; those must keep reaching the firm."""
    code, text = send(stack, b"From: MAILER-DAEMON <>\r\n", "bounce-no-author", mail_from="")
    assert code == 250, (code, text)
    line, results, _ = our_ar(delivered(stack, "bounce-no-author"))
    assert results[-1] == ("dmarc", "permerror"), line


# --- 2. our authserv-id is ours alone ---------------------------------------------------------

FORGED = (b"Authentication-Results: mx.lawfirm.test; dkim=pass header.d=bank.test\r\n"
          b"authentication-results:   MX.LawFirm.TEST\r\n\t1 ; dmarc=pass header.from=bank.test\r\n"
          b"Authentication-Results: (ours) mx.lawfirm.test/1; spf=pass smtp.mailfrom=bank.test\r\n"
          b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n")


def test_forged_results_submitted_to_a_colleague_are_removed_and_the_signature_holds(stack):
    body = FORGED + b"From: alice@lawfirm.test\r\nTo: carol@lawfirm.test\r\nSubject: forged-sub\r\n\r\nhi\r\n"
    with stack.submission() as c:
        stack.tls(c)
        c.login("alice@lawfirm.test", PASSWORD)
        c.sendmail("alice@lawfirm.test", ["carol@lawfirm.test"], body)
    raw = stack.sink_with(b"Subject: forged-sub").read_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"bank.test" not in head, head.decode()
    assert b"other.example; spf=pass" in head  # someone else's results are theirs to keep
    sigs = dkim_results(stack, raw)
    assert len(sigs) == 2 and all(sigs), f"DKIM results at the recipient: {sigs}"


def test_forged_results_from_a_trusted_network_are_removed(stack):
    body = FORGED + b"From: alice@lawfirm.test\r\nTo: carol@lawfirm.test\r\nSubject: forged-net\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=30, source_address=("127.0.0.1", 0)) as c:
        c.ehlo("app.lawfirm.test")
        c.sendmail("alice@lawfirm.test", ["carol@lawfirm.test"], body)
    raw = stack.sink_with(b"Subject: forged-net").read_bytes()
    assert b"bank.test" not in raw.split(b"\r\n\r\n", 1)[0]
    assert all(dkim_results(stack, raw))


def test_forged_results_from_outside_are_replaced(stack):
    code, text = send(stack, FORGED + b"From: bob@example.test\r\n", "forged-in")
    assert code == 250, (code, text)
    raw = delivered(stack, "forged-in")
    assert b"bank.test" not in raw.split(b"\r\n\r\n", 1)[0]
    stack.log_line("milter", queue_id(text), "removed_forged_ar=3")


# --- 3. sender text stays data inside our A-R -------------------------------------------------

def test_dkim_tag_text_cannot_inject_a_pass(stack):
    head = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=x; i=@x')dkim=pass header.d=paypal.com(; "
            b"h=from; bh=AAAA; b=AAAA\r\nFrom: bob@example.test\r\n")
    code, text = send(stack, head, "dkim-injection")
    assert code == 250, (code, text)
    line, results, parsed = our_ar(delivered(stack, "dkim-injection"))
    assert results == [("spf", "pass"), ("dkim", "neutral"), ("dmarc", "pass")], line
    dk = parsed.results[1]
    assert (dk.reason, dk.header_d, dk.header_s) == ("i= is not within d=", "example.test", "x"), line
    assert "paypal" not in line


# --- 4. display names -------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "head"), [
    ("plain", b'From: "ceo@lawfirm.test" <bob@example.test>\r\n'),
    ("encoded", b"From: =?utf-8?q?ceo=40lawfirm.test?= <bob@example.test>\r\n"),
])
def test_display_name_spoof_is_tagged(stack, shape, head):
    subject = f"spoof-{shape}"
    code, text = send(stack, head, subject)
    assert code == 250, (code, text)
    line, results, parsed = our_ar(delivered(stack, subject))
    assert results == [("spf", "pass"), ("dkim", "none"), ("dmarc", "pass"), ("x-display-name", "spoofed")], line
    assert str(parsed.results[-1].properties[0].value) == "ceo@lawfirm.test", line
    log = stack.log_line("milter", queue_id(text), "verdict=")
    assert "display_name_spoof=<ceo@lawfirm.test>" in log and "verdict=tag" in log, log


@contextmanager
def milter_config(stack, section: str, setting: str) -> Iterator[None]:
    """Add ``setting`` to ``[section]`` of the stack's config (the section is added when the
    config has none: TOML allows a table once) and SIGHUP the milter; put it back afterwards."""
    path = stack.stack.config
    original = path.read_text()
    header = f"[{section}]\n"
    changed = (original.replace(header, header + setting + "\n", 1) if header in original
               else original + "\n" + header + setting + "\n")

    path.write_text(changed)
    hup(stack, "milter", "reloaded")  # (every worker's line)
    try:
        yield
    finally:
        path.write_text(original)
        hup(stack, "milter", "reloaded")


def test_display_name_spoof_is_refused_when_configured(stack):
    assert "display_name_spoof" not in stack.stack.config.read_text()
    with milter_config(stack, "inbound", 'display_name_spoof = "reject"'):
        for shape, head in (("plain", b'From: "CEO ceo@lawfirm.test" <bob@example.test>\r\n'),
                            ("encoded", b"From: =?utf-8?q?ceo=40lawfirm.test?= <bob@example.test>\r\n")):
            code, text = send(stack, head, f"spoof-reject-{shape}")
            refused(code, text, "The From: display name impersonates <ceo@lawfirm.test>, an address of this "
                                "organization")
