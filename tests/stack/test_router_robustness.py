"""The router under abuse, on the real stack: SIGKILL mid-burst and malformed messages (issue 5, "Must hold").

* SIGKILL in the middle of a burst of deliveries: after a restart (and Postfix's retries) every message is
  filed exactly once, every raw file matches its SHA-256, and no half-written ``.tmp-*`` file is left.
* Malformed messages (no headers, binary junk, 10,000 addresses in To, a 20 MB attachment) are stored, or
  refused with a clear 5xx/4xx; the router never crashes (same pid, the next message is filed) and never
  leaves a ``.tmp-*`` file behind.

Each case goes through Postfix (the real path: from 127.0.0.2 to the MX port) and, where Postfix would
normalise the abuse away, straight to the router's LMTP port too, so the router sees the raw bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from mattermail.store import directory as d
from mattermail import capture
from mattermail.store import EnvelopeRecord, Store, UserError, insert_message, record_envelope

from .conftest import wait_for

CA = "matters.lawfirm.test"
MATTER = "1234"
RCPT = f"{MATTER}@{CA}"
SENDER = "bob@example.test"


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matter(stack):
    store = Store(stack.stack.var / "store.sqlite", stack.stack.var / "messages")
    try:
        d.add_matter(store, MATTER, "Robustness tests")
    except UserError:
        pass  # already there (the stack is shared by the session)
    store.close()
    return MATTER


@contextlib.contextmanager
def db(stack) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(stack.stack.var / "store.sqlite", timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def stored_count(stack, message_id: str) -> int:
    with db(stack) as conn:
        return conn.execute("SELECT count(*) FROM messages WHERE message_id = ?", [message_id]).fetchone()[0]


def messages_dir(stack) -> Path:
    return stack.stack.var / "messages"


def tmp_files(stack) -> list[Path]:
    return sorted(messages_dir(stack).rglob(".tmp-*"))


def router_pid(stack) -> int:
    return int((stack.stack.run_dir / "router.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def sigkill_router(stack) -> int:
    pid = router_pid(stack)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # the session fixture spawned it: reap the zombie
    except ChildProcessError:
        wait_for(lambda: not alive(pid), 10, "the router to die")
    return pid


def postqueue(stack, *args: str) -> str:
    return subprocess.run(["postqueue", "-c", str(stack.stack.etc), *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def queued(stack) -> set[str]:
    """Queue ids Postfix still holds (any queue: active, deferred, ...)."""
    return {json.loads(line)["queue_id"] for line in postqueue(stack, "-j").splitlines() if line.strip()}


def drain(stack, qids: set[str], timeout: float = 120.0) -> None:
    """Flush the queue until none of ``qids`` is left in it."""
    deadline = time.monotonic() + timeout
    while True:
        left = qids & queued(stack)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still queued after {timeout}s: {sorted(left)}")
        postqueue(stack, "-f")
        time.sleep(1.0)


def blob_problems(stack, rows) -> list[str]:
    """Each (sha256, size) row: its raw message (in its row, or its file) exists, hashes to its SHA-256 and has
    its size."""
    problems = []
    for sha, size in rows:
        try:
            data = stack.stored_raw(sha)
        except FileNotFoundError:
            problems.append(f"{sha}: neither in its row nor in a file")
            continue
        if hashlib.sha256(data).hexdigest() != sha or len(data) != size:
            problems.append(f"{sha}: raw message hashes to {hashlib.sha256(data).hexdigest()}, {len(data)} bytes "
                            f"(row says {size})")
    return problems


def filed_once_problems(conn: sqlite3.Connection, message_ids: list[str], matter: str, rcpt: str) -> list[str]:
    """Everything that is not "each Message-ID stored once, filed once to ``matter`` for ``rcpt``"."""
    problems = []
    marks = ",".join("?" * len(message_ids))
    rows = conn.execute(f"SELECT id, message_id FROM messages WHERE message_id IN ({marks})", message_ids).fetchall()
    per_mid = Counter(mid for _, mid in rows)
    for mid in message_ids:
        if per_mid[mid] != 1:
            problems.append(f"{mid}: {per_mid[mid]} messages rows")
    for row_id, mid in rows:
        fs = conn.execute("SELECT matter, person, rule, recipient FROM filings WHERE message = ?", [row_id]).fetchall()
        if fs != [(matter, None, "matter-address", rcpt)]:
            problems.append(f"{mid} (row {row_id}): filings {fs}")
        n = conn.execute("SELECT count(*) FROM deliveries WHERE message = ?", [row_id]).fetchone()[0]
        if n != 1:
            problems.append(f"{mid} (row {row_id}): {n} deliveries rows")
    return problems


class Dialogue:
    """A raw SMTP/LMTP client: sends DATA bytes as given (only dot-stuffed), reads every reply."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"connection closed (after {lines})")
            lines.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def send(self, raw: bytes, rcpts: list[str], lmtp: bool, mail_from: str = SENDER) -> list[tuple[int, str]]:
        """The replies to DATA: one per accepted recipient over LMTP, one over SMTP; or the refusal."""
        self.cmd(("LHLO" if lmtp else "EHLO") + " mail.example.test")
        code, text = self.cmd(f"MAIL FROM:<{mail_from}>")
        if code != 250:
            return [(code, text)]
        accepted = 0
        for r in rcpts:
            code, text = self.cmd(f"RCPT TO:<{r}>")
            if code != 250:
                return [(code, text)]
            accepted += 1
        code, text = self.cmd("DATA")
        if code != 354:
            return [(code, text)]
        assert raw.endswith(b"\r\n")
        body = raw.replace(b"\r\n.", b"\r\n..")
        self.sock.sendall((b"." if body.startswith(b".") else b"") + body + b".\r\n")
        return [self.reply() for _ in range(accepted if lmtp else 1)]

    def close(self) -> None:
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.sock.close()


