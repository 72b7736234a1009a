"""Capture reference and the outbound decision function, without Postfix."""

from __future__ import annotations

import re

import pytest

from mattermail import config, dkimkeys
from mattermail import capture
from mattermail.milter import outbound
from mattermail.milter.runtime import Runtime
from mattermail import store as storemod

SECRET = b"0123456789abcdef0123456789abcdef"
BASE = "capture@matters.lawfirm.test"


def test_capture_address_round_trip_and_forgery():
    addr = capture.capture_address(BASE, "a1b2c3d4e5f6", SECRET)
    assert re.fullmatch(r"capture\+a1b2c3d4e5f6\.[0-9a-f]{16}@matters\.lawfirm\.test", addr)
    assert len(addr.partition("@")[0]) <= 64
    ok = capture.parse_capture_address(addr, BASE, SECRET)
    assert ok == capture.ParsedCapture("a1b2c3d4e5f6", True)
    forged = addr.replace("a1b2c3d4e5f6", "a1b2c3d4e5f7")
    assert capture.parse_capture_address(forged, BASE, SECRET).valid is False
    assert capture.parse_capture_address(addr, BASE, b"another-secret-of-some-length").valid is False
    assert capture.parse_capture_address("capture@matters.lawfirm.test", BASE, SECRET) == capture.ParsedCapture(None, True)
    assert capture.parse_capture_address("capture+junk@matters.lawfirm.test", BASE, SECRET).valid is False
    assert capture.parse_capture_address("alice+1@matters.lawfirm.test", BASE, SECRET) is None
    assert capture.parse_capture_address("capture@lawfirm.test", BASE, SECRET) is None


def test_exclusions():
    s = [re.compile(r"^noreply@", re.I)]
    r = [re.compile(r"^hr@lawfirm\.test$", re.I)]
    assert "sender" in capture.excluded("NoReply@lawfirm.test", ["x@y.test"], s, r)
    assert "<HR@lawfirm.test>" in capture.excluded("alice@lawfirm.test", ["x@y.test", "HR@lawfirm.test"], s, r)
    assert capture.excluded("alice@lawfirm.test", ["x@y.test"], s, r) is None


def test_short_or_missing_secret(tmp_path):
    with pytest.raises(capture.CaptureError, match="cannot read"):
        capture.load_secret(tmp_path / "none")
    (tmp_path / "short").write_text("abc")
    with pytest.raises(capture.CaptureError, match="shorter"):
        capture.load_secret(tmp_path / "short")


# the tests that read or write capture envelopes run on both engines
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ("sqlite", "postgresql"), indirect=True)


@pytest.fixture
def runtime(tmp_path_factory, new_store_location):
    def make(**capture_cfg) -> Runtime:
        tmp_path = tmp_path_factory.mktemp("rt")
        (tmp_path / "secret").write_bytes(SECRET)
        keys = tmp_path / "keys" / "lawfirm.test"
        dkimkeys.write_private_key(keys / "sel.ed25519.pem", dkimkeys.generate("ed25519"))
        location = new_store_location(f"{tmp_path.name}.sqlite")
        store = {"path": str(tmp_path / "s.sqlite"), "messages_dir": str(tmp_path / "m")}
        if isinstance(location, str):
            store["url"] = location
        cfg = config.from_dict({
            "store": store,
            "dkim": {"keys_dir": str(tmp_path / "keys")},
            "capture": {"address": BASE, "secret_file": str(tmp_path / "secret"), **capture_cfg},
        })
        rt = Runtime(cfg)
        storemod.add_user(rt.store(), "alice@lawfirm.test", "{ARGON2ID}x")
        storemod.set_disclaimer(rt.store(), "default", "", "Confidential.", None)
        return rt

    return make


def submission(**kw) -> outbound.Submission:
    base = dict(queue_id="QID1", login="alice@lawfirm.test", client="127.0.0.1", mail_from="alice@lawfirm.test",
                recipients=["bob@example.test", "secret-bcc@example.test"],
                headers=[("From", " Alice <alice@lawfirm.test>"), ("To", " bob@example.test"), ("Subject", " hi")],
                body=b"Hello Bob.\r\n")
    base.update(kw)
    return outbound.Submission.of(**base)


