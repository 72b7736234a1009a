"""Lines over 998 octets: folded before signing exactly as Postfix's smtp client would send them.

``postfix_send`` below re-implements what Postfix 3.7 does with the message on its way out, from
its source: the queue file holds each line as records of at most line_length_limit (2048) octets,
REC_TYPE_CONT for all but the last piece of a line (cleanup_out() in src/cleanup/cleanup_out.c;
milter8.c's SMFIR_REPLBODY parser for a replaced body), and smtp_text_out() in src/smtp/smtp_proto.c
writes the records with smtp_line_length_limit = 998: a line that reaches the limit is cut there
(CRLF), and when more of it follows a SPACE starts the next line, which then takes 997 octets.
"""

from __future__ import annotations

import io
import random

import dkim
import Milter
import pytest
from Milter import testctx

from mattermail import config, dkimkeys
from mattermail.milter import outbound
from mattermail.milter.longlines import LIMIT, LineScan, fold_header, fold_points, insert_folds, scan
from mattermail.milter.runtime import Runtime
from mattermail import store as storemod

CONT, NORM = "L", "N"


def queue_records(message: bytes, line_limit: int = 2048) -> list[tuple[str, bytes]]:
    """The message as Postfix's queue file records: one line, one CR before its LF dropped, in pieces."""
    lines = message.split(b"\n")
    last = lines.pop()  # b"" when the message ends with LF
    records = []
    for i, line in enumerate(lines + ([last] if last else [])):
        if i < len(lines) and line.endswith(b"\r"):
            line = line[:-1]
        while len(line) > line_limit:
            records.append((CONT, line[:line_limit]))
            line = line[line_limit:]
        records.append((NORM, line))
    return records


def postfix_send(message: bytes, limit: int = 998) -> bytes:
    """smtp_text_out() over the queue records (dot-stuffing left out: the receiver undoes it)."""
    out = bytearray()
    space_left = limit
    for rec_type, data in queue_records(message):
        while True:
            if len(data) >= space_left:
                out += data[:space_left] + b"\r\n"
                data = data[space_left:]
                space_left = limit
                if data or rec_type == CONT:
                    out += b" "
                    space_left -= 1
                if not data:
                    break
            else:
                if rec_type == CONT:
                    out += data
                    space_left -= len(data)
                else:
                    out += data + b"\r\n"
                    space_left = limit
                break
    return bytes(out)


def naive_spans(body: bytes) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in body.split(b"\n"):
        content = line[:-1] if line.endswith(b"\r") and pos + len(line) < len(body) else line
        if len(content) > LIMIT:
            spans.append((pos, pos + len(content)))
        pos += len(line) + 1
    return spans


def fold(body: bytes) -> bytes:
    pieces = insert_folds([(0, len(body))], fold_points(scan(body)))
    return b"".join(p if isinstance(p, bytes) else body[p[0]:p[1]] for p in pieces)


# -- the Postfix model itself ---------------------------------------------------------------------------


def test_the_postfix_model_breaks_as_documented():
    assert postfix_send(b"a" * 998 + b"\r\n") == b"a" * 998 + b"\r\n"
    assert postfix_send(b"a" * 999 + b"\r\n") == b"a" * 998 + b"\r\n a\r\n"
    assert postfix_send(b"a" * 1995 + b"\r\n") == b"a" * 998 + b"\r\n " + b"a" * 997 + b"\r\n"
    # A 5,000-octet line is three queue records (2048 + 2048 + 904): the breaks do not depend on them.
    assert [len(x) for x in postfix_send(b"b" * 5000 + b"\r\n").split(b"\r\n")] == [998, 998, 998, 998, 998, 15, 0]


# -- finding long lines ---------------------------------------------------------------------------------