def via_lmtp(stack, raw: bytes, rcpts: list[str] | None = None, timeout: float = 60.0,
             mail_from: str = SENDER) -> list[tuple[int, str]]:
    c = Dialogue(stack.stack.ports.lmtp, timeout=timeout)
    try:
        return c.send(raw, rcpts or [RCPT], lmtp=True, mail_from=mail_from)
    finally:
        c.close()


def via_postfix(stack, raw: bytes, rcpts: list[str] | None = None) -> tuple[int, str]:
    c = Dialogue(stack.stack.ports.smtp, source="127.0.0.2")
    try:
        return c.send(raw, rcpts or [RCPT], lmtp=False)[0]
    finally:
        c.close()


def delivery_outcome(stack, qid: str, timeout: float = 60.0) -> tuple[str, str]:
    """(status, Postfix's lmtp log line) of the first delivery attempt of ``qid`` to the router."""
    line = stack.log_line("postfix", f"{qid}: to=<", "relay=", "status=", timeout=timeout)
    return re.search(r"status=(\w+)", line).group(1), line  # type: ignore[union-attr]


def stored_row(conn: sqlite3.Connection, sha256: str) -> tuple | None:
    return conn.execute("SELECT id, sha256, size FROM messages WHERE sha256 = ?", [sha256]).fetchone()


def row_from_router_log(stack, qid: str) -> tuple:
    """The messages row the router's log line names (by the SHA-256 prefix it logs)."""
    line = stack.log_line("router", f"{qid}: to=<{RCPT}>", "status=stored")
    prefix = re.search(r"sha256=([0-9a-f]{16})", line).group(1)  # type: ignore[union-attr]
    with db(stack) as conn:
        rows = conn.execute("SELECT id, sha256, size FROM messages WHERE sha256 LIKE ?", [prefix + "%"]).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def matter_filings(stack, row_id: int) -> list[tuple]:
    with db(stack) as conn:
        return conn.execute("SELECT matter, rule, recipient FROM filings WHERE message = ? AND matter IS NOT NULL",
                            [row_id]).fetchall()