@BOTH_ENGINES
def test_full_pipeline_decision(runtime):
    rt = runtime()
    sub = submission()
    out = outbound.process(sub, rt)
    assert out.reject is None and out.tempfail is None
    parsed = capture.parse_capture_address(out.add_recipient, BASE, SECRET)
    assert parsed.valid
    env = storemod.get_envelope(rt.store(), parsed.ref)
    assert env.recipients == ("bob@example.test", "secret-bcc@example.test") and env.queue_id == "QID1"
    # The body is streamed as pieces: ranges of the spool kept as they are, and new bytes.
    assert b"".join(outbound.stream(sub, out.new_body)) == b"Hello Bob.\r\n\r\nConfidential.\r\n"
    assert out.new_body[-1] == b"\r\nConfidential.\r\n"  # appended: the original body is not copied
    assert [n for n, _ in out.signatures] == ["DKIM-Signature"]
    assert "d=lawfirm.test" in out.signatures[0][1] and "s=sel" in out.signatures[0][1]


@BOTH_ENGINES
def test_envelope_records_the_message_id_the_milter_saw(runtime):
    """Thread filing: the capture envelope keeps the submitted Message-ID, normalised."""
    rt = runtime()
    headers = [("From", " Alice <alice@lawfirm.test>"), ("To", " bob@example.test"),
               ("Message-ID", " <Draft.42@Alice.LawFirm.test>")]
    for given, want in ((headers, "Draft.42@alice.lawfirm.test"), (headers[:2], "")):
        out = outbound.process(submission(headers=given), rt)
        ref = capture.parse_capture_address(out.add_recipient, BASE, SECRET).ref
        assert storemod.get_envelope(rt.store(), ref).message_id == want


@BOTH_ENGINES
def test_reject_comes_before_any_capture(runtime):
    rt = runtime()
    out = outbound.process(submission(headers=[("From", " bob@lawfirm.test")]), rt)
    assert out.reject.code == "553" and out.add_recipient is None and not out.signatures
    assert rt.store().count("envelopes") == 0


def test_capture_copy_is_not_captured_again(runtime):
    rt = runtime()
    out = outbound.process(submission(recipients=["bob@example.test", BASE]), rt)
    assert out.add_recipient is None and "already" in " ".join(out.notes)


def test_excluded_sender_is_not_captured_but_still_signed(runtime):
    rt = runtime(exclude_senders=["^alice@"])
    out = outbound.process(submission(), rt)
    assert out.add_recipient is None and out.signatures


@BOTH_ENGINES
def test_capture_failure_tempfails_by_default_and_accepts_when_configured(runtime):
    rt = runtime()
    rt.config.capture.secret_file.unlink()
    out = outbound.process(submission(), rt)
    assert out.tempfail and "capture impossible" in out.tempfail
    rt2 = runtime(on_failure="accept")
    rt2.config.capture.secret_file.unlink()
    out2 = outbound.process(submission(), rt2)
    assert out2.tempfail is None and out2.add_recipient is None and out2.signatures
    assert "capture=FAILED" in " ".join(out2.notes)


def test_header_changes_for_a_reencoded_top_level_part():
    old = [("From", " a@b.test"), ("Content-Transfer-Encoding", " 7bit"), ("Subject", " x")]
    new = [("From", " a@b.test"), ("Content-Transfer-Encoding", " quoted-printable"), ("Subject", " x")]
    assert outbound.header_changes(old, new) == [("Content-Transfer-Encoding", 1, " quoted-printable")]
    assert outbound.header_changes(old[:1], old[:2]) == [("Content-Transfer-Encoding", 0, " 7bit")]
    assert outbound.header_changes(old, old) == []


def test_header_block_and_split_round_trip():
    headers = [("Subject", " long\n\tfolded"), ("From", "a@b.test")]  # leading space kept (P_HDR_LEADSPC)
    raw = outbound.header_block(headers) + b"body\r\n"
    assert raw == b"Subject: long\r\n\tfolded\r\nFrom:a@b.test\r\n\r\nbody\r\n"
    assert outbound.split_message(raw) == (headers, b"body\r\n")


