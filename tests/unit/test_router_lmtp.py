"""The router's LMTP server over a real loopback socket."""

import asyncio
import contextlib
import hashlib
import logging
import os
import smtplib
import threading
import time
from pathlib import Path

import pytest
import uvloop

from mattermail.config import from_dict
from mattermail.router import batch, forward, lmtp
from mattermail.router.message import MessageData
from mattermail.router.rules import RouterRules
from mattermail.store import Store, directory, pending_count, pending_forwards, read_raw, search

MSG = (b"Received: from mx.lawfirm.test by mx.lawfirm.test (Postfix) with ESMTP id 4ABCDEF12\r\n"
       b"\tfor <1234@matters.lawfirm.test>; Mon, 23 Nov 2026 12:00:00 +0000\r\n"
       b"From: bob@example.test\r\nSubject: filing\r\n\r\nbody\r\n")


@contextlib.contextmanager
def running(store, handler=None):
    handler = handler or lmtp.DeliveryHandler(store)
    loop = uvloop.new_event_loop()  # the router's loop (router/__main__.py)
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
        handler.forwarder.stop()
        handler.indexer.stop()


@pytest.fixture
def server(store_location, tmp_path):
    store = Store(store_location, tmp_path / "m")
    with running(store) as port:
        yield store, port
    store.close()


def spool_files(messages_dir) -> list:
    """The files in the spool directory (none when it was never made: no message outgrew its buffer)."""
    spool = Path(messages_dir) / ".spool"
    return list(spool.iterdir()) if spool.exists() else []


def lmtp_send(port, rcpts, msg=MSG):
    """Send ``msg`` and read one reply per recipient (smtplib.LMTP.sendmail reads only one)."""
    with smtplib.LMTP("127.0.0.1", port) as c:
        c.ehlo()  # smtplib.LMTP sends LHLO
        c.mail("bob@example.test")
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(msg + b".\r\n")
        return [c.getreply() for _ in rcpts]


def test_one_reply_per_recipient_after_commit(server):
    store, port = server
    replies = lmtp_send(port, ["1234@matters.lawfirm.test", "alice+5@matters.lawfirm.test"])
    assert [code for code, _ in replies] == [250, 250]
    assert b"<1234@matters.lawfirm.test>" in replies[0][1] and b"<alice+5@" in replies[1][1]
    assert store.count("messages") == 1 and store.count("deliveries") == 2
    rows = store.db.execute("SELECT recipient, queue_id FROM deliveries ORDER BY recipient").fetchall()
    assert rows == [("1234@matters.lawfirm.test", "4ABCDEF12"), ("alice+5@matters.lawfirm.test", "4ABCDEF12")]


@pytest.mark.parametrize("size", ["inline", "small", "large"])
def test_store_failure_defers_every_recipient(server, monkeypatch, size):
    store, port = server

    def fail(*a, **k):
        raise OSError("disk full")

    # A message of at most store.inline_max bytes goes into its row (messages.raw: no file); a larger one still in
    # memory gets its file from the writer thread (Store.write_blob); a large one was streamed to a spool file,
    # which the writer thread makes durable (Store.adopt); then it is filed.
    if size == "inline":
        monkeypatch.setattr(batch, "write_filing", fail)
    else:
        monkeypatch.setattr(store, "write_blob" if size == "small" else "adopt", fail)
    msg = {"inline": MSG, "small": MSG + (b"x" * 70 + b"\r\n") * 500,
           "large": MSG + (b"x" * 70 + b"\r\n") * 5000}[size]
    replies = lmtp_send(port, ["a@matters.lawfirm.test", "b@matters.lawfirm.test"], msg)
    assert [r[0] for r in replies] == [451, 451]
    assert b"try again later" in replies[0][1]
    assert store.count("messages") == 0
    assert not spool_files(store.messages_dir)  # the spool file of the deferred DATA is gone