def assert_postfix_path_clean(stack, code: int, text: str) -> tuple | None:
    """Through Postfix: refused at SMTP with a clear error, or delivered to the router and stored + filed
    once to the matter with a sound file (returned: the row); never deferred in a loop."""
    if code != 250:
        assert code >= 400 and len(text) > 4, (code, text)
        return None
    qid = text.rsplit(" ", 1)[-1]
    status, line = delivery_outcome(stack, qid)
    if status != "sent":  # the router refused it: a reply with a code and text, and it is not stored
        assert re.search(r"said: [45]\d\d [^)]+", line), line
        return None
    row = row_from_router_log(stack, qid)
    assert matter_filings(stack, row[0]) == [(MATTER, "matter-address", RCPT)]
    assert blob_problems(stack, [row[1:]]) == []
    return row


def assert_router_healthy(stack, pid: int) -> None:
    """The same router process is running, no temp file is left, and the next normal message is filed."""
    assert alive(pid) and router_pid(stack) == pid, "the router died or was restarted"
    assert tmp_files(stack) == []
    msg = stack.message(SENDER, [RCPT], subject="the next normal message")
    qid = stack.inbound(msg, [RCPT])
    stack.log_line("router", qid, f"to=<{RCPT}>", "status=stored")
    with db(stack) as conn:
        assert filed_once_problems(conn, [msg["Message-ID"]], MATTER, RCPT) == []


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# -- the checks can fail ------------------------------------------------------------------------------


def test_the_filed_once_check_catches_duplicates_and_losses(tmp_path):
    """filed_once_problems() is what the SIGKILL test relies on: it must see a second copy and a missing one."""
    store = Store(tmp_path / "s.sqlite", tmp_path / "m")
    d.add_matter(store, MATTER, "t")
    ids = ["<a@t>", "<b@t>", "<c@t>"]
    for i, (mid, copies) in enumerate([("<a@t>", 1), ("<b@t>", 2)]):  # b stored twice, c never
        for n in range(copies):
            raw = f"Message-ID: {mid}\r\nReceived: try {n}\r\n\r\nbody {i}\r\n".encode()
            store.db.execute("BEGIN")
            row, _ = insert_message(store, raw, sha(raw))
            store.db.execute("INSERT INTO filings (message, matter, rule, recipient) VALUES (?, ?, ?, ?)",
                             [row, MATTER, "matter-address", RCPT])
            store.db.execute("INSERT INTO deliveries (message, recipient, envelope_from, queue_id) "
                             "VALUES (?, ?, '', 'Q')", [row, RCPT])
            store.db.execute("COMMIT")
    a_row = store.db.execute("SELECT id FROM messages WHERE message_id = '<a@t>'").fetchone()[0]
    store.db.execute("INSERT INTO filings (message, matter, rule, recipient) VALUES (?, ?, ?, ?)",
                     [a_row, MATTER, "matter-address", "other@" + CA])  # a filed twice
    problems = filed_once_problems(store.db.conn, ids, MATTER, RCPT)
    store.close()
    assert any(p.startswith("<a@t>") and "filings" in p for p in problems), problems
    assert "<b@t>: 2 messages rows" in problems and "<c@t>: 0 messages rows" in problems, problems


# -- SIGKILL ----------------------------------------------------------------------------------------------