@pytest.mark.parametrize("headers, text", [
    ([("From", ' "ceo@lawfirm.test" <alice@lawfirm.test>')],
     "<alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"),
    ([("From", " =?utf-8?q?ceo=40lawfirm.test?= <alice@lawfirm.test>")],
     "<alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"),
    ([("From", " alice@lawfirm.test"), ("Sender", " ceo@lawfirm.test")],
     "<alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
    ([("From", " alice@lawfirm.test"), ("Resent-From", " ceo@lawfirm.test")],
     "<alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
    ([("From", " alice@lawfirm.test"), ("Resent-Sender", " ceo@lawfirm.test")],
     "<alice@lawfirm.test> may not send as <ceo@lawfirm.test>"),
])
def test_spoofed_identity_fields_are_refused_before_capture(runtime, headers, text):
    rt = runtime()
    out = outbound.process(submission(headers=headers + [("Subject", " hi")]), rt)
    assert out.reject is not None and (out.reject.code, out.reject.xcode, out.reject.text) == ("553", "5.7.1", text)
    assert out.add_recipient is None and not out.signatures and rt.store().count("envelopes") == 0


def test_display_name_check_off(runtime):
    import dataclasses

    rt = runtime()
    rt.config = dataclasses.replace(rt.config, milter=dataclasses.replace(rt.config.milter, display_name_check="off"))
    out = outbound.process(submission(headers=[("From", ' "ceo@lawfirm.test" <alice@lawfirm.test>')]), rt)
    assert out.reject is None and out.add_recipient and out.signatures
    out = outbound.process(submission(headers=[("From", " alice@lawfirm.test"), ("Sender", " ceo@lawfirm.test")]), rt)
    assert out.reject is not None and "may not send as <ceo@lawfirm.test>" in out.reject.text  # ownership stays


def test_names_capture_address_readings():
    yes = ["capture@matters.lawfirm.test", "<CAPTURE@Matters.LawFirm.Test>", '"capture"@matters.lawfirm.test',
           '"cap\\ture+x"@matters.lawfirm.test', "capture+abcdefabcdef.0123456789abcdef@matters.lawfirm.test",
           "capture@matters.lawfirm.test.", "@a.example,@b.example:capture@matters.lawfirm.test",
           "capture%matters.lawfirm.test@[127.0.0.1]", "matters.lawfirm.test!capture", "capture%matters.lawfirm.test"]
    no = ["capture@lawfirm.test", "capturex@matters.lawfirm.test", "x+capture@matters.lawfirm.test", "",
          "capture", "capture@matters.lawfirm.test.evil.example", "bob@example.test", '"capture@matters.lawfirm.test"']
    assert [a for a in yes if not capture.names_capture_address(a, BASE)] == []
    assert [a for a in no if capture.names_capture_address(a, BASE)] == []


def test_submitted_authentication_results_claiming_our_id_are_deleted_and_the_signature_still_verifies(runtime):
    """Issue 11: a user may not hand a colleague "mx.lawfirm.test; dkim=pass header.d=bank.test"."""
    import dkim

    rt = runtime()
    ours = rt.config.authserv_id
    headers = [("Authentication-Results", f" {ours}; dkim=pass header.d=bank.test"),
               ("Authentication-Results", " other.example; spf=pass"),
               ("From", " Alice <alice@lawfirm.test>"), ("To", " carol@lawfirm.test"), ("Subject", " hi"),
               ("Authentication-Results", f"\n\t{ours.upper()}\n\t 1; dmarc=pass")]
    sub = submission(headers=headers, recipients=["carol@lawfirm.test"])
    out = outbound.process(sub, rt)
    deletions = [c for c in out.header_changes if c[0] == "Authentication-Results"]
    assert deletions == [("Authentication-Results", 3, ""), ("Authentication-Results", 1, "")]
    assert "removed_forged_ar=2" in out.notes
    # Apply what Postfix would: the deletions, the new body, the signature on top; then verify.
    kept = [h for i, h in enumerate(headers) if i not in (0, 5)]
    body = b"".join(outbound.stream(sub, out.new_body))
    final = outbound.header_block(out.signatures + kept) + body
    assert b"bank.test" not in final and b"other.example; spf=pass" in final
    key = rt.signing_keys()["lawfirm.test"][0]
    record = dkimkeys.dns_record(key.private_key, key.selector, key.domain)[1].encode()
    assert dkim.verify(final, dnsfunc=lambda name, timeout=5: record)