def test_a_small_message_makes_no_spool_file_a_large_one_is_streamed_to_one(server, monkeypatch):
    """A message smaller than the writer's buffer stays in memory until its batch writes its file; a larger one
    is in a spool file before its DATA ends (the buffer, not the message, in memory). Both are stored whole."""
    from mattermail.store.engine import BlobWriter

    store, port = server
    seen = []
    real_finish = BlobWriter.finish

    def finish(self):
        seen.append(self.path is not None and self.path.exists())
        return real_finish(self)

    monkeypatch.setattr(BlobWriter, "finish", finish)
    large = MSG + (b"y" * 70 + b"\r\n") * (BlobWriter._FLUSH // 72 + 10)
    for msg in (MSG, large):
        assert [r[0] for r in lmtp_send(port, ["1234@matters.lawfirm.test"], msg)] == [250]
    assert seen == [False, True]
    stored = {r[0]: read_raw(store, r[0]) for r in store.db.execute("SELECT sha256 FROM messages").fetchall()}
    assert sorted(stored.values()) == sorted([MSG, large]) and not spool_files(store.messages_dir)
    assert all(hashlib.sha256(raw).hexdigest() == sha for sha, raw in stored.items())  # each under its own hash


def test_a_failed_write_of_the_spool_file_defers_every_recipient_once_the_data_is_in(server, monkeypatch):
    """(A full disk while a large message is received): one 451 per recipient after the dot, no file left,
    and the session goes on."""
    store, port = server
    real_write = os.write

    def write(fd, data):
        if len(data) > 100_000:  # the spool buffer
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    big = MSG + (b"z" * 70 + b"\r\n") * 8000
    replies = lmtp_send(port, ["a@matters.lawfirm.test", "b@matters.lawfirm.test"], big)
    assert [r[0] for r in replies] == [451, 451] and b"try again later" in replies[1][1], replies
    monkeypatch.setattr(os, "write", real_write)
    assert [r[0] for r in lmtp_send(port, ["a@matters.lawfirm.test"])] == [250]
    assert store.count("messages") == 1 and not spool_files(store.messages_dir)


def test_data_is_streamed_to_the_store_not_kept_in_memory(server, monkeypatch):
    """The handler gets the spool file and the header block; envelope.content is never filled."""
    store, port = server
    seen = []
    real_item = lmtp.DeliveryHandler.item

    def item(self, envelope):
        seen.append((envelope.content, envelope.original_content, envelope.received.head))
        return real_item(self, envelope)

    monkeypatch.setattr(lmtp.DeliveryHandler, "item", item)
    replies = lmtp_send(port, ["1234@matters.lawfirm.test"])
    assert replies[0][0] == 250, replies
    head = MSG.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert seen == [(None, None, head)]
    [sha] = [r[0] for r in store.db.execute("SELECT sha256 FROM messages")]
    assert read_raw(store, sha) == MSG


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


def test_a_failing_forward_answers_250_and_keeps_the_notice_in_the_outbox(store_location, tmp_path, monkeypatch, caplog):
    store = Store(store_location, tmp_path / "m")
    directory.add_matter(store, "1234", "Smith v Jones")
    monkeypatch.setattr(forward, "SENDMAIL", "/bin/false")
    caplog.set_level(logging.INFO, "mattermail.router")
    cfg = from_dict({"router": {"failed_mail_address": "failed@lawfirm.test"}})
    with running(store, lmtp.DeliveryHandler(store, config=cfg)) as port:
        replies = lmtp_send(port, ["1234@matters.lawfirm.test", "nobody@matters.lawfirm.test"])
        assert [code for code, _ in replies] == [250, 250]  # stored and queued: Postfix need not retry
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if "forwarding unfiled mail" in r.getMessage()]:
            assert time.monotonic() < deadline, "the forwarder never tried"
            time.sleep(0.02)
    line = next(r.getMessage() for r in caplog.records if "forwarding unfiled mail" in r.getMessage())
    assert line.startswith("4ABCDEF12: forwarding unfiled mail to <failed@lawfirm.test> failed") and "exit 1" in line
    assert store.count("messages") == 1 and store.count("filings") == 1
    [rec] = pending_forwards(store)
    assert rec.attempts == 1 and rec.reasons == (("nobody@matters.lawfirm.test", "no rule matched"),) \
        and "exit 1" in rec.last_error and rec.next_try > time.time() + 10, rec
    store.close()