def test_sigkill_mid_burst_files_every_message_exactly_once(stack, matter):
    n, tag = 60, uuid.uuid4().hex[:10]
    msgs = []
    for i in range(n):
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = SENDER, RCPT, f"burst {i}"
        m["Message-ID"] = f"<burst-{tag}-{i:02d}@test.mattermail>"
        m.set_content(f"burst message {i}\n" * 1500)  # ~30 KB, so each delivery takes a moment
        msgs.append(m)
    mids = [m["Message-ID"] for m in msgs]
    qids: set[str] = set()
    refusals: list[str] = []
    errors: list[str] = []
    start = time.monotonic()

    def sender(batch: list[EmailMessage]) -> None:
        """An internet MTA: retries on 4xx, never on 5xx."""
        for m in batch:
            while True:
                try:
                    code, text = via_postfix(stack, m.as_bytes().replace(b"\n", b"\r\n"))
                except OSError as e:
                    code, text = 421, f"connection: {e}"
                if code == 250:
                    qids.add(text.rsplit(" ", 1)[-1])
                    break
                refusals.append(f"{code} {text}")
                if code >= 500 or time.monotonic() - start > 120:
                    errors.append(f"{m['Message-ID']}: {code} {text}")
                    break
                time.sleep(0.3)

    def filed() -> int:
        with db(stack) as conn:
            return conn.execute("SELECT count(*) FROM messages WHERE message_id LIKE ?",
                                [f"<burst-{tag}-%"]).fetchone()[0]

    threads = [threading.Thread(target=sender, args=(msgs[i::10],)) for i in range(10)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: filed() >= 12, 60, "12 burst messages filed")
        killed = sigkill_router(stack)
        at_kill = filed()
        time.sleep(1.0)
        stack.stack.start_router()
        assert router_pid(stack) != killed
    finally:
        for t in threads:
            t.join(180)
    assert errors == []
    assert 12 <= at_kill < n, f"the kill did not land mid-burst ({at_kill} of {n} filed)"
    # SRS lookups are not the router's (mattermail-srs answers them): Postfix queues catch-all mail meanwhile.
    assert refusals == [], f"{len(refusals)} SMTP refusal(s) while the router was down, first: {refusals[:2]}"
    assert len(qids) == n
    drain(stack, qids)

    with db(stack) as conn:
        assert filed_once_problems(conn, mids, MATTER, RCPT) == []
        marks = ",".join("?" * n)
        rows = conn.execute(f"SELECT sha256, size FROM messages WHERE message_id IN ({marks})", mids).fetchall()
    assert len(rows) == n
    assert blob_problems(stack, rows) == []
    assert tmp_files(stack) == []
    log = (stack.stack.logs / "router.log").read_text(errors="replace")
    again = sum(1 for q in qids if re.search(rf"{q}: .*status=stored \(duplicate content\)", log))
    print(f"\nSIGKILL after {at_kill}/{n} filed; {len(refusals)} SMTP refusals retried while the router was down; "
          f"{again} message(s) committed before the kill and delivered again (filed once)")


def test_sigkill_during_a_blob_write_leaves_no_half_written_file(stack, matter):
    """A 20 MB message: kill the router while its ``.tmp-*`` file is being written; after the restart the
    half-written file is gone and Postfix's retry stores and files the message once."""
    log = stack.stack.logs / "router.log"
    qids, mids, half = set(), [], None
    for _attempt in range(3):
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = SENDER, RCPT, "killed while writing"
        m["Message-ID"] = f"<blobkill-{uuid.uuid4().hex}@test.mattermail>"
        m.set_content("Exhibits attached.\n")
        m.add_attachment(os.urandom(20 * 1024 * 1024), maintype="application", subtype="octet-stream",
                         filename="exhibit.bin")
        assert tmp_files(stack) == []
        code, text = via_postfix(stack, m.as_bytes().replace(b"\n", b"\r\n"))
        assert code == 250, text
        qids.add(text.rsplit(" ", 1)[-1])
        mids.append(m["Message-ID"])
        deadline, looks = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            half = next(iter(tmp_files(stack)), None)
            looks += 1
            if half is not None or (looks % 200 == 0 and stored_count(stack, m["Message-ID"])):
                break
        if half is None:
            continue  # written and renamed between two looks: try again
        sigkill_router(stack)
        log_size = log.stat().st_size
        if half.exists():
            break
        stack.stack.start_router()  # the rename won the race with the kill: try again
        half = None
    else:
        pytest.fail("never killed the router while it was writing a .tmp- file")
    print(f"\nkilled with {half.name} at {half.stat().st_size} bytes")
    stack.stack.start_router()
    assert not half.exists(), "the half-written file survived the restart"
    assert "removed 1 half-written message file" in log.read_bytes()[log_size:].decode(errors="replace")
    drain(stack, qids)
    with db(stack) as conn:
        assert filed_once_problems(conn, mids, MATTER, RCPT) == []
        marks = ",".join("?" * len(mids))
        rows = conn.execute(f"SELECT sha256, size FROM messages WHERE message_id IN ({marks})", mids).fetchall()
    assert blob_problems(stack, rows) == []
    assert tmp_files(stack) == []


