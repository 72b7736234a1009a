"""Unfiled mail's notices go through the outbox: 250 after the commit, sent by the forwarder thread."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pytest

from mattermail.config import from_dict
from mattermail.router import filing, forward, forwarder, lmtp
from mattermail.router.forward import notice_message_id
from mattermail.store import Store, pending_forwards, transaction

from .test_router_lmtp import MSG, lmtp_send, running

NOBODY = "nobody@matters.lawfirm.test"


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "m")
    yield s
    s.close()


@pytest.fixture
def cfg(tmp_path):
    return from_dict({"router": {"failed_mail_address": "failed@lawfirm.test"},
                      "general": {"hostname": "mx.lawfirm.test"},
                      "postfix": {"config_dir": str(tmp_path / "etc")}})


def fake_sendmail(tmp_path, monkeypatch, body: str = "") -> "Path":
    """A sendmail that saves each notice as sent/<n>.eml; ``body`` runs first (sleep, fail)."""
    out = tmp_path / "sent"
    out.mkdir(exist_ok=True)
    script = tmp_path / "sendmail"
    script.write_text('#!/bin/sh\n%s\nn=$(ls "%s" | wc -l)\ncat > "%s/$n.eml"\nexit 0\n' % (body, out, out))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(forward, "SENDMAIL", str(script))
    return out


def wait_for(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)
    return found


def test_a_stuck_sendmail_does_not_stall_deliveries(store, cfg, tmp_path, monkeypatch):
    started, release = tmp_path / "started", tmp_path / "release"
    # sendmail hangs until the test releases it (at most 20 s)
    sent = fake_sendmail(tmp_path, monkeypatch, f'touch "{started}"\ni=0\nwhile [ ! -e "{release}" ] && '
                                                f'[ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done')
    handler = lmtp.DeliveryHandler(store, config=cfg)
    try:
        with running(store, handler) as port:
            assert [c for c, _ in lmtp_send(port, [NOBODY])] == [250]
            wait_for(started.exists, "the forwarder to start sendmail")
            times = []
            for i in range(5):  # sendmail is stuck now; deliveries go on
                t0 = time.monotonic()
                codes = [c for c, _ in lmtp_send(port, [f"nobody{i}@matters.lawfirm.test"])]
                times.append(time.monotonic() - t0)
                assert codes == [250], codes
            assert max(times) < 2.0, f"deliveries behind a stuck sendmail took {times}"
            assert not list(sent.glob("*.eml")) and len(pending_forwards(store)) == 6
            release.touch()
            wait_for(lambda: not pending_forwards(store), "the outbox to drain once sendmail returns")
    finally:
        release.touch()
    assert len(list(sent.glob("*.eml"))) == 6
    assert store.db.execute("SELECT count(*) FROM events WHERE kind = 'forwarded'").fetchone()[0] == 6


def queue_one(store, cfg, raw=MSG, qid="4ABCDEF12") -> int:
    """File a message for an unknown address, as a batch does: its notice queued, not sent."""
    sha, _ = store.write_blob(raw)
    with transaction(store):
        res = filing.file_stored(raw, sha, "bob@example.test", [NOBODY], store, cfg, qid)
    [rid] = res.outbox
    return rid


def test_records_left_by_a_previous_run_are_sent_at_start_up(store, cfg, tmp_path, monkeypatch):
    sent = fake_sendmail(tmp_path, monkeypatch)
    rid = queue_one(store, cfg)  # committed, then the process "died" before its forwarder ran
    with running(store, lmtp.DeliveryHandler(store, config=cfg)):
        wait_for(lambda: not pending_forwards(store), "the start-up drain")
    [notice] = sent.glob("*.eml")
    assert f"Message-ID: <unfiled.{rid}.".encode() in notice.read_bytes()


def test_a_failing_sendmail_is_retried_with_backoff_and_logged(store, cfg, tmp_path, monkeypatch, caplog):
    flag = tmp_path / "fail"
    flag.write_text("")
    sent = fake_sendmail(tmp_path, monkeypatch, f'[ -e "{flag}" ] && {{ echo "queue file write error" >&2; exit 75; }}')
    queue_one(store, cfg)
    caplog.set_level(logging.INFO, "mattermail.router")
    fw = forwarder.Forwarder(store, lambda: cfg, base_delay=0.2, max_delay=0.4)
    fw.start()
    try:
        failures = wait_for(lambda: [r.getMessage() for r in caplog.records if "failed (outbox" in r.getMessage()][2:],
                            "three failed attempts")
        flag.unlink()
        wait_for(lambda: not pending_forwards(store), "the retry that succeeds")
    finally:
        fw.stop()
    lines = [r.getMessage() for r in caplog.records if "failed (outbox" in r.getMessage()]
    assert all(ln.startswith("4ABCDEF12: forwarding unfiled mail to <failed@lawfirm.test> failed") and
               "exit 75: queue file write error" in ln for ln in lines), lines
    assert "attempt 1), retry in 0s" in lines[0] and "attempt 3), retry in 0s" in failures[0], lines
    assert len(list(sent.glob("*.eml"))) == 1
    assert store.db.execute("SELECT count(*) FROM events WHERE kind = 'forwarded'").fetchone()[0] == 1


def test_a_crash_between_sendmail_and_the_mark_sends_one_recognisable_duplicate(store, cfg, tmp_path, monkeypatch):
    """sendmail took the notice, then the process died before the record was marked sent: the next start
    sends it again — once more, with the same Message-ID — and then never again."""
    sent = fake_sendmail(tmp_path, monkeypatch)
    rid = queue_one(store, cfg)

    class Died(BaseException):
        pass

    def die(*a, **k):
        raise Died()

    with monkeypatch.context() as m:
        m.setattr(forwarder, "mark_forwarded", die)
        with pytest.raises(Died):
            forwarder.send_pending(store, cfg)
    assert len(pending_forwards(store)) == 1  # not marked: the record survives the "crash"
    assert forwarder.send_pending(store, cfg) == []  # the next start's drain
    assert forwarder.send_pending(store, cfg) == [] and pending_forwards(store) == []
    notices = [p.read_bytes() for p in sorted(sent.glob("*.eml"))]
    assert len(notices) == 2, len(notices)
    [sha] = [r[0] for r in store.db.execute("SELECT sha256 FROM messages")]
    mid = notice_message_id(rid, sha, "mx.lawfirm.test")
    assert all(f"Message-ID: {mid}\n".encode() in n for n in notices), mid
    assert store.db.execute("SELECT count(*) FROM events WHERE kind = 'forwarded'").fetchone()[0] == 1


def test_the_notice_is_built_from_the_stored_file(store, cfg, tmp_path, monkeypatch):
    sent = fake_sendmail(tmp_path, monkeypatch)
    raw = MSG.replace(b"body", b"k\xc3\xb6rper")  # 8-bit: declared as such
    queue_one(store, cfg, raw)
    assert forwarder.send_pending(store, cfg) == []
    [notice] = [p.read_bytes() for p in sent.glob("*.eml")]
    assert raw.replace(b"\r\n", b"\n") in notice and b"Content-Transfer-Encoding: 8bit\nContent-Type" not in notice
    assert b"Content-Type: message/rfc822\n" in notice and b"\nContent-Transfer-Encoding: 8bit\n\nReceived:" in notice
    assert b"<nobody@matters.lawfirm.test>: no rule matched" in notice and notice.endswith(b"--\n")
    spool = store.messages_dir / ".spool"
    assert not spool.exists() or not list(spool.iterdir())  # its temp file is gone