def test_concurrent_deliveries_are_group_committed(store_location, tmp_path, monkeypatch):
    store = Store(store_location, tmp_path / "m")
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
    deliver = handler._file

    taken = []

    def held(batch):
        taken.append(len(batch))
        gate.wait(10)
        return deliver(batch)

    monkeypatch.setattr(handler, "_file", held)
    n = 8
    results = [None] * n

    def send(i):
        [results[i]] = lmtp_send(port, ["1234@matters.lawfirm.test"], MSG.replace(b"body", b"body %d" % i))

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
    # the line the router logs at exit: 8 deliveries in those 2 batches, the held one counted as busy
    assert handler.statistics(100.0).startswith(f"statistics: {n} deliveries in 2 batches ({n / 2:.2f} per batch), "
                                                "writer busy ")
    assert handler.writer_busy > 0.0
    assert not list((tmp_path / "m").glob("*/.tmp-*")) and not spool_files(tmp_path / "m")
    store.close()


@pytest.mark.parametrize("phase", ["plan_filing", "write_filing"])
def test_a_failed_filing_defers_only_its_message_in_the_batch(store_location, tmp_path, monkeypatch, phase):
    """Its plan (reads, rules: before the write transaction) or its rows (in its savepoint) fail."""
    store = Store(store_location, tmp_path / "m")
    real = getattr(batch, phase)

    def flaky(first, *a, **k):
        data = first if phase == "plan_filing" else first.data
        if b"body 1" in data.raw:
            raise RuntimeError("disk I/O error")
        return real(first, *a, **k)

    monkeypatch.setattr(batch, phase, flaky)
    items = [batch.Item(MessageData.from_bytes(MSG.replace(b"body", b"body %d" % i)), "bob@example.test",
                        [f"m{i}@matters.lawfirm.test"]) for i in range(3)]
    cfg = from_dict({})
    outcomes = batch.file_batch(store, cfg, RouterRules.from_config(cfg), batch.CaptureSettings(), items)
    assert [lmtp.replies(o)[:3] for o in outcomes] == ["250", "451", "250"]
    assert store.count("messages") == 2 and store.count("deliveries") == 2
    assert not store.in_transaction
    store.close()


@pytest.mark.parametrize("data,code", [(b"x" * 2000 + b"\r\n", 500), ((b"y" * 70 + b"\r\n") * 40, 552)])
def test_refused_data_gets_one_reply_per_recipient_and_leaves_no_spool_file(store_location, tmp_path, monkeypatch, data, code):
    monkeypatch.setattr(lmtp, "MAX_MESSAGE_SIZE", 2048)
    store = Store(store_location, tmp_path / "m")
    with running(store) as port, smtplib.LMTP("127.0.0.1", port) as c:
        c.ehlo()
        c.mail("bob@example.test")
        for r in ("a@matters.lawfirm.test", "b@matters.lawfirm.test"):
            assert c.rcpt(r)[0] == 250
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(b"Subject: big\r\n\r\n" + data + b".\r\n")
        replies = [c.getreply() for _ in range(2)]
        assert [r[0] for r in replies] == [code, code], replies
        assert c.noop()[0] == 250  # the session goes on
    assert store.count("messages") == 0 and not spool_files(tmp_path / "m")
    store.close()