BOUNDARY_BODIES = {
    "998": b"a" * 998 + b"\r\nend\r\n",
    "999": b"a" * 999 + b"\r\nend\r\n",
    "997+CR content": b"a" * 997 + b"\r\r\nend\r\n",  # a CR that is content: 998 octets, not long
    "998+CR content": b"a" * 998 + b"\r\r\nend\r\n",  # 999 octets of content: long
    "1000": b"x\r\n" + b"b" * 1000 + b"\r\n",
    "bare LF 999": b"c" * 999 + b"\nend\r\n",
    "unterminated 999": b"ok\r\n" + b"d" * 999,
    "unterminated 998 + CR": b"ok\r\n" + b"d" * 998 + b"\r",
    "5000 and 1995": b"e" * 5000 + b"\r\n" + b"f" * 1995 + b"\r\n\r\n",
    "many short": b"short line\r\n" * 500,
}


@pytest.mark.parametrize("name", list(BOUNDARY_BODIES))
def test_scan_finds_exactly_the_lines_over_998_octets_wherever_the_chunks_split(name):
    body = BOUNDARY_BODIES[name]
    want = naive_spans(body)
    assert scan(body) == want, name
    # Every split into two chunks (the line split across two milter body chunks), and 3-octet chunks.
    for cut in range(len(body) + 1):
        s = LineScan()
        s.feed(body[:cut])
        s.feed(body[cut:])
        assert s.finish() == want, f"{name}: split at {cut}"
    s = LineScan()
    for i in range(0, len(body), 3):
        s.feed(body[i:i + 3])
    assert s.finish() == want, name


def test_scan_agrees_with_the_naive_reading_on_random_bodies():
    rng = random.Random(11)
    for _ in range(300):
        body = b"".join(rng.choice([b"x", b"\r", b"\n", b"\r\n", b"y" * 500, b"z" * 997])
                        for _ in range(rng.randrange(1, 12)))
        s = LineScan()
        pos = 0
        while pos < len(body):
            n = rng.randrange(1, 1200)
            s.feed(body, pos, min(len(body), pos + n))  # offsets into one buffer, as for the spool
            pos += n
        assert s.finish() == naive_spans(body), body


# -- folding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BOUNDARY_BODIES))
def test_folded_body_is_what_postfix_sends_and_postfix_leaves_it_alone(name):
    body = BOUNDARY_BODIES[name]
    if not body.endswith(b"\n"):
        body += b"\r\n"  # Postfix ends the last line
    folded = fold(body)
    assert postfix_send(folded) == postfix_send(body), name  # the same break points
    if body.count(b"\n") == body.count(b"\r\n"):  # as the milter gets bodies: CRLF only
        assert postfix_send(folded) == folded, name  # nothing left for Postfix to change
    assert all(len(line) <= 998 for line in folded.split(b"\r\n"))


def test_folds_go_into_pieces_of_spool_ranges_and_new_bytes():
    pieces = [(10, 1010), b"new" * 400, (2000, 2001)]
    out = insert_folds(pieces, [998, 1000, 1201, 2200])
    assert out == [(10, 1008), b"\r\n ", (1008, 1010), b"\r\n ", b"new" * 67, b"\r\n ",
                   (b"new" * 400)[201:], b"\r\n ", (2000, 2001)]
    with pytest.raises(ValueError):
        insert_folds([(0, 5)], [5])


def test_long_header_is_folded_at_whitespace_and_only_a_long_word_is_cut():
    assert fold_header("Subject", " short") is None
    words = " " + " ".join(["word"] * 400)
    value = fold_header("Subject", words)
    lines = ("Subject:" + value).split("\n")
    assert max(len(x) for x in lines) <= 998 and len(lines) == 3, [len(x) for x in lines]
    assert "".join(lines) == "Subject:" + words  # removing the line breaks gives the value back
    token = " " + "t" * 3000
    folded = ("X-Token:" + fold_header("X-Token", token)).replace("\n", "\r\n").encode() + b"\r\n"
    assert folded == postfix_send(b"X-Token:" + token.encode() + b"\r\n")  # no whitespace: Postfix's own cuts
    assert [len(x) for x in folded.split(b"\r\n")] == [998, 998, 998, 18, 0]


