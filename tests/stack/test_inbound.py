"""Inbound, end to end: SPF, DKIM, DMARC and Authentication-Results through the real stack,
with DNS from the stack's zone files."""

from __future__ import annotations

import smtplib
import subprocess
from email.message import EmailMessage

import pytest

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail.dns import Resolver
from mattermail.milter.dkim_sign import sign

from .conftest import wait_for

ZONE = """$ORIGIN {domain}.
$TTL 300
@       IN SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 300
@       IN TXT "v=spf1 ip4:127.0.0.2 -all"
_dmarc  IN TXT "v=DMARC1; p={policy}"
{dkim}
"""


@pytest.fixture(scope="module")
def sender_domains(stack):
    """Two outside domains with SPF for 127.0.0.2, DMARC, and a DKIM key each."""
    keys = {}
    for domain, policy in (("signed.test", "reject"), ("quarantined.test", "quarantine")):
        key = dkimkeys.generate("rsa")
        owner, record = dkimkeys.dns_record(key, "s1", domain)
        text = ZONE.format(domain=domain, policy=policy, dkim=dkimkeys.zone_line(owner, record, ttl=300))
        tmp = stack.stack.dns_dir / f".{domain}.tmp"
        tmp.write_text(text)
        tmp.rename(stack.stack.dns_dir / f"{domain}.zone")  # the DNS server never sees half a file
        keys[domain] = dkimkeys.SigningKey(domain, "s1", "rsa-sha256", key)
    resolver = Resolver(DNS(nameservers=("127.0.0.1",), port=stack.stack.ports.dns, timeout=2.0, cache_size=0))

    def served(name: str) -> bool:
        try:
            return bool(resolver.txt(name))
        except Exception:  # noqa: BLE001 - not loaded yet (NXDOMAIN) or a timeout: ask again
            return False

    for domain in keys:
        wait_for(lambda: served(f"_dmarc.{domain}"), 10, f"the DNS server to serve {domain}")
    return keys


def signed(msg: EmailMessage, *keys: dkimkeys.SigningKey) -> bytes:
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = []
    for line in head.decode().split("\r\n"):
        if line[:1] in " \t":
            headers[-1] = (headers[-1][0], headers[-1][1] + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    sigs = sign(headers, body, list(keys), linesep="\r\n")
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in sigs) + raw


def send_raw(stack, raw: bytes, mail_from: str, rcpt: str, source: str = "127.0.0.2") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.signed.test")
        code, text = c.mail(mail_from)
        if code != 250:
            return code, text
        code, text = c.rcpt(rcpt)
        if code != 250:
            return code, text
        return c.data(raw)


