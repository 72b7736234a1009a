"""The records chain through the real stack: mail stored by the router verifies; a flipped byte is named."""

from __future__ import annotations

import json
import sqlite3

import pytest

CA = "matters.lawfirm.test"


@pytest.fixture(scope="module")
def matter(stack):
    r = stack.ctl("matter", "add", "7301", "--title", "Records test matter")
    assert r.returncode == 0, r.stderr
    return "7301"


def test_router_mail_verifies_and_a_flipped_byte_is_named(stack, matter):
    sent = []
    for n, rcpt in enumerate([f"7301@{CA}", f"7301@{CA}", f"7398@{CA}"]):  # two filed, one unfiled
        msg = stack.message("rec-sender@example.test", [rcpt], subject=f"records {n}")
        qid = stack.inbound(msg, [rcpt])
        stack.log_line("router", qid, f"to=<{rcpt}>", "status=stored")
        sent.append(msg["Message-ID"])
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        rows = [db.execute("SELECT id, sha256 FROM messages WHERE message_id = ?", [m]).fetchone() for m in sent]
        kinds = {mid: [k for (k,) in db.execute("SELECT kind FROM chain WHERE message = ? ORDER BY seq", [mid])]
                 for mid, _ in rows}
    finally:
        db.close()
    assert [kinds[mid] for mid, _ in rows] == [["stored", "filed"], ["stored", "filed"], ["stored", "unfiled"]], kinds

    r = stack.ctl("store", "verify", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert report["messages"] >= 3 and report["files"] == report["messages"], report

    mid, sha = rows[1]
    path = stack.stack.var / "messages" / sha[:2] / f"{sha}.eml"
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    try:
        r = stack.ctl("store", "verify")
        assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
        assert f"message {mid}, file {path}: raw file altered" in r.stdout, r.stdout[-2000:]
        assert "first: entry" in r.stderr and f"message {mid}" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    finally:
        path.write_bytes(original)
    r = stack.ctl("store", "verify", "--head")
    assert r.returncode == 0 and r.stdout.startswith("chain length "), (r.stdout, r.stderr)
