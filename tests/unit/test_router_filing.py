"""Filing (router/filing.py) against a real store: one transaction, idempotent, searchable, forwarded."""

from __future__ import annotations

import json
import stat
import time

import pytest

from mattermail.config import from_dict
from mattermail.capture import capture_address
from mattermail.store import directory as d
from mattermail.router import filing, forward
from mattermail.router.forward import notice_message_id
from mattermail.router.forwarder import send_pending
from mattermail.store import index_pending, pending_count, pending_forwards
from mattermail.store import search as store_search
from mattermail.router.capture_link import inspect_captures
from mattermail.store import EnvelopeRecord, Store, record_envelope

CA = "matters.lawfirm.test"
SECRET = b"s" * 32


def make_cfg(tmp_path, **router):
    (tmp_path / "capture.key").write_bytes(SECRET)
    return from_dict({"general": {"hostname": "mx.lawfirm.test", "sending_domains": ["lawfirm.test"],
                                  "catchall_domains": [CA]},
                      "capture": {"address": f"capture@{CA}", "secret_file": str(tmp_path / "capture.key")},
                      "postfix": {"config_dir": str(tmp_path / "etc")}, "router": router})


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "m")
    d.add_person(s, "client@example.test", "Client")  # id 1
    d.add_person(s, "alice@lawfirm.test", "Alice")  # id 2
    d.add_person(s, "bcc-client@example.test", "Bcc'd client")  # id 3
    d.add_matter(s, "1234", "Smith v Jones")
    d.add_matter(s, "5678", "Estate of Brown")
    yield s
    s.close()


def msg(subject="update", frm="client@example.test", to=f"1234@{CA}", body="Please see the zebrafish report.",
        extra=""):
    return (f"{extra}From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\n"
            f"{body}\r\n").encode()


def counts(s):
    return {t: s.count(t) for t in ("messages", "deliveries", "filings", "events", "captures")}


def test_one_message_for_two_addresses_is_stored_once_and_filed_for_each(store, tmp_path):
    cfg = make_cfg(tmp_path)
    raw = msg(to=f"1234@{CA}, m-5678@{CA}")
    res = filing.file_message(raw, "client@example.test", [f"1234@{CA}", f"m-5678@{CA}"], store, cfg, "Q1")
    assert [o.kind for o in res.outcomes] == ["filed", "filed"]
    assert res.outcomes[0].summary == "filed=matter:1234,person:1"
    assert res.outcomes[1].summary == "filed=matter:5678,person:1"
    rows = store.db.execute("SELECT matter, person, rule, recipient FROM filings ORDER BY id").fetchall()
    assert rows == [("1234", None, "matter-address", f"1234@{CA}"), (None, 1, "sender", f"1234@{CA}"),
                    ("5678", None, "matter-address", f"m-5678@{CA}"), (None, 1, "sender", f"m-5678@{CA}")]
    assert counts(store) == {"messages": 1, "deliveries": 2, "filings": 4, "events": 2, "captures": 0}
    assert store.db.execute("SELECT direction, system FROM messages").fetchone() == ("inbound", 0)
    assert [e[0] for e in store.db.execute("SELECT kind FROM events")] == ["filed", "filed"]

    # Postfix redelivers after a crash (same queue id), or another copy arrives: nothing is filed twice.
    again = filing.file_message(raw, "client@example.test", [f"1234@{CA}", f"m-5678@{CA}"], store, cfg, "Q1")
    assert not again.new and again.message_id == res.message_id
    assert [o.new_filings for o in again.outcomes] == [0, 0] and [o.new_filings for o in res.outcomes] == [2, 2]
    c = counts(store)
    assert c["messages"] == 1 and c["filings"] == 4 and c["deliveries"] == 2


def test_full_text_search_finds_body_and_subject_words(store, tmp_path):
    cfg = make_cfg(tmp_path)
    html = ("MIME-Version: 1.0\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n<html><style>.hidden{}</style><body><p>Caf=E9 "
            "<b>quarterly</b>&amp;annual figures</p></body></html>\r\n")
    raw = msg(subject="=?utf-8?q?Pr=C3=BCfung_schedule?=", extra="", body="").replace(
        b"\r\n\r\n\r\n", b"\r\n" + html.encode(), 1)
    res = filing.file_message(raw, "client@example.test", [f"1234@{CA}"], store, cfg, "Q2")

    def search(q):
        return [h.message.id for h in store_search(store, q)]

    # filing queues the message for the index; the indexer (after the commit) puts it there
    assert search("quarterly") == [] and pending_count(store) == 1
    assert index_pending(store) == 1 and pending_count(store) == 0
    assert search("quarterly") == [res.message_id] and search("café") == [res.message_id]
    assert search("hidden") == [] and search("schedule") == [res.message_id]
    assert store.db.execute("SELECT subject FROM messages").fetchone()[0] == "Prüfung schedule"