def ar_header(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace").replace("\r\n\t", " ").replace("\r\n ", " ")
    ours = [l for l in head.split("\r\n") if l.lower().startswith("authentication-results:")]
    assert len(ours) == 1, ours
    return ours[0]


def test_signed_mail_from_authorised_ip_passes_everything(stack, sender_domains):
    msg = stack.message("news@signed.test", ["alice@lawfirm.test"], subject="all good")
    code, _ = send_raw(stack, signed(msg, sender_domains["signed.test"]), "news@signed.test", "alice@lawfirm.test")
    assert code == 250
    ar = ar_header(stack.sink_with(msg["Message-ID"].encode()).read_bytes())
    assert "mx.lawfirm.test" in ar
    assert "spf=pass" in ar and "smtp.mailfrom=signed.test" in ar
    assert "dkim=pass" in ar and "header.d=signed.test" in ar and "header.s=s1" in ar
    assert "dmarc=pass" in ar and "header.from=signed.test" in ar


def refused(stack, mail_from: str, status: str) -> str:
    """Postfix's log line for the message from ``mail_from`` its milter refused with ``status``
    (an enhanced status code such as 5.7.1).

    Postfix removes a refused message's queue file as it logs this: it is never delivered."""
    local, _, domain = mail_from.partition("@")
    senders = (f"from=<{mail_from}>", f"={domain}={local}@")  # as sent, or as SRS rewrote it
    path = stack.stack.logs / "postfix.log"
    line = wait_for(lambda: next((l for l in path.read_text(errors="replace").splitlines()
                                  if "milter-reject:" in l and any(s in l for s in senders)), None),
                    20, f"Postfix logging the milter's refusal of mail from {mail_from}")
    assert f" {status} " in line, line
    qid = line.split(": milter-reject:", 1)[0].rsplit(" ", 1)[-1]
    if qid != "NOQUEUE":
        queue = subprocess.run(["postqueue", "-c", str(stack.stack.etc), "-p"], capture_output=True,
                               text=True).stdout
        assert qid not in queue, queue
    return line


def test_spoofed_firm_address_with_p_reject_is_refused_and_not_delivered(stack):
    msg = stack.message("ceo@lawfirm.test", ["alice@lawfirm.test"], subject="wire the money")
    code, text = send_raw(stack, msg.as_bytes(), "ceo@evil.test", "alice@lawfirm.test")
    assert code == 550 and b"5.7.1" in text and b"lawfirm.test" in text and b"DMARC" in text
    assert "END-OF-MESSAGE" in refused(stack, "ceo@evil.test", "5.7.1")


def test_dmarc_quarantine_puts_the_message_on_hold(stack, sender_domains):
    msg = stack.message("x@quarantined.test", ["alice@lawfirm.test"], subject="hold me")
    code, text = send_raw(stack, msg.as_bytes(), "bounce@elsewhere.test", "alice@lawfirm.test")
    assert code == 250
    qid = text.decode().rsplit(" ", 1)[-1]

    def held() -> bool:
        out = subprocess.run(["postqueue", "-c", str(stack.stack.etc), "-p"], capture_output=True, text=True).stdout
        return f"{qid}!" in out  # postqueue marks held messages with "!"

    wait_for(held, what=f"{qid} in the hold queue")
    assert not any(b"hold me" in p.read_bytes() for p in stack.sink_files())


def test_forged_authentication_results_is_replaced_by_ours(stack, sender_domains):
    msg = stack.message("news@signed.test", ["alice@lawfirm.test"], subject="forged AR")
    msg["Authentication-Results"] = "mx.lawfirm.test; dkim=pass header.d=bank.test; dmarc=pass"
    msg["Authentication-Results"] = "other.example; spf=pass smtp.mailfrom=x@y.test"
    code, _ = send_raw(stack, signed(msg, sender_domains["signed.test"]), "news@signed.test", "alice@lawfirm.test")
    assert code == 250
    raw = stack.sink_with(msg["Message-ID"].encode()).read_bytes()
    assert b"bank.test" not in raw
    assert b"other.example; spf=pass" in raw  # someone else's results are theirs to keep
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert head.count("Authentication-Results: mx.lawfirm.test") == 1
    assert head.index("Authentication-Results: mx.lawfirm.test") < head.index("Received:")


def test_body_modified_after_signing_fails_and_two_signatures_are_reported_separately(stack, sender_domains):
    # The second signature claims quarantined.test's selector but is made with another key: it fails.
    wrong = dkimkeys.SigningKey("quarantined.test", "s1", "rsa-sha256", dkimkeys.generate("rsa"))
    msg = stack.message("news@signed.test", ["alice@lawfirm.test"], subject="two sigs")
    code, _ = send_raw(stack, signed(msg, sender_domains["signed.test"], wrong), "news@signed.test",
                       "alice@lawfirm.test")
    assert code == 250
    ar = ar_header(stack.sink_with(msg["Message-ID"].encode()).read_bytes())
    assert "dkim=pass" in ar and "header.d=signed.test" in ar
    assert "dkim=fail" in ar and "header.d=quarantined.test" in ar

    tampered = signed(stack.message("news@signed.test", ["alice@lawfirm.test"], subject="tampered"),
                      sender_domains["signed.test"]).replace(b"Hello.", b"Hellp.")
    code, _ = send_raw(stack, tampered, "news@signed.test", "alice@lawfirm.test")
    assert code == 250  # DMARC still passes on aligned SPF; the DKIM result says fail
    ar = ar_header(stack.sink_with(b"Subject: tampered").read_bytes())
    assert "dkim=fail" in ar and "spf=pass" in ar


def test_dns_down_defers_never_passes(stack, sender_domains):
    stack.stack.stop_dns()
    try:
        msg = stack.message("news@signed.test", ["alice@lawfirm.test"], subject="dns down")
        code, text = send_raw(stack, signed(msg, sender_domains["signed.test"]), "dns-down@signed.test",
                              "alice@lawfirm.test")
        assert 400 <= code < 500, (code, text)
    finally:
        stack.stack.start_dns()
    refused(stack, "dns-down@signed.test", text.decode().split()[0])