def _until(what, seconds=10.0):
    """Poll ``what()`` until it is true (bounded); its last value."""
    deadline = time.monotonic() + seconds
    while not (value := what()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_delivery_is_answered_250_before_indexing_and_the_next_start_indexes_it(store_location, tmp_path):
    store = Store(store_location, tmp_path / "m")
    held = lmtp.DeliveryHandler(store, config=from_dict({"router": {"index_delay": 3600}}))
    with running(store, held) as port:
        assert held.indexer.started.wait(10)  # (the start-up catch-up, with nothing to do, is over)
        replies = lmtp_send(port, ["1234@matters.lawfirm.test"])
        assert [code for code, _ in replies] == [250], replies
        # answered, stored and queued for the index, not indexed: the indexer waits index_delay
        assert store.count("messages") == 1 and pending_count(store) == 1, (store.count("messages"),
                                                                            pending_count(store))
        assert search(store, "filing") == [] and held.indexer.indexed == 0
    # a restart (a crash after the 250 would leave the same queue): the start-up catch-up does not wait
    fresh = lmtp.DeliveryHandler(store, config=from_dict({"router": {"index_delay": 3600}}))
    with running(store, fresh):
        hits = _until(lambda: search(store, "filing"))
        assert len(hits) == 1 and pending_count(store) == 0, (hits, pending_count(store))
        # (the indexer counts a batch just after its commit, which search may see first)
        assert _until(lambda: fresh.indexer.indexed == 1), fresh.indexer.indexed
    store.close()


def test_the_indexer_catches_up_after_each_commit_and_logs_it(store_location, tmp_path, caplog):
    store = Store(store_location, tmp_path / "m")
    handler = lmtp.DeliveryHandler(store)
    with caplog.at_level(logging.DEBUG, logger="mattermail.router.index"), running(store, handler) as port:
        for _ in range(3):
            assert lmtp_send(port, ["1234@matters.lawfirm.test"])[0][0] == 250
        hits = _until(lambda: search(store, "filing"))
        assert len(hits) == 1 and _until(lambda: pending_count(store) == 0), (hits, pending_count(store))
        assert handler.indexer.indexed == 1, handler.indexer.indexed  # the same message 3 times: stored once
        assert _until(lambda: "indexed 1 message(s) for search" in caplog.text), caplog.text
    store.close()


def test_the_last_commit_of_a_burst_is_indexed_without_waiting_for_more(store_location, tmp_path):
    """After a commit the indexer waits ``settle`` seconds for more of a burst's commits; when no delivery is
    waiting for the writer (the burst is over) it indexes at once. Here settle is 30 s: a message found by
    search within the 10 s bound was indexed without it."""
    store = Store(store_location, tmp_path / "m")
    handler = lmtp.DeliveryHandler(store)
    handler.indexer.settle = 30.0
    with running(store, handler) as port:
        assert handler.indexer.started.wait(10)
        assert lmtp_send(port, ["1234@matters.lawfirm.test"])[0][0] == 250
        assert _until(lambda: pending_count(store) == 0), pending_count(store)
        assert len(search(store, "filing")) == 1
    store.close()


def test_the_indexer_lets_a_bursts_commits_gather_unless_woken_now(store_location, tmp_path):
    from mattermail.router import indexer
    from mattermail.store import insert_message, transaction

    store = Store(store_location, tmp_path / "m")
    idx = indexer.Indexer(store, settle=1.0)
    idx.start()
    try:
        assert idx.started.wait(10)
        waited = []
        for n, now in enumerate((False, True)):
            raw = MSG.replace(b"Subject:", f"X-N: {n}\r\nSubject:".encode())
            with transaction(store):
                insert_message(store, raw, hashlib.sha256(raw).hexdigest(), body_text="body")
            t0 = time.monotonic()
            idx.wake(now=now)
            assert _until(lambda: pending_count(store) == 0), pending_count(store)
            waited.append(time.monotonic() - t0)
        assert waited[0] >= 1.0 and waited[1] < 1.0, waited  # a plain wake waits settle; now does not
    finally:
        idx.stop()
    store.close()


def test_a_steady_stream_of_commits_is_indexed_together_and_the_last_once_they_stop(store_location, tmp_path):
    """Commits that keep coming are one stream even when each leaves the writer's queue empty (each wake is
    ``now``): indexed together, in one transaction, once no commit follows for ``quiet`` seconds (well before
    ``settle``), not one transaction per commit."""
    from mattermail.router import indexer
    from mattermail.store import insert_message, transaction

    store = Store(store_location, tmp_path / "m")
    idx = indexer.Indexer(store, settle=30.0, quiet=3.0)
    idx.start()
    try:
        assert idx.started.wait(10)
        t0 = time.monotonic()
        for n in range(5):
            raw = MSG.replace(b"Subject:", f"X-N: {n}\r\nSubject:".encode())
            with transaction(store):
                insert_message(store, raw, hashlib.sha256(raw).hexdigest(), body_text="body")
            idx.wake(now=True)
            assert pending_count(store) == n + 1  # (each commit well within quiet of the one before)
        assert _until(lambda: pending_count(store) == 0), pending_count(store)
        assert time.monotonic() - t0 < 30.0
        assert (idx.indexed, idx.transactions) == (5, 1), (idx.indexed, idx.transactions)
    finally:
        idx.stop()
    store.close()


def test_an_indexing_failure_is_logged_with_the_message_ids_and_retried(store_location, tmp_path, monkeypatch, caplog):
    import hashlib

    from mattermail.router import indexer
    from mattermail.store import StoreError, insert_message, transaction

    store = Store(store_location, tmp_path / "m")
    with transaction(store):
        insert_message(store, MSG, hashlib.sha256(MSG).hexdigest(), body_text="body")
    real, calls = indexer.index_pending, []

    def flaky(st, limit):
        calls.append(limit)
        if len(calls) == 1:
            raise StoreError("database is locked")
        return real(st, limit)

    monkeypatch.setattr(indexer, "index_pending", flaky)
    idx = indexer.Indexer(store, retry=0.05)
    with caplog.at_level(logging.INFO, logger="mattermail.router.index"):
        idx.start()
        try:
            assert _until(lambda: pending_count(store) == 0), (calls, caplog.text)
        finally:
            idx.stop()
    assert "indexing message(s) 1 for search failed, retrying in 0s: database is locked" in caplog.text, caplog.text
    assert len(calls) >= 2 and len(search(store, "filing")) == 1, calls
    store.close()


# -- the DATA reader: chunks, not lines --------------------------------------------------------------

def _reference(data: bytes) -> tuple[bytes, bytes]:
    """What DATA ``data`` (up to and without the lone dot) must become, line by line as RFC 5321 4.5.2
    says: (the unstuffed message, its header block up to and including the empty line)."""
    out, head, in_head = [], [], True
    for line in data.split(b"\r\n")[:-1]:
        line = (line[1:] if line.startswith(b".") else line) + b"\r\n"
        out.append(line)
        if in_head:
            head.append(line)
            in_head = line != b"\r\n"
    return b"".join(out), b"".join(head)


def _receive(pieces: list[bytes], line_limit: int = 1001, size_limit: int = 0):
    """Feed ``pieces`` one read at a time to MatterLMTP._receive; (refusal, spooled bytes, head, what
    the reader still holds)."""
    import types

    from mattermail.store.engine import BlobWriter

    async def go(tmp):
        reader = asyncio.StreamReader()
        proto = types.SimpleNamespace(_reader=reader, _writer=None, line_length_limit=line_limit,
                                      data_size_limit=size_limit)
        spool = BlobWriter(tmp)

        async def feed():
            for p in pieces:
                reader.feed_data(p)
                await asyncio.sleep(0)  # let the reader take this piece alone
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        refusal, head = await lmtp.MatterLMTP._receive(proto, spool)
        await feeder
        spooled = spool.finish()
        data = spooled.path.read_bytes() if spooled.path is not None else spooled.data
        assert spooled.sha256 == hashlib.sha256(data).hexdigest() and spooled.size == len(data)
        return refusal, data, bytes(head), await reader.read()

    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(go(Path(tmp)))


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 64, 4096])
def test_data_split_anywhere_is_unstuffed_and_ends_at_the_lone_dot(cut):
    data = (b"From: a@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\nx\r\n. \r\n"
            + b"\r\n" + b"line\r\n" * 50)
    wire = data + b".\r\nRSET\r\n"
    refusal, spooled, head, rest = _receive([wire[i:i + cut] for i in range(0, len(wire), cut)])
    want, want_head = _reference(data)
    assert refusal is None and spooled == want and head == want_head
    assert b"\r\nleading dot\r\n.two dots\r\n" in spooled
    assert rest == b"RSET\r\n"  # a pipelined command after the dot stays for the protocol