def test_a_failure_inside_the_transaction_commits_nothing(store, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(filing, "log_event", boom)
    with pytest.raises(RuntimeError):
        filing.file_message(msg(), "client@example.test", [f"1234@{CA}"], store, cfg, "Q3")
    assert counts(store) == {"messages": 0, "deliveries": 0, "filings": 0, "events": 0, "captures": 0}


@pytest.fixture
def fake_sendmail(tmp_path, monkeypatch):
    out = tmp_path / "sent"
    out.mkdir()
    script = tmp_path / "sendmail"
    script.write_text('#!/bin/sh\nn=$(ls "%s" | wc -l)\nprintf "%%s\\n" "$@" > "%s/$n.args"\ncat > "%s/$n.eml"\n'
                      'exit ${FAKE_SENDMAIL_EXIT:-0}\n' % (out, out, out))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(forward, "SENDMAIL", str(script))
    return out


def test_unfiled_mail_is_kept_and_forwarded_once_with_the_reason(store, tmp_path, fake_sendmail):
    cfg = make_cfg(tmp_path, failed_mail_address="failed@lawfirm.test")
    raw = msg(to=f"9999@{CA}", frm="stranger@other.test", body="unknown matter body")
    res = filing.file_message(raw, "stranger@other.test", [f"9999@{CA}"], store, cfg, "Q4")
    o = res.outcomes[0]
    assert o.kind == "unfiled" and o.summary == 'unfiled="unknown matter 9999"' and o.forward_error is None
    assert store.count("filings") == 0 and store.count("messages") == 1
    ev = store.db.execute("SELECT detail FROM events WHERE kind = 'unfiled'").fetchone()[0]
    assert json.loads(ev)["reason"] == "unknown matter 9999"
    args = (fake_sendmail / "0.args").read_text().split("\n")
    assert args[:7] == ["-C", str(tmp_path / "etc"), "-i", "-f", "<>", "--", "failed@lawfirm.test"]
    notice = (fake_sendmail / "0.eml").read_bytes()
    assert b"unknown matter 9999" in notice and b"Auto-Submitted: auto-generated" in notice
    assert b"Content-Type: message/rfc822" in notice and raw.replace(b"\r\n", b"\n") in notice
    # A redelivery sends no second notice.
    filing.file_message(raw, "stranger@other.test", [f"9999@{CA}"], store, cfg, "Q4")
    assert len(list(fake_sendmail.glob("*.eml"))) == 1


def test_a_failed_forward_stays_in_the_outbox_until_sent_once(store, tmp_path, fake_sendmail, monkeypatch):
    cfg = make_cfg(tmp_path, failed_mail_address="failed@lawfirm.test")
    raw = msg(to=f"nobody@{CA}", frm="stranger@other.test")
    monkeypatch.setenv("FAKE_SENDMAIL_EXIT", "75")
    res = filing.file_message(raw, "stranger@other.test", [f"nobody@{CA}"], store, cfg, "Q5")
    assert res.outcomes[0].forward_error and "exit 75" in res.outcomes[0].forward_error
    assert store.count("messages") == 1  # the original is kept whatever happens
    [rec] = pending_forwards(store)
    assert rec.attempts == 1 and "exit 75" in rec.last_error
    monkeypatch.setenv("FAKE_SENDMAIL_EXIT", "0")
    # Postfix redelivering the message queues no second notice; the record is not due yet either
    res = filing.file_message(raw, "stranger@other.test", [f"nobody@{CA}"], store, cfg, "Q5")
    assert res.outbox == [] and len(pending_forwards(store)) == 1
    assert send_pending(store, cfg) == []  # nothing due: the retry waits for its backoff
    assert len(pending_forwards(store)) == 1
    assert send_pending(store, cfg, ids=[rec.id]) == []
    assert pending_forwards(store) == []
    assert store.db.execute("SELECT count(*) FROM events WHERE kind = 'forwarded'").fetchone()[0] == 1
    sent = sorted(fake_sendmail.glob("*.eml"))
    assert len(sent) == 2  # the failed attempt's, then the one that succeeded
    assert f"Message-ID: {notice_message_id(rec.id, rec.sha256, cfg.general.hostname)}".encode() in sent[-1].read_bytes()


def test_system_mail_is_filed_as_system_and_never_forwarded(store, tmp_path, fake_sendmail):
    cfg = make_cfg(tmp_path, failed_mail_address="failed@lawfirm.test")
    bounce = msg(to=f"nobody@{CA}", frm="MAILER-DAEMON@other.test", extra="Auto-Submitted: auto-replied\r\n")
    res = filing.file_message(bounce, "", [f"nobody@{CA}"], store, cfg, "Q6")
    assert res.system and res.outcomes[0].kind == "unfiled"
    null_sender = msg(to=f"1234@{CA}", frm="MAILER-DAEMON@other.test")
    res2 = filing.file_message(null_sender, "", [f"1234@{CA}"], store, cfg, "Q7")
    assert res2.system and res2.outcomes[0].kind == "filed"
    assert [r[0] for r in store.db.execute("SELECT system FROM messages ORDER BY id")] == [1, 1]
    assert list(fake_sendmail.iterdir()) == []


def capture_setup(store, rcpts):
    record_envelope(store, EnvelopeRecord("0123456789ab", "QOUT", "alice@lawfirm.test", tuple(rcpts),
                                          "alice@lawfirm.test", "127.0.0.1", time.time()))
    return capture_address(f"capture@{CA}", "0123456789ab", SECRET)


def test_capture_copy_files_to_the_bccd_client_from_the_recorded_envelope(store, tmp_path):
    cfg = make_cfg(tmp_path)
    addr = capture_setup(store, ["friend@other.test", "bcc-client@example.test"])
    raw = msg(frm="alice@lawfirm.test", to="friend@other.test", subject="hello")
    caps = inspect_captures([addr], cfg.capture.address, SECRET, store)
    res = filing.file_message(raw, "alice@lawfirm.test", [addr], store, cfg, "QC", caps)
    assert res.direction == "outbound" and res.outcomes[0].summary == "filed=person:3"
    assert store.db.execute("SELECT person, rule, detail FROM filings").fetchone() == (
        3, "correspondent", "bcc-client@example.test (envelope, Bcc)")
    assert store.db.execute("SELECT ref, verified FROM captures").fetchone() == ("0123456789ab", 1)
    assert store.db.execute("SELECT direction, capture FROM messages WHERE id = ?",
                            [res.message_id]).fetchone() == ("outbound", "verified")
    # a forged reference is not trusted: not outbound, no envelope, filed like any inbound mail (by sender)
    forged = addr.replace(addr.split(".")[1][:4], "0000")
    raw2 = msg(frm="alice@lawfirm.test", to="friend@other.test", subject="forged")
    caps = inspect_captures([forged], cfg.capture.address, SECRET, store)
    res = filing.file_message(raw2, "alice@lawfirm.test", [forged], store, cfg, "QF", caps)
    assert res.direction == "inbound" and "capture=forged" in res.outcomes[0].capture_note
    assert [(f.rule, f.person_id) for f in res.outcomes[0].result.filings] == [("sender", 2)]
    assert store.db.execute("SELECT direction, capture FROM messages WHERE id = ?",
                            [res.message_id]).fetchone() == ("inbound", "unverified")


@pytest.mark.parametrize("shape", ["bare", "forged-mac", "made-up-ref", "no-envelope", "junk-extension", "upper-case"])
def test_a_copy_to_the_capture_address_that_does_not_verify_is_kept_inbound_and_unverified(store, tmp_path, caplog,
                                                                                           shape):
    """Outsiders (or a path that skipped the milter) reaching the capture address never make an outbound record."""
    cfg = make_cfg(tmp_path)
    good = capture_setup(store, ["client@example.test"])
    mac = good.partition("@")[0].rpartition(".")[2]
    rcpt = {"bare": f"capture@{CA}", "forged-mac": good.replace(f".{mac}@", f".{mac[::-1]}@"), "made-up-ref": f"capture+abcdefabcdef.0123456789abcdef@{CA}",
            "no-envelope": capture_address(f"capture@{CA}", "fedcba987654", SECRET),
            "junk-extension": f"capture+junk@{CA}", "upper-case": f"CAPTURE@{CA.upper()}"}[shape]
    assert rcpt != good
    raw = msg(frm="ceo@lawfirm.test", to="client@example.test", subject=f"planted {shape}")
    res = filing.file_message(raw, "ceo@lawfirm.test", [rcpt], store, cfg, "QP")
    row = store.db.execute("SELECT direction, capture FROM messages WHERE id = ?", [res.message_id]).fetchone()
    assert row == ("inbound", "unverified"), f"{shape}: stored as {row}"
    assert res.direction == "inbound" and res.outcomes[0].unverified
    assert not [f for f in res.outcomes[0].result.filings if f.rule == "correspondent"]
    event = json.loads(store.db.execute("SELECT detail FROM events WHERE message = ?", [res.message_id]).fetchone()[0])
    assert event["capture"] == "unverified"
    assert any("marked unverified" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_insert_refuses_an_outbound_row_that_is_not_a_verified_capture(store):
    from mattermail.store import insert_message

    with pytest.raises(ValueError, match="verified capture"):
        insert_message(store, b"Subject: x\r\n\r\nx\r\n", "0" * 64, "outbound", capture="unverified")


def test_duplicate_bare_capture_copy_is_not_filed_twice(store, tmp_path):
    cfg = make_cfg(tmp_path)
    addr = capture_setup(store, ["client@example.test"])
    raw = msg(frm="alice@lawfirm.test", to="client@example.test")
    res = filing.file_message(raw, "alice@lawfirm.test", [f"capture@{CA}", addr], store, cfg, "QD")
    assert [o.kind for o in res.outcomes] == ["duplicate", "filed"]
    assert store.count("filings") == 1


def test_import_without_envelope_resolves_from_trusted_headers(store, tmp_path):
    cfg = make_cfg(tmp_path)
    raw = msg(to="someone@lawfirm.test", frm="stranger@other.test",
              extra=f"Delivered-To: 5678@{CA}\r\nReceived: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                    f"Delivered-To: 1234@{CA}\r\n")
    explained = filing.route(raw, None, store, cfg)
    assert [f.matter for f in explained.filings] == ["5678"] and explained.resolved == [f"5678@{CA} (Delivered-To)"]
    assert store.count("messages") == 0  # route() writes nothing
    res = filing.file_message(raw, None, [], store, cfg, source="import")
    assert [(o.recipient, o.summary) for o in res.outcomes] == [(f"5678@{CA}", "filed=matter:5678")]
    assert store.count("deliveries") == 0 and json.loads(
        store.db.execute("SELECT detail FROM events").fetchone()[0])["source"] == "import"
    deeper = make_cfg(tmp_path, trusted_hops=2)
    assert {f.matter for f in filing.route(raw, None, store, deeper).filings} == {"1234", "5678"}


def test_route_explain_of_a_recipient(store, tmp_path):
    cfg = make_cfg(tmp_path)
    d.add_alias(store, f"smith@{CA}", [CA], matter="1234")
    r = filing.route(msg(frm="client@example.test"), f"smith@{CA}", store, cfg)
    assert [(f.matter, f.person_id, f.rule) for f in r.filings] == [("1234", None, "alias"), (None, 1, "sender")]
    assert len(r.trace) == 8 and r.unfiled_reason is None  # one line per rule
    none = filing.route(msg(frm="x@other.test", extra=""), None, store, cfg)
    assert none.unfiled_reason == "no rule matched" and none.trace[0].startswith("resolution: no catch-all address")
    assert store.count("events") == 0


def test_header_text_without_encoded_words_is_taken_as_it_is():
    """The subject/from text of the messages row and the rules skip RFC 2047 decoding when there is no "=?":
    what decoding would give for such text is the text itself (random header-like strings: blanks, non-ASCII,
    8-bit bytes as parsed, "?=" alone), and encoded words are still decoded."""
    import random
    from email.header import decode_header, make_header

    rnd = random.Random(14)
    alphabet = ["a", "Z", " ", "\t", "?", "=", "?=", "é", "\udce9", "\u2028", "(", ")", "\"", ";", "_", "Q"]
    for _ in range(5000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        if "=?" not in s:
            assert str(make_header(decode_header(s))) == s, repr(s)
    assert filing._decoded("=?utf-8?q?Gr=C3=BC=C3=9Fe?=  aus  Bonn") == "Grüße aus Bonn"
    assert filing._decoded("plain  subject\t here") == "plain subject here"