# -- the outbound core ----------------------------------------------------------------------------------

HEADERS = [("From", " Alice <alice@lawfirm.test>"), ("To", " bob@example.test"), ("Subject", " long lines"),
           ("MIME-Version", " 1.0"), ("Content-Type", ' multipart/mixed; boundary="=_b"')]
LONG_TEXT = b"x" * 5000
LONG_CSV = b"a," * 2500


def mime_body() -> bytes:
    return (b"--=_b\r\nContent-Type: text/plain\r\n\r\n" + LONG_TEXT + b"\r\nend\r\n"
            b"--=_b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=a.csv\r\n\r\n"
            + LONG_CSV + b"\r\n--=_b--\r\n")


@pytest.fixture
def runtime(tmp_path):
    keys = tmp_path / "keys" / "lawfirm.test"
    dkimkeys.write_private_key(keys / "rsa.rsa.pem", dkimkeys.generate("rsa"))
    dkimkeys.write_private_key(keys / "ed.ed25519.pem", dkimkeys.generate("ed25519"))
    cfg = config.from_dict({"store": {"path": str(tmp_path / "s.sqlite"), "messages_dir": str(tmp_path / "m")},
                            "dkim": {"keys_dir": str(tmp_path / "keys")}})
    rt = Runtime(cfg)
    storemod.add_user(rt.store(), "alice@lawfirm.test", "{ARGON2ID}x")
    return rt


def apply(headers: list[tuple[str, str]], changes: list[tuple[str, int, str]]) -> list[tuple[str, str]]:
    """What Postfix does with the milter's header changes (nth from 1, "" deletes, 0 appends)."""
    headers = list(headers)
    for name, nth, value in changes:
        if nth == 0:
            headers.append((name, value))
            continue
        at = [i for i, (n, _) in enumerate(headers) if n.lower() == name.lower()][nth - 1]
        if value:
            headers[at] = (name, value)
        else:
            del headers[at]
    return headers


def sent_and_verified(rt: Runtime, sub: outbound.Submission,
                      out: outbound.Outcome) -> tuple[bytes, bytes, list[bool]]:
    """The message as Postfix stores it after our changes, as the recipient receives it (Postfix's
    folding applied), and dkimpy's verdicts on the latter."""
    body = b"".join(outbound.stream(sub, out.new_body)) if out.new_body is not None else sub.raw[sub.body_offset:]
    stored = outbound.header_block(out.signatures + apply(sub.headers, out.header_changes)) + bytes(body)
    wire = postfix_send(stored)
    records = {f"{k.selector}._domainkey.{k.domain}.": dkimkeys.dns_record(k.private_key, k.selector, k.domain)[1]
               for k in rt.signing_keys()["lawfirm.test"]}
    d = dkim.DKIM(wire)
    results = [d.verify(idx=i, dnsfunc=lambda name, timeout=5: records[name.decode()].encode()) for i in range(2)]
    return stored, wire, results


