"""Two-way capture (issue 17 part 2): the milter's inbound copy (milter/twoway.py, through the milter class)
and what the router keeps of it (router/filing.py): filed when a rule files it, else dropped unstored
(``capture.inbound = "known"``) or kept as personal (``"all"``)."""

from __future__ import annotations

import io
import logging

import Milter
import pytest
from Milter import testctx

from mattermail import capture, config
from mattermail import store as storemod
from mattermail.config import from_dict
from mattermail.milter import twoway
from mattermail.milter.app import MatterMilter
from mattermail.milter.runtime import Runtime
from mattermail.router import filing
from mattermail.store import EnvelopeRecord, Store, directory as d, record_envelope

CA = "matters.lawfirm.test"
BASE = f"capture@{CA}"
SECRET = b"w" * 32


# -- the milter ---------------------------------------------------------------------------------------

# the tests whose milter reads users and writes envelopes run on both engines
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ("sqlite", "postgresql"), indirect=True)


def runtime(tmp_path, location=None, **capture_cfg) -> Runtime:
    """``location``: a ``new_store_location`` (a PostgreSQL URL becomes store.url); default the SQLite file."""
    (tmp_path / "secret").write_bytes(SECRET)
    store = {"path": str(tmp_path / "s.sqlite"), "messages_dir": str(tmp_path / "m")}
    if isinstance(location, str):
        store["url"] = location
    cfg = config.from_dict({
        "general": {"sending_domains": ["lawfirm.test"], "catchall_domains": [CA]},
        "milter": {"trusted_networks": ["127.0.0.1/32"]},
        "store": store,
        "dkim": {"keys_dir": str(tmp_path / "keys")},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 1.0},
        "inbound": {"on_temperror": "accept"},
        "capture": {"address": BASE, "secret_file": str(tmp_path / "secret"), **capture_cfg}})
    rt = Runtime(cfg)
    storemod.add_user(rt.store(), "alice@lawfirm.test", "{ARGON2ID}x")
    return rt


HEADERS = [("From", " Client <client@example.test>"), ("To", " alice@lawfirm.test"),
           ("Message-ID", " <Reply.1@Example.TEST>")]


@BOTH_ENGINES
def test_inbound_mail_to_a_user_gets_a_capture_copy_with_its_envelope(tmp_path, new_store_location):
    rt = runtime(tmp_path, new_store_location())
    copy = twoway.inbound_copy(rt, "Q1", "client@example.test", ["Alice@LawFirm.test", "nobody@lawfirm.test"],
                               HEADERS, "192.0.2.7")
    parsed = capture.parse_capture_address(copy.recipient, BASE, SECRET)
    assert parsed.valid and copy.note == f"capture={parsed.ref} (inbound)"
    env = storemod.get_envelope(rt.store(), parsed.ref)
    assert (env.direction, env.mail_from, env.recipients, env.login, env.message_id) == (
        "inbound", "client@example.test", ("Alice@LawFirm.test", "nobody@lawfirm.test"), "", "Reply.1@example.test")


@pytest.mark.parametrize("mail_from, rcpts, headers, cfg, note", [
    ("client@example.test", ["bob@lawfirm.test"], HEADERS, {}, ""),  # no user among the recipients
    ("client@example.test", ["alice@lawfirm.test", f"1234@{CA}"], HEADERS, {}, ""),  # the router files it anyway
    ("client@example.test", ["alice@lawfirm.test"], HEADERS, {"inbound": "off"}, ""),
    ("", ["alice@lawfirm.test"], HEADERS, {}, "capture=no (null sender)"),
    ("client@example.test", ["alice@lawfirm.test"], HEADERS + [("Auto-Submitted", " auto-replied")], {},
     "capture=no (Auto-Submitted: auto-replied)"),
    ("client@example.test", ["alice@lawfirm.test"], HEADERS + [("Content-Type", " multipart/report; b=x")], {},
     "capture=no (multipart/report)"),
    ("client@example.test", ["alice@lawfirm.test"], HEADERS, {"exclude_senders": ["@example\\.test$"]},
     "capture=no (sender <client@example.test> matches exclusion '@example\\\\.test$')"),
])
def test_no_copy(tmp_path, mail_from, rcpts, headers, cfg, note):
    rt = runtime(tmp_path, **cfg)
    assert twoway.inbound_copy(rt, "Q1", mail_from, rcpts, headers, "192.0.2.7") == twoway.Copy(None, note)
    assert rt.store().count("envelopes") == 0


def test_capture_impossible_defers_or_accepts_per_on_failure(tmp_path):
    rt = runtime(tmp_path)
    (tmp_path / "secret").unlink()
    copy = twoway.inbound_copy(rt, "Q1", "client@example.test", ["alice@lawfirm.test"], HEADERS, "192.0.2.7")
    assert copy.recipient is None and copy.tempfail.startswith("capture impossible")
    (tmp_path / "x").mkdir()
    rt = runtime(tmp_path / "x", on_failure="accept")
    (tmp_path / "x" / "secret").unlink()
    copy = twoway.inbound_copy(rt, "Q1", "client@example.test", ["alice@lawfirm.test"], HEADERS, "192.0.2.7")
    assert copy.recipient is None and not copy.tempfail and copy.note.startswith("capture=FAILED")


MSG = b"From: client@example.test\nTo: alice@lawfirm.test\nSubject: hi\nMessage-ID: <m1@example.test>\n\nhello\n"


@pytest.fixture
def milter(monkeypatch, tmp_path, new_store_location):
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])
    MatterMilter.runtime = runtime(tmp_path, new_store_location())
    Milter.factory = MatterMilter
    return MatterMilter.runtime