# -- malformed messages ---------------------------------------------------------------------------------


def test_message_without_any_header(stack, matter):
    pid = router_pid(stack)
    marker = uuid.uuid4().hex
    raw = f"This message has no header lines at all {marker}\r\njust a body\r\n".encode()

    code, text = via_postfix(stack, raw)
    row = assert_postfix_path_clean(stack, code, text)
    if row is not None:
        assert marker.encode() in stack.stored_raw(row[1])

    raw2 = raw.replace(b"at all", b"at all, straight to the router")
    assert [c for c, _ in via_lmtp(stack, raw2)] == [250]
    with db(stack) as conn:
        row2 = stored_row(conn, sha(raw2))
    assert row2 is not None and matter_filings(stack, row2[0]) == [(MATTER, "matter-address", RCPT)]
    assert stack.stored_raw(sha(raw2)) == raw2
    assert_router_healthy(stack, pid)


def junk_lines(rng: random.Random, size: int) -> bytes:
    """Random bytes (NULs, bare CRs, bare LFs, 8-bit) in CRLF lines of at most 900 bytes; no header-like start."""
    out = bytearray(b"\x00\x01binary junk\r\n")
    while len(out) < size:
        line = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 900))).replace(b"\r\n", b"\r\x00\n")
        out += line + b"\r\n"
    return bytes(out)


def test_binary_junk(stack, matter):
    pid = router_pid(stack)
    rng = random.Random(5)
    junk = junk_lines(rng, 200_000)
    assert b"\x00" in junk and re.search(rb"\r[^\n]", junk) and re.search(rb"[^\r]\n", junk)

    # Through Postfix (which may normalise it): stored and filed, or refused with a clear error.
    code, text = via_postfix(stack, junk)
    assert_postfix_path_clean(stack, code, text)

    # Straight to the router: stored byte for byte.
    assert [c for c, _ in via_lmtp(stack, junk)] == [250]
    with db(stack) as conn:
        row = stored_row(conn, sha(junk))
    assert row is not None and matter_filings(stack, row[0]) == [(MATTER, "matter-address", RCPT)]
    assert stack.stored_raw(sha(junk)) == junk

    # Junk with no line breaks at all (over RFC 5321's 1000-byte line limit): a clear 5xx, nothing stored.
    blob = bytes(rng.getrandbits(8) for _ in range(64 * 1024)).replace(b"\r", b"") + b"\r\n"
    with db(stack) as conn:
        before = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    replies = via_lmtp(stack, blob)
    assert len(replies) == 1 and replies[0][0] == 500 and "too long" in replies[0][1].lower(), replies
    with db(stack) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == before
    assert_router_healthy(stack, pid)


def test_refused_junk_gets_one_reply_per_lmtp_recipient(stack, matter):
    blob = bytes(random.Random(7).getrandbits(8) for _ in range(64 * 1024)).replace(b"\r", b"") + b"\r\n"
    try:
        replies = via_lmtp(stack, blob, [RCPT, f"m-{MATTER}@{CA}"], timeout=10)
    except TimeoutError:
        replies = "no reply for the second recipient within 10 s"
    assert isinstance(replies, list) and [c // 100 for c, _ in replies] == [5, 5], replies


def ten_thousand_to(marker: str) -> bytes:
    to = ",\r\n ".join(f"rcpt{i:05d}@example{i % 50}.test" for i in range(10_000))
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: ten thousand addresses {marker}\r\n"
            f"Message-ID: <tenk-{marker}@test.mattermail>\r\n\r\nHello, all of you.\r\n").encode()