@pytest.mark.parametrize("disclaimer", [False, True])
def test_long_lines_in_text_and_attachment_are_signed_as_sent(runtime, disclaimer):
    if disclaimer:
        storemod.set_disclaimer(runtime.store(), "default", "", "Confidential.", None)
    sub = outbound.Submission.of(HEADERS, mime_body(), queue_id="Q1", login="alice@lawfirm.test", client="127.0.0.1",
                                 mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    notes = " ".join(out.notes)
    # Without a disclaimer both lines are folded; with one, the text part is re-encoded (QP) instead.
    assert f"long_lines=folded({1 if disclaimer else 2})" in notes, notes
    assert ("disclaimer=default" in notes) is disclaimer, notes
    stored, wire, results = sent_and_verified(runtime, sub, out)
    assert wire == stored, "Postfix would still fold what we signed"
    assert results == [True, True], f"dkimpy on the sent message: {results}; {notes}"
    assert LONG_CSV[:998] + b"\r\n " + LONG_CSV[998:1995] + b"\r\n " in wire


@pytest.mark.parametrize("length, breaks", [(998, 0), (999, 1), (1995, 1), (1996, 2)])
def test_line_length_boundaries(runtime, length, breaks):
    body = b"y" * length + b"\r\n"
    sub = outbound.Submission.of(HEADERS[:3], body, queue_id="Q2", login="alice@lawfirm.test", client="127.0.0.1",
                                 mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    sent = b"".join(outbound.stream(sub, out.new_body)) if out.new_body is not None else body
    assert sent.count(b"\r\n ") == breaks and (out.new_body is None) == (breaks == 0), (length, out.notes)
    assert sent == postfix_send(body)
    stored, wire, results = sent_and_verified(runtime, sub, out)
    assert wire == stored and results == [True, True], (length, results)


def test_long_signed_header_is_folded_and_an_unsigned_one_left_to_postfix(runtime):
    subject = " " + " ".join(f"w{i}" for i in range(400))  # 1,889 octets on one line
    blob = " " + "q" * 1200
    headers = HEADERS[:2] + [("Subject", subject), ("X-Blob", blob)]
    sub = outbound.Submission.of(headers, b"short\r\n", queue_id="Q3", login="alice@lawfirm.test",
                                 client="127.0.0.1", mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    assert "long_header_lines=folded(1)" in out.notes, out.notes
    assert [(n, i) for n, i, _ in out.header_changes] == [("Subject", 1)]
    stored, wire, results = sent_and_verified(runtime, sub, out)
    assert results == [True, True], results
    assert max(len(line) for line in stored.split(b"X-Blob:")[0].split(b"\r\n")) <= 998
    # Postfix still folds X-Blob (no signature covers it), and only that.
    assert b"X-Blob:" + blob[:991].encode() + b"\r\n " + b"q" * 210 + b"\r\n" in wire


def test_many_long_signed_fields_are_left_alone_rather_than_overloading_postfix(runtime):
    """Postfix's cleanup gives up after ~140 header edits ("too many reverse jump records", 451)."""
    many = [("To", f" <{'r' * 990}{i}@example.test>") for i in range(outbound.MAX_HEADER_FOLDS + 1)]
    sub = outbound.Submission.of(HEADERS[:1] + many, b"hi\r\n", queue_id="Q6", login="alice@lawfirm.test",
                                 client="127.0.0.1", mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    assert out.header_changes == [] and out.signatures, out.notes
    assert f"long_header_lines=not_folded ({len(many)} signed fields, over {outbound.MAX_HEADER_FOLDS})" in out.notes
    unsigned = [(f"X-Filler-{i}", " " + "y" * 990) for i in range(1050)]  # the probe's 1 MB header
    sub = outbound.Submission.of(HEADERS[:3] + unsigned, b"hi\r\n", queue_id="Q7", login="alice@lawfirm.test",
                                 client="127.0.0.1", mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    assert out.header_changes == [] and not any("long_header" in n for n in out.notes), out.notes
    assert sent_and_verified(runtime, sub, out)[2] == [True, True]


def test_signing_the_body_as_submitted_fails_once_postfix_folds_it(runtime):
    """The failure the fold prevents, with the same model of Postfix: the signing as it was before."""
    from mattermail.milter.dkim_sign import sign

    keys = runtime.signing_keys()["lawfirm.test"]
    signed = outbound.header_block([(n, " " + v) for n, v in sign(HEADERS, mime_body(), keys)] + HEADERS) + mime_body()
    records = {f"{k.selector}._domainkey.{k.domain}.": dkimkeys.dns_record(k.private_key, k.selector, k.domain)[1]
               for k in keys}
    dnsfunc = lambda name, timeout=5: records[name.decode()].encode()  # noqa: E731
    assert dkim.DKIM(signed).verify(dnsfunc=dnsfunc)  # as signed: fine
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(postfix_send(signed)).verify(dnsfunc=dnsfunc)  # as sent: broken


# -- the milter adapter: the scan runs as the body chunks arrive -----------------------------------------


class ChunkCtx(testctx.TestCtx):
    """Feeds the body in given CRLF chunks, as Postfix's body callbacks would."""

    chunks: list[bytes] = []

    def _feed_body(self, bfp):
        for chunk in self.chunks:
            rc = self._priv.body(chunk)
            if rc != Milter.CONTINUE:
                return rc
        return Milter.CONTINUE


@pytest.mark.parametrize("cut", [500, 998, 999, 1000, 1001])
def test_milter_folds_a_line_split_across_two_body_chunks(runtime, monkeypatch, caplog, cut):
    from mattermail.milter.app import MatterMilter

    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])
    monkeypatch.setattr(MatterMilter, "runtime", runtime, raising=False)
    monkeypatch.setattr(Milter, "factory", MatterMilter)
    body = b"z" * 998 + b"\r\n" + b"z" * 999 + b"\r\n"  # the second line is long; cut inside either
    ctx = ChunkCtx()
    ctx.chunks = [body[:cut + 1000], body[cut + 1000:]]
    ctx._setsymval("i", "4QLONG")
    ctx._setsymval("{auth_authen}", "alice@lawfirm.test")
    ctx._connect(ip="192.0.2.9")
    caplog.set_level("INFO", "mattermail.milter")
    msg = b"From: alice@lawfirm.test\nTo: bob@example.test\nSubject: chunks\n\nignored\n"
    rc = ctx._feedFile(io.BytesIO(msg), "alice@lawfirm.test", "bob@example.test")
    assert rc == Milter.ACCEPT
    assert ctx._bodyreplaced and ctx._body.getvalue().partition(b"\n\n")[2] == postfix_send(body), cut
    assert "long_lines=folded(1)" in caplog.messages[-1], caplog.messages[-1]


@pytest.mark.parametrize("disclaimer", [False, True])
def test_long_header_with_forged_results_and_a_reencoded_body(runtime, disclaimer):
    """The header folds, the disclaimer's header changes and the deletion of a forged A-R all reach Postfix."""
    if disclaimer:
        storemod.set_disclaimer(runtime.store(), "default", "", "Confidential.", None)
    ours = runtime.config.authserv_id
    refs = " " + " ".join(f"<{i}.thread@lawfirm.test>" for i in range(60))
    headers = [("Authentication-Results", f" {ours}; dkim=pass header.d=bank.test"),
               ("From", " Alice <alice@lawfirm.test>"), ("To", " bob@example.test"), ("References", refs),
               ("Subject", " s"), ("Content-Type", " text/plain"), ("Content-Transfer-Encoding", " 7bit")]
    sub = outbound.Submission.of(headers, LONG_TEXT + b"\r\n", queue_id="Q5", login="alice@lawfirm.test",
                                 client="127.0.0.1", mail_from="alice@lawfirm.test", recipients=["bob@example.test"])
    out = outbound.process(sub, runtime)
    notes = " ".join(out.notes)
    assert "long_header_lines=folded(1)" in notes and "removed_forged_ar=1" in notes, notes
    assert ("long_lines=folded(1)" in notes) is not disclaimer, notes  # with it, the text is QP instead
    assert out.header_changes[-1] == ("Authentication-Results", 1, ""), out.header_changes
    final = apply(sub.headers, out.header_changes)
    assert [n for n, _ in final].count("Authentication-Results") == 0
    assert [v for n, v in final if n == "Content-Transfer-Encoding"] == [" quoted-printable" if disclaimer else " 7bit"]
    assert ("disclaimer=default" in notes) is disclaimer, notes
    stored, wire, results = sent_and_verified(runtime, sub, out)
    assert wire == stored and results == [True, True], (results, notes)