@BOTH_ENGINES
def test_the_milter_adds_the_capture_recipient_to_accepted_inbound_mail(milter, caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    ctx = testctx.TestCtx()
    ctx._setsymval("i", "4QIN1")
    assert ctx._connect(ip="192.0.2.7") == Milter.CONTINUE
    assert ctx._feedFile(io.BytesIO(MSG), "client@example.test", "alice@lawfirm.test") == Milter.ACCEPT
    (added,) = [r for r in ctx._addrcpt]
    rcpt = added[0] if isinstance(added, tuple) else added
    assert capture.parse_capture_address(rcpt.strip("<>"), BASE, SECRET).valid
    assert "capture=" in caplog.messages[-1] and "(inbound)" in caplog.messages[-1]
    # nothing in the message tells of the copy (only our Authentication-Results is added)
    assert not any("capture" in f"{k}: {v}".lower() for k, v in ctx._msg.items())


# -- the router ------------------------------------------------------------------------------------------

def router_cfg(tmp_path, inbound="known"):
    (tmp_path / "capture.key").write_bytes(SECRET)
    return from_dict({"general": {"hostname": "mx.lawfirm.test", "sending_domains": ["lawfirm.test"],
                                  "catchall_domains": [CA]},
                      "capture": {"address": BASE, "secret_file": str(tmp_path / "capture.key"), "inbound": inbound},
                      "postfix": {"config_dir": str(tmp_path / "etc")}})


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "m")
    d.add_person(s, "client@example.test", "Client")  # id 1
    d.add_matter(s, "1234", "Smith v Jones")
    yield s
    s.close()


def deliver(store, cfg, frm: str, ref: str, extra: str = "", subject: str = "hello"):
    record_envelope(store, EnvelopeRecord(ref, "QIN", frm, ("alice@lawfirm.test",), "", "192.0.2.7", 0.0,
                                          message_id=f"{ref}@x.test", direction="inbound"))
    raw = (f"From: {frm}\r\nTo: alice@lawfirm.test\r\nSubject: {subject}\r\nMessage-ID: <{ref}@x.test>\r\n{extra}"
           f"\r\nA private note {ref}.\r\n").encode()
    rcpt = capture.capture_address(BASE, ref, SECRET)
    return raw, filing.file_message(raw, frm, [rcpt], store, cfg, "QIN")


def test_a_known_correspondent_files_the_inbound_copy_as_inbound(store, tmp_path):
    raw, res = deliver(store, router_cfg(tmp_path), "client@example.test", "aaaaaaaaaaa1")
    assert not res.dropped and res.direction == "inbound"
    assert [(f.person_id, f.rule) for f in res.outcomes[0].result.filings] == [(1, "correspondent")]
    row = store.db.execute("SELECT direction, capture FROM messages WHERE id = ?", [res.message_id]).fetchone()
    assert row == ("inbound", "verified")


def test_a_reply_to_a_filed_message_files_by_thread(store, tmp_path):
    cfg = router_cfg(tmp_path)
    filing.file_message(b"From: a@b.test\r\nSubject: [M-1234] x\r\nMessage-ID: <orig@lawfirm.test>\r\n\r\nx\r\n",
                        None, [f"x@{CA}"], store, cfg)
    _, res = deliver(store, cfg, "stranger@else.example", "aaaaaaaaaaa2", "In-Reply-To: <orig@lawfirm.test>\r\n")
    assert [(f.matter, f.rule) for f in res.outcomes[0].result.filings] == [("1234", "thread")]


def test_personal_inbound_mail_is_dropped_unstored_with_known(store, tmp_path, caplog):
    before = {t: store.count(t) for t in ("messages", "filings", "events", "deliveries", "thread_keys")}
    raw, res = deliver(store, router_cfg(tmp_path), "friend@else.example", "aaaaaaaaaaa3")
    assert res.dropped and [o.kind for o in res.outcomes] == ["dropped"]
    assert {t: store.count(t) for t in before} == before
    assert not store.blob_path(res.sha256).exists()  # no file either
    with pytest.raises(FileNotFoundError):
        storemod.read_raw(store, res.sha256)
    assert storemod.get_envelope(store, "aaaaaaaaaaa3") is None  # and the envelope the milter recorded
    assert "dropped=personal" in res.outcomes[0].summary


def test_personal_inbound_mail_is_kept_as_personal_with_all(store, tmp_path):
    raw, res = deliver(store, router_cfg(tmp_path, "all"), "friend@else.example", "aaaaaaaaaaa4")
    assert not res.dropped and [o.kind for o in res.outcomes] == ["personal"]
    assert storemod.read_raw(store, res.sha256) == raw


def test_route_explain_says_an_inbound_copy_would_be_dropped(store, tmp_path):
    cfg = router_cfg(tmp_path)
    record_envelope(store, EnvelopeRecord("aaaaaaaaaaa5", "Q", "f@else.example", ("alice@lawfirm.test",), "",
                                          "192.0.2.7", 0.0, direction="inbound"))
    raw = b"From: f@else.example\r\nTo: alice@lawfirm.test\r\nSubject: hi\r\n\r\nx\r\n"
    res = filing.route(raw, capture.capture_address(BASE, "aaaaaaaaaaa5", SECRET), store, cfg)
    assert any("capture copy of inbound mail" in t for t in res.trace)
    assert res.trace[-1].endswith("result: dropped, not stored (capture.inbound = known)")


def test_config_inbound_is_validated():
    assert from_dict({}).capture.inbound == "known"
    with pytest.raises(config.ConfigError, match="capture.inbound"):
        from_dict({"capture": {"inbound": "some"}})
