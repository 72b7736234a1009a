"""Tests for mattermail.router.resolve: Received parsing per MTA, header resolution, loop
classification, plus the shared corpus (sisimai bounces and the MIME torture sets)."""
from __future__ import annotations

import collections
import email
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mattermail.router.resolve import (
    DEFAULT_HEADERS, Resolved, loop_reason, received_for, resolve)

SISIMAI = "bounces/sisimai/maildir-bsd"

CA = ["matters.lawfirm.test"]

# (id, Received value as written by that MTA, expected "for" address)
RECEIVED = [
    ("postfix-folded",
     "from mail-wr1-f54.google.com (mail-wr1-f54.google.com [209.85.221.54])\r\n"
     "\tby mx.lawfirm.test (Postfix) with ESMTPS id 4QxYz12abcz9sZ\r\n"
     "\tfor <1234@matters.lawfirm.test>; Tue, 13 Jun 2023 10:11:12 +0000 (UTC)",
     "1234@matters.lawfirm.test"),
    ("postfix-tls-nested-comments",
     "from relay.example.org (relay.example.org [198.51.100.4])\n"
     " (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n"
     "  key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\n"
     " (No client certificate requested)\n by mx.lawfirm.test (Postfix) with ESMTPS id 4Qx\n"
     " for <alice+1234@matters.lawfirm.test>; Tue, 13 Jun 2023 10:11:12 +0000 (UTC)",
     "alice+1234@matters.lawfirm.test"),
    ("postfix-pickup-no-for",
     "by mx.lawfirm.test (Postfix, from userid 1000)\n id 3F2A1C0123; Tue, 13 Jun 2023 10:11:12 +0000 (UTC)",
     None),
    ("exim-esmtp",
     "from [192.0.2.7] (helo=client.example.org)\n\tby mx.lawfirm.test with esmtpsa (TLS1.3) tls "
     "TLS_AES_256_GCM_SHA384\n\t(Exim 4.96)\n\t(envelope-from <alice@example.org>)\n"
     "\tid 1q9Xyz-000AbC-2D\n\tfor bob@matters.lawfirm.test; Tue, 13 Jun 2023 10:11:12 +0000",
     "bob@matters.lawfirm.test"),
    ("exim-local",
     "from alice by mail.example.org with local (Exim 4.94.2)\n\t(envelope-from <alice@example.org>)\n"
     "\tid 1q9Xyz-000AbC-2E\n\tfor 5678@matters.lawfirm.test; Tue, 13 Jun 2023 10:11:12 +0000",
     "5678@matters.lawfirm.test"),
    ("exim-no-for-multiple-rcpts",
     "from [192.0.2.7] (helo=client.example.org)\n\tby mx.lawfirm.test with esmtp (Exim 4.96)\n"
     "\t(envelope-from <alice@example.org>)\n\tid 1q9Xyz-000AbC-2F; Tue, 13 Jun 2023 10:11:12 +0000",
     None),
    ("sendmail",
     "from relay.example.com (relay.example.com [198.51.100.9])\n\tby mx.lawfirm.test "
     "(8.15.2/8.15.2/Debian-22) with ESMTP id 35DAB1c4012345\n\tfor <1234@matters.lawfirm.test>; "
     "Mon, 12 Jun 2023 10:11:12 +0200",
     "1234@matters.lawfirm.test"),
    ("sendmail-source-route",
     "from relay.example.com by mx.lawfirm.test (8.12.11/8.12.11) with ESMTP id k0000000000000\n"
     "\tfor <@relay.example.com:1234@matters.lawfirm.test>; Mon, 12 Jun 2023 10:11:12 +0200",
     "1234@matters.lawfirm.test"),
    ("sendmail-empty-local", "by mail0.example.co.jp (V8/cf) with ESMTP id s5L6lSDw015737\n"
     "\tfor <@example.co.jp>; Sat, 21 Jun 2014 23:34:45 +0900", None),
    ("exchange-online",
     "from AM6PR04MB1234.eurprd04.prod.outlook.com (2603:10a6:20b:b8::18)\r\n by "
     "AM0PR04MB5678.eurprd04.prod.outlook.com with Microsoft SMTP Server\r\n (version=TLS1_2, "
     "cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.6455.45;\r\n Tue, 13 Jun 2023 10:11:12 +0000",
     None),
    ("exchange-2003", "from mail.example.com ([192.0.2.1]) by exch01.example.local with Microsoft "
     "SMTPSVC(6.0.3790.4675);\n\t Tue, 13 Jun 2023 10:11:12 +0200", None),
    ("gmail-with-for",
     "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41])\n        by mx.google.com "
     "with SMTPS id a1-20020a170902b58100b001b0123456789sor123456plr.12.2023.06.13.03.11.12\n"
     "        for <1234@Matters.LawFirm.test>\n        (Google Transport Security);\n"
     "        Tue, 13 Jun 2023 03:11:12 -0700 (PDT)",
     "1234@matters.lawfirm.test"),
    ("gmail-internal", "by 2002:a05:6a10:b8c:b0:4b1:1c2d:5e6f with SMTP id n12csp123456pxn;\n"
     "        Tue, 13 Jun 2023 03:11:12 -0700 (PDT)", None),
    ("qmail-invoked-for-bounce", "(qmail 10000 invoked for bounce); 24 Apr 2013 00:00:00 +0900", None),
    ("qmail-network", "from unknown (HELO mail.example.org) (192.0.2.5)\n  by mx.lawfirm.test with SMTP; "
     "13 Jun 2023 10:11:12 -0000", None),
    ("opensmtpd-semicolon-before-for",
     "from localhost (localhost [127.0.0.1]); by mail.example.org (OpenSMTPD) with ESMTPA id 1e2a9eaa;\n"
     "\tfor <bob@matters.lawfirm.test>; Tue, 13 Jun 2023 10:11:12 +0000 (UTC)",
     "bob@matters.lawfirm.test"),
    ("dovecot-lmtp",
     "from mx.lawfirm.test\n\tby mbox.lawfirm.test with LMTP\n\tid YZv2MOmWGmDvLgAA4iEyMQ\n"
     "\t(envelope-from <alice@example.org>)\n\tfor <carol@matters.lawfirm.test>; Tue, 13 Jun 2023 10:11:12 +0000",
     "carol@matters.lawfirm.test"),
    ("sun-messaging-server-orcpt",
     "from ms.example.com ([17.0.0.1]) by ms30511.example.com (Oracle Communications Messaging Server "
     "7.0.5.30.0 64bit (built Oct 22 2013)) with ESMTP id <0NFC00F1DKOXYJB0@ms30511.example.com> for "
     "1234@matters.lawfirm.test (ORCPT 1234@matters.lawfirm.test); Thu, 29 Apr 2014 23:34:45 +0000 (GMT)",
     "1234@matters.lawfirm.test"),
    ("fetchmail", "from pop.example.org [192.0.2.9]\n\tby localhost with POP3 (fetchmail-6.4.37)\n"
     "\tfor <bob@localhost> (single-drop); Tue, 13 Jun 2023 10:11:12 +0000 (UTC)", "bob@localhost"),
    ("junk-after-address", "by example.org with neko (version 4.8.3.54) nyaan id 000000000 "
     "for neko@example.co.jp;e0ff9c6a684b9cf1; Thu, 29 Apr 2012 23:34:45 +0900", "neko@example.co.jp"),
    ("upper-case-keyword", "from x by y with SMTP id 1 FOR <Bob@MATTERS.lawfirm.TEST.>; Tue, 13 Jun 2023",
     "Bob@matters.lawfirm.test"),
    ("for-inside-comment-only", "from x (message for <a@b.test> forwarded) by y with SMTP id 1; Tue", None),
    ("unbalanced-comment", "from x (unclosed by y with ESMTP id 1 for <a@b.test>; Tue", "a@b.test"),
    ("for-in-hostname", "from mail.for.example by y.for.example with SMTP id 1; Tue", None),
    ("for-not-address", "from x by y with SMTP id 1 for you; Tue, 13 Jun 2023", None),
    ("empty", "", None),
    ("just-for", "for", None),
    ("empty-brackets", "by y with SMTP for <>; Tue", None),
    ("non-ascii", "from h\u00f6st (f\u00fcr) by y with SMTP id \u00e9 for <x@matters.lawfirm.test>; Di",
     "x@matters.lawfirm.test"),
    ("rfc2047", "from =?utf-8?q?f=C3=BCr?= by y id 1 for <x@matters.lawfirm.test>; Tue",
     "x@matters.lawfirm.test"),
    ("surrogate-escaped-8bit", "from h\udcc3\udcbcst by y for <x@matters.lawfirm.test>; Tue",
     "x@matters.lawfirm.test"),
]


