"""The router's LMTP server over a real loopback socket."""

import asyncio
import contextlib
import logging
import smtplib
import threading
import time

import pytest

from mattermail.config import from_dict
from mattermail.router import forward, lmtp
from mattermail.store import directory
from mattermail.store import Store

MSG = (b"Received: from mx.lawfirm.test by mx.lawfirm.test (Postfix) with ESMTP id 4ABCDEF12\r\n"
       b"\tfor <1234@matters.lawfirm.test>; Mon, 23 Nov 2026 12:00:00 +0000\r\n"
       b"From: bob@example.test\r\nSubject: filing\r\n\r\nbody\r\n")


@contextlib.contextmanager
def running(store, handler=None):
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start():
        holder["servers"] = await lmtp.serve(("127.0.0.1:0",), store, handler)
        started.set()

    t = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield holder["servers"][0].sockets[0].getsockname()[1]
    finally:
        async def cancel_tasks():  # the handler's batcher
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_tasks(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


@pytest.fixture
def server(tmp_path):
    store = Store(tmp_path / "s.sqlite", tmp_path / "m")
    with running(store) as port:
        yield store, port
    store.close()


def lmtp_send(port, rcpts):
    """Send MSG and read one reply per recipient (smtplib.LMTP.sendmail reads only one)."""
    with smtplib.LMTP("127.0.0.1", port) as c:
        c.ehlo()  # smtplib.LMTP sends LHLO
        c.mail("bob@example.test")
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(MSG + b".\r\n")
        return [c.getreply() for _ in rcpts]


def test_one_reply_per_recipient_after_commit(server):
    store, port = server
    replies = lmtp_send(port, ["1234@matters.lawfirm.test", "alice+5@matters.lawfirm.test"])
    assert [code for code, _ in replies] == [250, 250]
    assert b"<1234@matters.lawfirm.test>" in replies[0][1] and b"<alice+5@" in replies[1][1]
    assert store.count("messages") == 1 and store.count("deliveries") == 2
    rows = store.db.execute("SELECT recipient, queue_id FROM deliveries ORDER BY recipient").fetchall()
    assert rows == [("1234@matters.lawfirm.test", "4ABCDEF12"), ("alice+5@matters.lawfirm.test", "4ABCDEF12")]


def test_store_failure_defers_every_recipient(server, monkeypatch):
    store, port = server

    def fail(*a, **k):
        raise OSError("disk full")

    # The router files through store.write_blob + one transaction (router/filing.py), not Store.deliver.
    monkeypatch.setattr(store, "write_blob", fail)
    replies = lmtp_send(port, ["a@matters.lawfirm.test", "b@matters.lawfirm.test"])
    assert [r[0] for r in replies] == [451, 451]
    assert b"try again later" in replies[0][1]
    assert store.count("messages") == 0


def test_queue_id_from_received():
    assert lmtp.queue_id_of(MSG) == "4ABCDEF12"
    assert lmtp.queue_id_of(b"Subject: x\r\n\r\nno received\r\n") == ""
    picked_up = b"Received: by mx.lawfirm.test (Postfix, from userid 0)\r\n\tid 32BAC214DC3; Mon, 23 Nov 2026\r\n\r\n"
    assert lmtp.queue_id_of(picked_up) == "32BAC214DC3"


def test_each_recipient_is_filed_before_its_250_and_logged(server, caplog):
    store, port = server
    directory.add_matter(store, "1234", "Smith v Jones")
    caplog.set_level(logging.INFO, "mattermail.router")
    replies = lmtp_send(port, ["1234@matters.lawfirm.test", "9999@matters.lawfirm.test"])
    assert [code for code, _ in replies] == [250, 250]
    assert store.db.execute("SELECT matter, rule FROM filings").fetchall() == [("1234", "matter-address")]
    lines = [r.getMessage() for r in caplog.records if "status=stored" in r.getMessage()]
    assert lines[0].startswith("4ABCDEF12: to=<1234@matters.lawfirm.test>") and lines[0].endswith("filed=matter:1234")
    assert lines[1].endswith('status=stored unfiled="unknown matter 9999"')


def test_failed_forward_defers_only_the_unfiled_recipient(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.sqlite", tmp_path / "m")
    directory.add_matter(store, "1234", "Smith v Jones")
    monkeypatch.setattr(forward, "SENDMAIL", "/bin/false")
    cfg = from_dict({"router": {"failed_mail_address": "failed@lawfirm.test"}})
    with running(store, lmtp.DeliveryHandler(store, config=cfg)) as port:
        replies = lmtp_send(port, ["1234@matters.lawfirm.test", "nobody@matters.lawfirm.test"])
    assert [code for code, _ in replies] == [250, 451]
    assert b"failed-mail address" in replies[1][1]
    assert store.count("messages") == 1 and store.count("filings") == 1  # kept; Postfix retries the second
    store.close()


def test_concurrent_deliveries_are_group_committed(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.sqlite", tmp_path / "m")
    directory.add_matter(store, "1234", "Smith v Jones")
    handler = lmtp.DeliveryHandler(store)
    commits = []
    execute = store.db.execute

    def counting(sql, *a, **k):
        if sql.strip().upper() == "COMMIT":
            commits.append(sql)
        return execute(sql, *a, **k)

    monkeypatch.setattr(store.db, "execute", counting)
    # Hold the writer on the first batch until every other DATA is queued behind it.
    gate = threading.Event()
    deliver = handler._deliver_batch

    taken = []

    def held(batch):
        taken.append(len(batch))
        gate.wait(10)
        return deliver(batch)

    monkeypatch.setattr(handler, "_deliver_batch", held)
    n = 8
    results = [None] * n

    def send(i):
        with smtplib.LMTP("127.0.0.1", port) as c:
            c.ehlo()
            c.mail("bob@example.test")
            assert c.rcpt("1234@matters.lawfirm.test")[0] == 250
            c.putcmd("data")
            assert c.getreply()[0] == 354
            c.send(MSG.replace(b"body", b"body %d" % i) + b".\r\n")
            results[i] = c.getreply()

    with running(store, handler) as port:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while not taken or handler._queue.qsize() + taken[0] < n:  # all queued behind the first batch
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(10)
    assert [r[0] for r in results] == [250] * n
    assert store.count("messages") == n and store.count("filings") == n and store.count("deliveries") == n
    assert len(commits) == handler.commits == 2  # the first batch, then all the others together
    assert not list((tmp_path / "m").glob("*/.tmp-*"))
    store.close()


def test_a_failed_filing_defers_only_its_message_in_the_batch(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.sqlite", tmp_path / "m")
    handler = lmtp.DeliveryHandler(store)
    real = lmtp.file_stored

    def flaky(raw, *a, **k):
        if b"body 1" in raw:
            raise RuntimeError("disk I/O error")
        return real(raw, *a, **k)

    monkeypatch.setattr(lmtp, "file_stored", flaky)
    jobs = []
    for i in range(3):
        raw = MSG.replace(b"body", b"body %d" % i)
        jobs.append(lmtp._Delivery(raw, "bob@example.test", [f"m{i}@matters.lawfirm.test"],
                                   lmtp.QueueIdAdapter(lmtp.log, {"queue_id": ""}), None))
    replies = handler._deliver_batch(jobs)
    assert [r[:3] for r in replies] == ["250", "451", "250"] and handler.commits == 1
    assert store.count("messages") == 2 and store.count("deliveries") == 2
    assert not store.db.conn.in_transaction
    store.close()