def test_data_that_is_only_the_dot_or_starts_with_a_dot():
    assert _receive([b".\r\nQUIT\r\n"]) == (None, b"", b"", b"QUIT\r\n")
    refusal, spooled, head, _ = _receive([b"\r", b"\n.", b".x\r\n.\r\n"])
    assert (refusal, spooled, head) == (None, b"\r\n.x\r\n", b"\r\n")  # an empty first line: no header


def test_over_long_lines_and_too_much_data_are_refused_after_draining():
    refusal, spooled, _, rest = _receive([b"a: b\r\n", b"x" * 3000, b"y" * 3000 + b"\r\nz\r\n.\r\n", b"NOOP\r\n"])
    assert refusal.startswith("500 Line too long") and rest == b"NOOP\r\n"
    refusal, _, _, rest = _receive([b"a: b\r\n" + b"x" * 1000 + b"\r\n.\r\n"])
    assert refusal.startswith("500 Line too long") and rest == b""
    refusal, _, _, _ = _receive([b"a: b\r\n" + b"x" * 997 + b"\r\n.\r\n"])  # 999 + CRLF = 1001: allowed
    assert refusal is None
    refusal, _, _, rest = _receive([(b"y" * 70 + b"\r\n") * 40 + b".\r\nRSET\r\n"], size_limit=1000)
    assert refusal.startswith("552") and rest == b"RSET\r\n"