@pytest.mark.parametrize("value,expected", [c[1:] for c in RECEIVED], ids=[c[0] for c in RECEIVED])
def test_received_for(value: str, expected: str | None) -> None:
    assert received_for(value) == expected


def msg(*headers: str, body: str = "hello\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


def addrs(found: list[Resolved]) -> list[tuple[str, str]]:
    return [(r.address, r.source) for r in found]


def test_defaults() -> None:
    assert DEFAULT_HEADERS == ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received")


def test_multiple_delivered_to_only_topmost_trusted() -> None:
    raw = msg("Delivered-To: 1234@matters.lawfirm.test", "Delivered-To: 9999@matters.lawfirm.test",
              "Subject: x")
    assert addrs(resolve(raw, CA)) == [("1234@matters.lawfirm.test", "Delivered-To")]
    assert addrs(resolve(raw, CA, trusted_hops=2)) == [
        ("1234@matters.lawfirm.test", "Delivered-To"), ("9999@matters.lawfirm.test", "Delivered-To")]
    assert resolve(raw, CA, trusted_hops=0) == []


def test_untrusted_instance_is_ignored_and_next_header_used() -> None:
    # Our topmost Delivered-To is outside the catch-all; an older one (someone else's) is inside.
    raw = msg("Delivered-To: bob@lawfirm.test", "X-Original-To: 5678@matters.lawfirm.test",
              "Delivered-To: 9999@matters.lawfirm.test")
    assert addrs(resolve(raw, CA)) == [("5678@matters.lawfirm.test", "X-Original-To")]


def test_header_order_precedence() -> None:
    raw = msg("Received: from a by mx.lawfirm.test (Postfix) with ESMTP id 1 for <r@matters.lawfirm.test>; Tue",
              "X-Original-To: x@matters.lawfirm.test", "Delivered-To: d@matters.lawfirm.test",
              "Envelope-To: e@matters.lawfirm.test")
    assert addrs(resolve(raw, CA)) == [("d@matters.lawfirm.test", "Delivered-To")]
    assert addrs(resolve(raw, CA, header_order=("X-Original-To", "Delivered-To"))) == [
        ("x@matters.lawfirm.test", "X-Original-To")]
    assert addrs(resolve(raw, CA, header_order=("Received",))) == [("r@matters.lawfirm.test", "Received[0]")]
    assert addrs(resolve(raw, CA, header_order=("envelope-to",))) == [("e@matters.lawfirm.test", "envelope-to")]


def test_received_hops_and_fallback() -> None:
    raw = msg("Received: from a by mx.lawfirm.test (Postfix) with ESMTP id 1; Tue, 13 Jun 2023",
              "Received: from b by relay.example.org with ESMTP id 2 for <r@matters.lawfirm.test>; Tue")
    assert resolve(raw, CA) == []
    assert addrs(resolve(raw, CA, trusted_hops=2)) == [("r@matters.lawfirm.test", "Received[1]")]


def test_catchall_filtering_case_dedupe_and_lists() -> None:
    raw = msg("Envelope-To: 1234@matters.lawfirm.test, Alice <5678@Matters.LawFirm.TEST>,"
              " outsider@example.org, x@sub.matters.lawfirm.test, y@lawfirm.test,"
              ' "Doe, John" <1234@MATTERS.lawfirm.test>, <Cap@matters.lawfirm.test> (capture)')
    expect = [("1234@matters.lawfirm.test", "Envelope-To"), ("5678@matters.lawfirm.test", "Envelope-To"),
              ("Cap@matters.lawfirm.test", "Envelope-To")]
    assert addrs(resolve(raw, CA)) == expect
    assert addrs(resolve(raw, ["MATTERS.LawFirm.test."])) == expect
    assert addrs(resolve(raw, "matters.lawfirm.test")) == expect  # one domain as a plain str
    assert addrs(resolve(raw, ["lawfirm.test"])) == [("y@lawfirm.test", "Envelope-To")]
    assert resolve(raw, []) == []
    assert resolve(raw, ["other.test"]) == []


def test_x_envelope_to_and_header_name_case() -> None:
    raw = msg("X-ENVELOPE-TO: <m1@matters.lawfirm.test>", "DELIVERED-TO: bob@elsewhere.test")
    assert addrs(resolve(raw, CA)) == [("m1@matters.lawfirm.test", "X-Envelope-To")]


def test_envelope_wins() -> None:
    raw = msg("Delivered-To: 1234@matters.lawfirm.test")
    found = resolve(raw, CA, envelope=["<5678@Matters.lawfirm.test>", "bob@example.org",
                                       "5678@matters.lawfirm.test"])
    assert addrs(found) == [("5678@matters.lawfirm.test", "envelope"), ("bob@example.org", "envelope")]
    assert addrs(resolve(raw, CA, envelope=())) == [("1234@matters.lawfirm.test", "Delivered-To")]
    assert addrs(resolve(b"", [], envelope=["a@b.test"])) == [("a@b.test", "envelope")]


def test_message_objects_accepted() -> None:
    raw = msg("Delivered-To: 1234@matters.lawfirm.test")
    for m in (email.message_from_bytes(raw), BytesParser(policy=policy.default).parsebytes(raw)):
        assert addrs(resolve(m, CA)) == [("1234@matters.lawfirm.test", "Delivered-To")]
    built = EmailMessage()
    built["X-Original-To"] = "Matter <42@matters.lawfirm.test>"
    assert addrs(resolve(built, CA)) == [("42@matters.lawfirm.test", "X-Original-To")]


def test_garbage_never_raises() -> None:
    ugly = [b"", b"\x00\xff\xfe", b"Delivered-To:\r\n\r\n", b": no name\r\nDelivered-To: <\r\n",
            b"Delivered-To: =?utf-8?b?w7w=?= <1@matters.lawfirm.test>\r\n",
            b"Delivered-To: m\xc3\xbcller@matters.lawfirm.test\r\n",
            b"Delivered-To: \xff\xfe@matters.lawfirm.test, <<>>, \"unterminated <2@matters.lawfirm.test>\r\n",
            b"Received: " + b"(" * 5000 + b" for <a@matters.lawfirm.test>\r\n",
            b"Received: for " + b"<" * 3000 + b"\r\n", b"Content-Type: multipart/report; boundary=\r\n",
            b"Return-Path:\r\nAuto-Submitted:\r\n", "Delivered-To: \u00e9@matters.lawfirm.test\r\n".encode()]
    for raw in ugly:
        resolve(raw, CA, trusted_hops=3)
        loop_reason(raw)
    assert addrs(resolve(ugly[4], CA)) == [("1@matters.lawfirm.test", "Delivered-To")]
    assert addrs(resolve(ugly[5], CA)) == [("m\u00fcller@matters.lawfirm.test", "Delivered-To")]
    assert addrs(resolve(ugly[7], CA)) == [("a@matters.lawfirm.test", "Received[0]")]


@pytest.mark.parametrize("headers,expected", [
    (["Content-Type: multipart/report; report-type=delivery-status; boundary=b"], ("bounce", "multipart/report")),
    (["Content-Type: Multipart/Report;\r\n report-type=disposition-notification"], ("bounce", "multipart/report")),
    (["Return-Path: <>"], ("bounce", "null return path")),
    (["Return-Path: < >"], ("bounce", "null return path")),
    (["Return-Path: <>", "Return-Path: <a@b.test>"], ("bounce", "null return path")),
    (["Return-Path: <a@b.test>", "Return-Path: <>"], None),  # only the topmost counts
    (["Return-Path: <MAILER-DAEMON@mx.example.com>"], None),
    (["Auto-Submitted: auto-replied"], ("auto", "Auto-Submitted: auto-replied")),
    (["Auto-Submitted: Auto-Generated (failure)"], ("auto", "Auto-Submitted: auto-generated")),
    (["Auto-Submitted: no"], None),
    (["Auto-Submitted: No (a person wrote this)"], None),
    (["Precedence: bulk"], None),  # deliberately not a loop signal
    (["Content-Type: multipart/mixed; boundary=b"], None),  # a forwarded report is not a bounce
    (["Return-Path: <>", "Auto-Submitted: auto-replied"], ("bounce", "null return path")),
    ([], None),
])
def test_loop_reason(headers: list[str], expected: tuple[str, str] | None) -> None:
    raw = msg("From: a@b.test", *headers)
    assert loop_reason(raw) == expected
    assert loop_reason(email.message_from_bytes(raw)) == expected


# --- corpus -------------------------------------------------------------------------------

def _check_no_raise(paths: list[Path], domains: list[str]) -> list[str]:
    failures = []
    for path in paths:
        raw = path.read_bytes()
        try:
            resolve(raw, domains, trusted_hops=10)
            resolve(raw, domains, envelope=["x@y.test"])
            loop_reason(raw)
            for value in email.message_from_bytes(raw).get_all("Received") or []:
                received_for(str(value))
        except Exception as exc:  # noqa: BLE001 - collecting every failure is the point
            failures.append(f"{path.name}: {exc!r}")
    return failures


def test_mime_corpus_never_raises(corpus) -> None:
    assert _check_no_raise(corpus.files("mime"), ["example.com", "test.lindsaar.net"]) == []


def test_sisimai_corpus_never_raises(corpus) -> None:
    assert _check_no_raise(corpus.files(SISIMAI), ["example.jp", "example.com"]) == []


# Independent of the module: plain regexes over the topmost instance of each header.
_ADDR_DOMAIN = re.compile(r"[^\s<>(),;:\"@]+@([A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9])")
_FOR_DOMAIN = re.compile(r"\bfor\s+<?[^\s<>;@()]+@([A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9])", re.I)


def _candidate_domains(raw: bytes) -> set[str]:
    m = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    found: set[str] = set()
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To"):
        for value in (m.get_all(name) or [])[:1]:
            found |= {d.lower() for d in _ADDR_DOMAIN.findall(str(value))}
    for value in (m.get_all("Received") or [])[:1]:
        found |= {d.lower() for d in _FOR_DOMAIN.findall(re.sub(r"\s+", " ", str(value)))}
    return found


def test_sisimai_resolution_rates(corpus) -> None:
    """Measured on sisimai@18e585c2 (629 files): 490 resolve (Delivered-To 222, Received 186,
    Envelope-To 51, X-Original-To 31); every file with a candidate domain resolves."""
    sisimai_files = corpus.files(SISIMAI)
    candidates = {p: _candidate_domains(p.read_bytes()) for p in sisimai_files}
    domains = sorted(set().union(*candidates.values()))
    by_source: collections.Counter[str] = collections.Counter()
    missed = []
    for path in sisimai_files:
        found = resolve(path.read_bytes(), domains)
        by_source[re.sub(r"\[\d+\]", "", found[0].source) if found else "(none)"] += 1
        if candidates[path] and not found:
            missed.append(path.name)
        for r in found:
            assert r.address.rpartition("@")[2] in domains
    total = len(sisimai_files)
    print(f"\nsisimai: {total} files, {len(domains)} domains, first source: {dict(by_source)}")
    assert missed == []
    assert total - by_source["(none)"] >= 0.70 * total
    assert by_source["Delivered-To"] >= 0.30 * total
    assert by_source["Received"] >= 0.25 * total
    assert by_source["Envelope-To"] > 0 and by_source["X-Original-To"] > 0


def test_sisimai_loop_reason(corpus) -> None:
    """Measured: 495/629 "bounce" (349 multipart/report, 146 null Return-Path), 6 "auto", 128 None
    (plain-text bounces whose Return-Path was not kept, ARF as multipart/mixed, SNS notifications)."""
    classes: collections.Counter[str | None] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    sisimai_files = corpus.files(SISIMAI)
    for path in sisimai_files:
        reason = loop_reason(path.read_bytes())
        classes[reason[0] if reason else None] += 1
        reasons[reason[1].split(":")[0] if reason else "(none)"] += 1
    total = len(sisimai_files)
    print(f"\nsisimai loop_reason: {dict(classes)} reasons: {dict(reasons)}")
    assert classes["bounce"] >= 0.75 * total
    assert classes["bounce"] + classes["auto"] >= 0.77 * total
    assert reasons["multipart/report"] >= 0.5 * total


def test_mime_corpus_mostly_not_loops(corpus) -> None:
    """Everyday mail must not be mistaken for bounces (measured: 24/340 are real reports)."""
    files = corpus.files("mime")
    flagged = sum(1 for p in files if loop_reason(p.read_bytes()))
    assert flagged <= 0.15 * len(files), f"{flagged}/{len(files)} taken for loops"
