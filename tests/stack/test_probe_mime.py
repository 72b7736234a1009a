"""Probe suite (issue 11), hostile MIME in both directions through the real stack.

Each shape goes three ways: from the internet to a catch-all matter address (stored by the router), from
the internet to a firm user (relayed to the sink), and from alice on submission (signed, to the sink, with
a capture copy in the store). For each: the SMTP reply is a clean 2xx or a clean 4xx/5xx with an enhanced
status code; what got 250 is stored exactly once / delivered once (inbound with exactly one
Authentication-Results of ours, outbound with two DKIM signatures that verify against the stack's DNS);
and afterwards the same milter and router processes take the next message.

Shape                                          Test
---------------------------------------------  ------------------------------------------------------------
NUL bytes in the body                          test_hostile_mime[nul]
a 100 KB line (body text and attachment),     test_hostile_mime[long-line]
a 2,000-octet References line
5,000 MIME parts                               test_hostile_mime[5000-parts]
MIME nesting depth 200                         test_hostile_mime[depth-200]
bad base64 (text and attachment)               test_hostile_mime[bad-base64]
1 MB header, 1,050 fields                      test_hostile_mime[1mb-header]
1 MB header, one folded field                  test_hostile_mime[1mb-folded-field]
40 MB message (under message_size_limit)       test_40mb_message_both_ways_and_over_the_limit_refused
over message_size_limit (SIZE= and streamed)   test_40mb_message_both_ways_and_over_the_limit_refused
25 MB outbound, memory bounded                 test_large.test_25mb_message_is_signed_and_decorated_without_buffering_it
20 MB inbound, binary junk, 10,000 To:         test_router_robustness (malformed messages)

long-line, outbound: Postfix's smtp client breaks lines over smtp_line_length_limit (998) by inserting
CRLF SPACE when it sends them; the milter folds them the same way before it signs (milter/longlines.py),
so both signatures verify at the sink (which stores what arrived).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time

import dkim
import pytest

from mattermail.milter import outbound

from .probe_support import (alive, blob, mx, our_ar_count, pid_of, queue_id, sink_copies, stored, submission, tag,
                            transaction)
from .test_outbound import dkim_results

CATCHALL = "probe-mime@matters.lawfirm.test"
USER = "alice@lawfirm.test"
OUTSIDE_RCPT = "someone@example.test"


def head(sender: str, rcpt: str, t: str, extra: bytes = b"") -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hostile {t}\r\nMessage-ID: <{t}@probe.test>\r\n"
            "MIME-Version: 1.0\r\n").encode() + extra


def nul(s: str, r: str, t: str) -> bytes:
    return head(s, r, t) + b"Content-Type: text/plain\r\n\r\nbefore\x00after\r\n\x00\x00\x00\r\nend\r\n"


def long_line(s: str, r: str, t: str) -> bytes:
    """A 100 KB line in the body text and one in a CSV attachment (a disclaimer, when one is set, re-encodes
    the body text as quoted-printable, but never touches the attachment), and a signed header field
    (References, a long thread) on one 2,000-octet line."""
    refs = b"References:" + b"".join(b" <%04d.thread@probe.test>" % i for i in range(80)) + b"\r\n"
    return head(s, r, t, refs) + (b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
                            b"--=_b\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100_000 + b"\r\nend\r\n"
                            b"--=_b\r\nContent-Type: text/csv\r\n"
                            b"Content-Disposition: attachment; filename=a.csv\r\n\r\n"
                            + b"a," * 50_000 + b"\r\n--=_b--\r\n")


def many_parts(s: str, r: str, t: str, n: int = 5000) -> bytes:
    p = b"--=_b\r\nContent-Type: text/plain\r\n\r\npart\r\n"
    return head(s, r, t) + b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n' + p * n + b"--=_b--\r\n"


def nested(s: str, r: str, t: str, depth: int = 200) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for i in range(depth):
        b = f"=_n{i}".encode()
        body = (b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
                + body + b"--" + b + b"--\r\n")
    return head(s, r, t) + body


def bad_base64(s: str, r: str, t: str) -> bytes:
    return head(s, r, t) + (b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
                            b"--=_b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            b"!!!not base64 ***\r\nQUJD=RE\r\n=\r\n"
                            b"--=_b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            b"JVBERi0xLjQK%%%\r\n--=_b--\r\n")


def big_header(s: str, r: str, t: str) -> bytes:
    fields = b"".join(f"X-Filler-{i}: {'y' * 990}\r\n".encode() for i in range(1050))
    return head(s, r, t, fields) + b"Content-Type: text/plain\r\n\r\nbody after a 1 MB header\r\n"


def big_folded_field(s: str, r: str, t: str) -> bytes:
    field = b"X-One-Huge: start" + b"".join(b"\r\n " + b"z" * 990 for _ in range(1050)) + b"\r\n"
    return head(s, r, t, field) + b"Content-Type: text/plain\r\n\r\nbody after a 1 MB folded field\r\n"


SHAPES = {"nul": nul, "long-line": long_line, "5000-parts": many_parts, "depth-200": nested,
          "bad-base64": bad_base64, "1mb-header": big_header, "1mb-folded-field": big_folded_field}


def clean_reply(code: int, text: bytes, what: str) -> None:
    clean = code == 250 or (400 <= code < 600 and len(text.split()) >= 2 and text[:1] in b"45")
    assert clean, f"{what}: {code} {text!r}"


def check_catchall(stack, t: str, code: int, text: bytes) -> str:
    if code != 250:
        return f"{code}"
    qid = queue_id(text)
    stack.log_line("router", qid, f"to=<{CATCHALL}>", "status=stored", timeout=60)
    rows = stored(stack, f"<{t}@probe.test>")
    assert len(rows) == 1, f"catch-all {t}: {len(rows)} rows in the store: {rows}"
    raw = blob(stack, rows[0][1])
    assert our_ar_count(raw) == 1, f"catch-all {t}: {our_ar_count(raw)} A-R of ours"
    return f"250 stored {len(raw)} bytes"


def check_user(stack, t: str, code: int, text: bytes) -> str:
    if code != 250:
        return f"{code}"
    stack.log_line("postfix", f"{queue_id(text)}: to=<{USER}>", "status=sent", timeout=60)
    copies = sink_copies(stack, f"<{t}@probe.test>".encode())
    assert len(copies) == 1, f"firm user {t}: {len(copies)} copies at the sink"
    assert our_ar_count(copies[0][0]) == 1
    return f"250 delivered {len(copies[0][0])} bytes"


def check_outbound(stack, t: str, code: int, text: bytes, verify_dkim: bool = True) -> str:
    """Delivered once with two DKIM signatures (both verified with dkimpy unless not ``verify_dkim``),
    and its capture copy stored once."""
    if code != 250:
        return f"{code}"
    qid = queue_id(text)
    stack.log_line("postfix", f"{qid}: to=<{OUTSIDE_RCPT}>", "status=sent", timeout=60)
    stack.log_line("router", qid, "capture=", "status=stored", timeout=60)
    copies = sink_copies(stack, f"<{t}@probe.test>".encode())
    assert len(copies) == 1, f"outbound {t}: {len(copies)} copies at the sink"
    rows = [r for r in stored(stack, f"<{t}@probe.test>") if r[2] == "outbound"]
    assert len(rows) == 1, f"outbound {t}: {len(rows)} capture copies in the store"
    raw = copies[0][0]
    assert raw.count(b"\r\nDKIM-Signature:") + raw.startswith(b"DKIM-Signature:") == 2, raw[:2000]
    try:
        results: list[object] = list(dkim_results(stack, raw)) if verify_dkim else [True, True]
    except dkim.ValidationError as e:  # dkimpy raises on a body hash mismatch
        results = [f"dkimpy: {e}"]
    assert results == [True, True], f"outbound {t} ({len(raw)} bytes at the sink): DKIM verifies {results}"
    return f"250 delivered signed {len(raw)} bytes"


def next_message_flows(stack, pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        assert alive(pid) and pid_of(stack, name) == pid, f"the {name} (pid {pid}) died or was restarted"
    t = tag("next")
    with mx(stack) as c:
        code, text = transaction(c, "bob@example.test", [CATCHALL], head("bob@example.test", CATCHALL, t) +
                                 b"Content-Type: text/plain\r\n\r\nthe next normal message\r\n")
    assert code == 250, (code, text)
    check_catchall(stack, t, code, text)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_hostile_mime(stack, shape):
    build = SHAPES[shape]
    pids = {"milter": pid_of(stack, "milter"), "router": pid_of(stack, "router")}
    seen = {}
    t0 = time.monotonic()

    t = tag(f"{shape}-ca")
    with mx(stack) as c:
        code, text = transaction(c, "bob@example.test", [CATCHALL], build("bob@example.test", CATCHALL, t))
    clean_reply(code, text, f"{shape} to the catch-all")
    seen["catch-all"] = check_catchall(stack, t, code, text)

    t = tag(f"{shape}-user")
    with mx(stack) as c:
        code, text = transaction(c, "bob@example.test", [USER], build("bob@example.test", USER, t))
    clean_reply(code, text, f"{shape} to a firm user")
    seen["firm user"] = check_user(stack, t, code, text)

    t = tag(f"{shape}-out")
    with submission(stack) as c:
        code, text = transaction(c, "alice@lawfirm.test", [OUTSIDE_RCPT], build("alice@lawfirm.test", OUTSIDE_RCPT, t))
    clean_reply(code, text, f"{shape} on submission")
    seen["outbound"] = check_outbound(stack, t, code, text)
    if shape == "long-line" and code == 250:  # folded before signing: at whitespace in a header, as Postfix in the body
        raw = sink_copies(stack, f"<{t}@probe.test>".encode())[0][0]
        longest = max(len(line) for line in raw.split(b"\r\n"))
        head_block = raw.partition(b"\r\n\r\n")[0]
        refs = [f for f in head_block.replace(b"\r\n ", b" ").split(b"\r\n") if f.startswith(b"References:")]
        sent = build("alice@lawfirm.test", OUTSIDE_RCPT, t).partition(b"\r\n\r\n")[0]
        assert longest <= 998 and len(refs) == 1 and refs[0] + b"\r\n" in sent + b"\r\n", \
            f"longest line at the sink {longest}; References there {len(refs[0]) if refs else None} octets unfolded"
        seen["outbound"] += f", longest line {longest}"

    next_message_flows(stack, pids)
    print(f"\n{shape}: {seen} in {time.monotonic() - t0:.1f}s")


@pytest.mark.parametrize("fields", [outbound.MAX_HEADER_FOLDS, outbound.MAX_HEADER_FOLDS + 1])
def test_long_signed_header_fields_are_folded_up_to_what_postfix_can_edit(stack, fields):
    """Each long signed field is a header edit for Postfix's cleanup, which gives up (451) somewhere past
    ~140 edits: up to MAX_HEADER_FOLDS are folded and both signatures verify at the sink; one more and the
    milter folds none (logged), Postfix folds them and the message is still delivered."""
    t = tag(f"cc{fields}")
    cc = b"".join(b"Cc:" + b"".join(b" c%03d-%02d@example.test," % (i, j) for j in range(50)) + b"\r\n"
                  for i in range(fields))
    raw = head("alice@lawfirm.test", OUTSIDE_RCPT, t, cc) + b"Content-Type: text/plain\r\n\r\nmany long Cc lines\r\n"
    with submission(stack) as c:
        code, text = transaction(c, "alice@lawfirm.test", [OUTSIDE_RCPT], raw)
    assert code == 250, f"{fields} Cc lines of {len(cc) // fields} octets: {code} {text!r}"
    qid = queue_id(text)
    note = stack.log_line("milter", qid, "long_header_lines=")
    stack.log_line("postfix", f"{qid}: to=<{OUTSIDE_RCPT}>", "status=sent", timeout=60)
    sent = sink_copies(stack, f"<{t}@probe.test>".encode())[0][0]
    longest = max(len(line) for line in sent.split(b"\r\n"))
    try:
        results: list[object] = list(dkim_results(stack, sent))
    except dkim.ValidationError as e:
        results = [f"dkimpy: {e}"]
    if fields <= outbound.MAX_HEADER_FOLDS:
        assert f"long_header_lines=folded({fields})" in note and results == [True, True], (note, results)
    else:
        assert "long_header_lines=not_folded" in note and results != [True, True], (note, results)
    assert longest <= 998, f"longest line at the sink: {longest}"
    print(f"\n{fields} long Cc lines: 250, DKIM {results}, longest line at the sink {longest}")


# -- size -----------------------------------------------------------------------------------------------


def big(sender: str, rcpt: str, t: str, size: int) -> bytes:
    data = base64.encodebytes(os.urandom(size * 3 // 4 - 2000)).replace(b"\n", b"\r\n")
    return head(sender, rcpt, t) + (b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
                                    b"--=_b\r\nContent-Type: text/plain\r\n\r\nExhibit attached.\r\n"
                                    b"--=_b\r\nContent-Type: application/octet-stream\r\n"
                                    b"Content-Transfer-Encoding: base64\r\n\r\n") + data + b"--=_b--\r\n"


def test_40mb_message_both_ways_and_over_the_limit_refused(stack):
    limit = int(subprocess.run(["postconf", "-c", str(stack.stack.etc), "-h", "message_size_limit"],
                               capture_output=True, text=True, check=True).stdout)
    assert 40_000_000 < limit, f"message_size_limit {limit} is below the 40 MB this test sends"
    pids = {"milter": pid_of(stack, "milter"), "router": pid_of(stack, "router")}

    # Declared over the limit: refused at MAIL on both ports, before any byte of the message.
    with mx(stack) as c:
        assert c.does_esmtp and int(c.esmtp_features["size"]) == limit
        over_mx = c.mail("bob@example.test", [f"SIZE={limit + 1}"])
    with submission(stack) as c:
        over_sub = c.mail("alice@lawfirm.test", [f"SIZE={limit + 1}"])
    for what, (code, text) in (("MX", over_mx), ("submission", over_sub)):
        assert code == 552 and b"5.3.4" in text, f"SIZE={limit + 1} on {what}: {code} {text!r}"

    # Streamed over the limit without SIZE=: refused after DATA, nothing stored.
    t = tag("over")
    raw = big("bob@example.test", CATCHALL, t, limit + 1_000_000)
    t0 = time.monotonic()
    with mx(stack) as c:
        over_stream = code, text = transaction(c, "bob@example.test", [CATCHALL], raw)
    assert code == 552 and b"5.3.4" in text, f"{len(raw)} bytes streamed: {code} {text!r}"
    stack.log_line("postfix", "queue file size limit exceeded")
    assert stored(stack, f"<{t}@probe.test>") == []
    over_time = time.monotonic() - t0

    # 40 MB each way, sent one after the other, checked once both are sent (the router stores the inbound
    # one while the milter signs the outbound one): inbound stored once, byte for byte after our trace
    # headers; outbound delivered once with two DKIM-Signature fields and its capture copy stored once
    # (dkimpy takes ~3 s per signature on 40 MB: test_large verifies the signatures of a 25 MB message).
    t0 = time.monotonic()
    t_in, t_out = tag("40mb-in"), tag("40mb-out")
    raw_in = big("bob@example.test", CATCHALL, t_in, 40_000_000)
    with mx(stack) as c:
        code_in, text_in = transaction(c, "bob@example.test", [CATCHALL], raw_in, (f"SIZE={len(raw_in)}",))
    assert code_in == 250, f"{len(raw_in)} bytes inbound: {code_in} {text_in!r}"
    raw_out = big("alice@lawfirm.test", OUTSIDE_RCPT, t_out, 40_000_000)
    with submission(stack) as c:
        code_out, text_out = transaction(c, "alice@lawfirm.test", [OUTSIDE_RCPT], raw_out, (f"SIZE={len(raw_out)}",))
    assert code_out == 250, f"{len(raw_out)} bytes outbound: {code_out} {text_out!r}"
    sent_time = time.monotonic() - t0
    inbound = check_catchall(stack, t_in, code_in, text_in)
    body_in = raw_in[raw_in.index(b"\r\n\r\n"):]
    assert blob(stack, stored(stack, f"<{t_in}@probe.test>")[0][1]).endswith(body_in)
    outbound = check_outbound(stack, t_out, code_out, text_out, verify_dkim=False)
    big_time = time.monotonic() - t0
    for p in stack.sink_files():  # later tests poll the sink by reading every file in it
        if f"<{t_out}@probe.test>".encode() in p.read_bytes()[:4096]:
            p.with_suffix(".json").unlink()
            p.unlink()

    next_message_flows(stack, pids)
    print(f"\nsize limit {limit}: SIZE={limit + 1} -> {over_mx[0]} (MX), {over_sub[0]} (submission); "
          f"streamed {limit + 1_000_000} bytes -> {over_stream} in {over_time:.1f}s; "
          f"40 MB in: {inbound}; out: {outbound}; both sent in {sent_time:.1f}s, checked in {big_time:.1f}s")