def test_ten_thousand_addresses_in_to(stack, matter):
    pid = router_pid(stack)
    marker = uuid.uuid4().hex
    raw = ten_thousand_to(marker)

    # Through Postfix (whose header_size_limit may cut the header): stored and filed in reasonable time.
    t0 = time.monotonic()
    code, text = via_postfix(stack, raw)
    assert code == 250, text
    row = assert_postfix_path_clean(stack, code, text)
    assert row is not None and time.monotonic() - t0 < 30

    # Straight to the router, the whole 278 KB header: stored byte for byte.
    raw2 = ten_thousand_to(marker + "-lmtp")
    t0 = time.monotonic()
    assert [c for c, _ in via_lmtp(stack, raw2)] == [250]
    assert time.monotonic() - t0 < 30
    with db(stack) as conn:
        row2 = stored_row(conn, sha(raw2))
    assert row2 is not None and matter_filings(stack, row2[0]) == [(MATTER, "matter-address", RCPT)]
    assert stack.stored_raw(sha(raw2)) == raw2

    # As a capture copy every one of the 10,000 is a correspondent: the last one is a known person.
    store = Store(stack.stack.var / "store.sqlite", messages_dir(stack))
    try:
        person = d.add_person(store, "rcpt09999@example49.test", "The last of ten thousand").id
    except UserError:
        person = d.person_by_email(store, "rcpt09999@example49.test").id  # type: ignore[union-attr]
    store.close()
    raw3 = ten_thousand_to(marker + "-capture").replace(f"From: {SENDER}".encode(), b"From: alice@lawfirm.test")
    # A verified copy, as the milter makes it: its envelope recorded, its reference signed.
    ref = capture.new_ref()
    store = Store(stack.stack.var / "store.sqlite", messages_dir(stack))
    try:
        record_envelope(store, EnvelopeRecord(ref, "", "alice@lawfirm.test", ("rcpt00000@example0.test",),
                                              "alice@lawfirm.test", "127.0.0.1", time.time()))
    finally:
        store.close()
    rcpt = capture.capture_address(f"capture@{CA}", ref, capture.load_secret(stack.stack.var / "capture.key"))
    t0 = time.monotonic()
    assert [c for c, _ in via_lmtp(stack, raw3, [rcpt], mail_from="alice@lawfirm.test")] == [250]
    assert time.monotonic() - t0 < 30
    with db(stack) as conn:
        row3 = stored_row(conn, sha(raw3))
        assert row3 is not None
        assert conn.execute("SELECT person, rule FROM filings WHERE message = ?", [row3[0]]).fetchall() == [
            (person, "correspondent")]
    assert_router_healthy(stack, pid)


def test_twenty_mb_attachment(stack, matter):
    pid = router_pid(stack)
    blob = os.urandom(20 * 1024 * 1024)
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = SENDER, RCPT, "20 MB exhibit"
    m["Message-ID"] = f"<big-{uuid.uuid4().hex}@test.mattermail>"
    m.set_content("Exhibit attached.\n")
    m.add_attachment(blob, maintype="application", subtype="octet-stream", filename="exhibit.bin")
    sent = m.as_bytes().replace(b"\n", b"\r\n")
    assert len(sent) > 20 * 1024 * 1024

    t0 = time.monotonic()
    code, text = via_postfix(stack, sent)
    assert code == 250, text
    row = assert_postfix_path_clean(stack, code, text)
    assert row is not None and time.monotonic() - t0 < 60
    stored = (messages_dir(stack) / row[1][:2] / f"{row[1]}.eml").read_bytes()  # (20 MB: a file)
    assert sha(stored) == row[1] and len(stored) == row[2]
    # What Postfix delivered is what was sent, after the trace headers Postfix and the milter put on top.
    assert stored.endswith(sent) and stored[: len(stored) - len(sent)].startswith(b"Authentication-Results:")
    got = [p.get_content() for p in message_from_bytes(stored, policy=policy.default).iter_attachments()]
    assert got == [blob]
    assert_router_healthy(stack, pid)