def test_a_connection_closed_mid_data_raises():
    with pytest.raises(asyncio.IncompleteReadError):
        _receive([b"Subject: x\r\n\r\nno dot"])


@pytest.mark.parametrize("store_location", ["postgresql"], indirect=True)
def test_a_lost_database_connection_is_replaced_at_the_next_batch(store_location, tmp_path, caplog):
    """The server ends the router's connection (as a restart of PostgreSQL does): the delivery that meets
    the loss is deferred (451, Postfix retries), the next one is filed on a new connection."""
    import psycopg

    store = Store(store_location, tmp_path / "m")
    try:
        with running(store) as port:
            assert [code for code, _ in lmtp_send(port, ["1234@matters.lawfirm.test"])] == [250]
            with psycopg.connect(store_location, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [store.db.conn.info.backend_pid])
            assert [code for code, _ in lmtp_send(port, ["1234@matters.lawfirm.test"])] == [451]
            with caplog.at_level(logging.WARNING, logger="mattermail.router"):
                assert [code for code, _ in lmtp_send(port, ["1234@matters.lawfirm.test"])] == [250]
            assert "the database connection was lost; reconnected" in caplog.text
            assert store.count("messages") == 1  # the same message each time: stored once
    finally:
        store.close()


def test_two_routers_on_one_store_file_each_message_once_and_keep_the_chain(store_location, tmp_path):
    """Two routers (each its own connection, writer thread and LMTP listener; each host its own messages
    directory) on one store: every message is delivered to BOTH at once, as when Postfix retries with the
    other next hop while the first still works. A 4xx is retried, as Postfix does (two batches waiting on
    each other's rows may be cut short by the database, never filed twice). Each message is stored once,
    filed once per rule, and the records chain stays one valid chain (PostgreSQL: the advisory lock)."""
    from mattermail.store import verify

    stores = [Store(store_location, tmp_path / f"m{i}") for i in (1, 2)]
    directory.add_person(stores[0], "bob@example.test", "Bob Client")
    directory.add_matter(stores[0], "1234", "Smith v Jones", ["bob@example.test"])
    n = 24
    replies: dict[tuple[int, int], list[int]] = {}

    def send(port, i, router):
        codes = replies.setdefault((i, router), [])
        for _ in range(20):
            [(code, _)] = lmtp_send(port, ["1234@matters.lawfirm.test"], MSG.replace(b"body", b"body %d" % i))
            codes.append(code)
            if codes[-1] != 451:
                return

    with running(stores[0]) as p1, running(stores[1]) as p2:
        threads = [threading.Thread(target=send, args=(port, i, r)) for i in range(n) for r, port in ((1, p1), (2, p2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert all(codes and codes[-1] == 250 for codes in replies.values()), replies
    assert len(replies) == 2 * n
    s = stores[0]
    assert s.count("messages") == n
    assert s.count("filings") == 2 * n  # matter 1234 (matter-address) and Bob (sender), once each
    kinds = dict(s.db.execute("SELECT kind, COUNT(*) FROM chain GROUP BY kind").fetchall())
    assert kinds == {"stored": n, "filed": 2 * n}, kinds
    report = verify.verify(s)
    assert report.length == 3 * n and not report.problems, report.problems
    for st in stores:
        st.close()


def test_the_fast_address_parse_gives_what_aiosmtpd_gives():
    """MatterLMTP._getaddr's fast path (plain <local@domain>) and aiosmtpd's email-header parser agree on
    every MAIL FROM / RCPT TO argument, the usual ones and odd ones (which the fast path hands over)."""
    import random

    from aiosmtpd.smtp import SMTP

    from mattermail.router.lmtp import MatterLMTP

    ours, theirs = MatterLMTP(object()), SMTP(object())
    args = ["<bob@example.test>", "<>", "<1234@matters.lawfirm.test> ORCPT=rfc822;1234@matters.lawfirm.test",
            "<bob@example.test> SIZE=4200 BODY=8BITMIME", "<SRS0=HHH=TT=example.org=bob@lawfirm.test>",
            "<capture+r1.mac@matters.lawfirm.test>", "<a.b@c>  \t SIZE=1", "<a@b> (comment) SIZE=1", "<a@b>SIZE=1",
            "<a..b@c>", "<.a@c>", "<a.@c>", '<"a b"@c>', "<a@[127.0.0.1]>", "<a@b.>", "<a@-b.c>", "bob@example.test",
            " <a@b>", "<a@b", "<@a,@b:c@d>", "<ü@b>", "<a@b>\u2003SIZE=1", "<a@b> \u00a0(x) y", "", "<a@b>\t"]
    rnd = random.Random(14)
    chars = "ab.@<>()\" \t-+=_[]:;,\\1"
    args += ["<" + "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 12))) for _ in range(5000)]

    def parse(server, arg):
        try:
            return server._getaddr(arg)
        except Exception as e:  # the email parser's IndexError on some broken ones: the same either way
            return type(e)

    for arg in args:
        assert parse(ours, arg) == parse(theirs, arg), repr(arg)
    assert ours._getaddr("<bob@example.test> SIZE=4200") == ("bob@example.test", "SIZE=4200")
    ours.local_part_limit = theirs.local_part_limit = 3
    for arg in ("<abc@d>", "<abcd@e> X=1", "<a.bc@d>"):
        assert parse(ours, arg) == parse(theirs, arg), repr(arg)


def test_the_long_line_check_finds_what_splitting_into_lines_finds():
    """DATA's line-length check (a window at a time) says what max(len(line)) + 2 > limit over the block's
    CRLF-split lines says, for random blocks of letters, CRs and LFs and limits around their line lengths."""
    import random

    from mattermail.router.lmtp import _has_long_line

    rnd = random.Random(14)
    for _ in range(20_000):
        block = bytes(rnd.choice(b"ab\r\n\r\n") for _ in range(rnd.randint(0, 40)))
        limit = rnd.randint(2, 12)
        assert _has_long_line(block, limit) == (max(map(len, block.split(b"\r\n"))) + 2 > limit), (block, limit)
    lines = b"".join(b"%dX%s\r\n" % (i, b"X" * 77) for i in range(1300))
    assert not _has_long_line(lines, 1001)
    assert _has_long_line(lines + b"Y" * 1000 + b"\r\n", 1001) and not _has_long_line(lines + b"Y" * 999 + b"\r\n", 1001)


def test_pipelining_is_offered_and_pipelined_commands_get_their_replies_in_order(server):
    """LHLO offers PIPELINING (RFC 2033); a client that sends RSET, MAIL, both RCPTs and DATA in one write,
    as Postfix's LMTP client then does, gets each reply in order, and the message is filed for both."""
    store, port = server
    with smtplib.LMTP("127.0.0.1", port) as c:
        code, text = c.ehlo()
        assert code == 250 and c.has_extn("pipelining")
        for n in (1, 2):
            body = MSG.replace(b"Subject: ", b"Subject: pipelined %d " % n)
            c.send(b"RSET\r\nMAIL FROM:<bob@example.test> BODY=8BITMIME\r\nRCPT TO:<1234@matters.lawfirm.test>\r\n"
                   b"RCPT TO:<alice+5@matters.lawfirm.test>\r\nDATA\r\n")
            assert [c.getreply()[0] for _ in range(5)] == [250, 250, 250, 250, 354]
            c.send(body + b".\r\n")
            replies = [c.getreply() for _ in range(2)]
            assert [code for code, _ in replies] == [250, 250]
            assert b"<1234@matters.lawfirm.test>" in replies[0][1] and b"<alice+5@" in replies[1][1]
    assert store.count("messages") == 2 and store.count("deliveries") == 4
    subjects = [r[0] for r in store.db.execute("SELECT subject FROM messages ORDER BY id")]
    assert [s.split()[:2] for s in subjects] == [["pipelined", "1"], ["pipelined", "2"]]


def test_replies_to_a_pipelined_group_leave_together_and_an_incomplete_line_holds_none(server):
    """Replies to a group of commands already received go out with the group's last reply (RFC 2920 3.2),
    in order; a command sent alone, or followed only by part of a line, is answered at once (nothing is
    held waiting for a line that may never end)."""
    import socket

    store, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            lines = [f.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(f.readline())
            return b"".join(lines)

        assert reply().startswith(b"220")
        s.sendall(b"LHLO test\r\n")
        assert b"PIPELINING" in reply()
        s.sendall(b"MAIL FROM:<bob@example.test>\r\nRCPT TO:<1234@matters.lawfirm.test>")  # RCPT's line unfinished
        assert reply().startswith(b"250")  # MAIL's reply is not held back by the half line
        s.sendall(b"\r\nRSET\r\nMAIL FROM:<bob@example.test>\r\nRCPT TO:<1234@matters.lawfirm.test>\r\nDATA\r\n")
        assert [reply()[:3] for _ in range(5)] == [b"250", b"250", b"250", b"250", b"354"]
        s.sendall(MSG + b".\r\n")
        assert reply().startswith(b"250 2.0.0 <1234@matters.lawfirm.test>")
        s.sendall(b"NOOP\r\nQUIT\r\n")
        assert [reply()[:3] for _ in range(2)] == [b"250", b"221"]
    assert store.count("messages") == 1


def test_aiosmtpd_command_lines_are_logged_sanitized_when_enabled_and_skipped_when_not(caplog):
    import logging

    import aiosmtpd.smtp

    assert aiosmtpd.smtp.sanitized_log is lmtp._sanitized_log_if_enabled
    mail_log = logging.getLogger("mail.log")
    with caplog.at_level(logging.INFO, logger="mail.log"):
        aiosmtpd.smtp.sanitized_log(mail_log.info, "%r >> %r", "peer", b"AUTH PLAIN c2VjcmV0\r\n")
        aiosmtpd.smtp.sanitized_log(mail_log.debug, "readline: %r", b"MAIL FROM:<a@b>")
    assert [r.getMessage() for r in caplog.records] == ["'peer' >> b'AUTH PLAIN ********\\r\\n'"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mail.log"):
        aiosmtpd.smtp.sanitized_log(mail_log.info, "%r >> %r", "peer", b"RSET")
    assert caplog.records == []


def test_an_unexpected_error_is_never_a_5xx(server, monkeypatch, caplog):
    """A bug in a command is logged and answered 451 (aiosmtpd's own answer is a 500, which makes Postfix
    bounce the mail); after DATA's 354 the connection is closed instead, so Postfix keeps the message queued
    and retries, and nothing is stored."""
    store, port = server

    def broken(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lmtp.MatterLMTP, "_getaddr", broken)
    with smtplib.LMTP("127.0.0.1", port) as c:
        c.ehlo()
        code, text = c.mail("bob@example.test")
        assert code == 451 and b"try again later" in text
        assert c.noop()[0] == 250  # the session goes on
    monkeypatch.undo()
    monkeypatch.setattr(lmtp.DeliveryHandler, "item", broken)
    with caplog.at_level(logging.ERROR, logger="mattermail.router.lmtp"), \
            pytest.raises(smtplib.SMTPServerDisconnected):
        lmtp_send(port, ["a@matters.lawfirm.test", "b@matters.lawfirm.test"])
    assert "delivery failed during DATA: closing the connection, the message stays queued" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    monkeypatch.undo()
    assert [r[0] for r in lmtp_send(port, ["a@matters.lawfirm.test"])] == [250]  # the server goes on
    assert store.count("messages") == 1 and not spool_files(store.messages_dir)
