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

    # A small message is kept in its row (store.inline_max): a byte flipped there, as someone with the database
    # file could, is found and named as the raw message of that row.
    mid, sha = rows[1]
    db = sqlite3.connect(stack.stack.var / "store.sqlite", isolation_level=None)
    try:
        original = db.execute("SELECT raw FROM messages WHERE id = ?", [mid]).fetchone()[0]
        assert original is not None and stack.stored_raw(sha) == original
        assert not (stack.stack.var / "messages" / sha[:2] / f"{sha}.eml").exists()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        db.execute("UPDATE messages SET raw = ? WHERE id = ?", [bytes(flipped), mid])
        try:
            r = stack.ctl("store", "verify")
            assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
            where = f"messages.raw ({sha[:16]}) in {stack.stack.var / 'store.sqlite'}"
            assert f"message {mid}, file {where}: raw message altered" in r.stdout, r.stdout[-2000:]
            assert "first: entry" in r.stderr and f"message {mid}" in r.stderr, r.stderr[-2000:]
            assert "Traceback" not in r.stderr
        finally:
            db.execute("UPDATE messages SET raw = ? WHERE id = ?", [original, mid])
    finally:
        db.close()
    r = stack.ctl("store", "verify", "--head")
    assert r.returncode == 0 and r.stdout.startswith("chain length "), (r.stdout, r.stderr)


def _id_of(stack, message_id: str) -> int | None:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        row = db.execute("SELECT id FROM messages WHERE message_id = ?", [message_id]).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_refile_delete_and_hold_through_the_cli(stack, matter):
    assert stack.ctl("matter", "add", "7302", "--title", "Records other matter").returncode == 0
    ids = []
    for n in range(2):
        msg = stack.message("rec-sender@example.test", [f"7302@{CA}"], subject=f"records trail {n}")
        qid = stack.inbound(msg, [f"7302@{CA}"])
        stack.log_line("router", qid, "status=stored")
        ids.append(_id_of(stack, msg["Message-ID"]))
    a, b = ids
    r = stack.ctl("messages", "refile", str(a), "--matter", matter, "--reason", "misfiled by the sender")
    assert r.returncode == 0 and f"message {a} refiled to matter {matter}" in r.stdout, (r.stdout, r.stderr)
    r = stack.ctl("matter", "hold", matter, "--reason", "litigation hold")
    assert r.returncode == 0, r.stderr
    r = stack.ctl("messages", "delete", str(a), "--reason", "cleanup")
    assert r.returncode == 1 and f"matter {matter}, which is under legal hold" in r.stderr, (r.stdout, r.stderr)
    r = stack.ctl("messages", "delete", str(b), "--reason", "duplicate of another")
    assert r.returncode == 0 and f"message {b} deleted" in r.stdout, (r.stdout, r.stderr)
    shown = json.loads(stack.ctl("messages", "show", str(a), "--json").stdout)
    assert [h["kind"] for h in shown["history"]] == ["stored", "filed", "refiled"], shown["history"]
    assert shown["history"][-1]["detail"]["reason"] == "misfiled by the sender"
    assert [f["matter"] for f in shown["filings"]] == [matter]
    r = stack.ctl("store", "verify")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    r = stack.ctl("matter", "release", matter, "--reason", "test over")
    assert r.returncode == 0, r.stderr


def test_backup_during_a_burst_restores_and_verifies(stack, matter, tmp_path):
    import re
    import smtplib
    import threading
    import time

    sessions, per = 10, 30
    errors: list[str] = []
    tag = f"burst-{time.time_ns()}"

    def session(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=60, source_address=("127.0.0.2", 0)) as c:
                c.ehlo("mail.example.test")
                for n in range(per):
                    msg = stack.message("rec-sender@example.test", [f"{matter}@{CA}"], subject=f"{tag} {k}-{n}")
                    c.send_message(msg)
        except Exception as e:  # noqa: BLE001 - reported in the assert
            errors.append(f"session {k}: {e!r}")

    def stored() -> int:
        db = sqlite3.connect(stack.stack.var / "store.sqlite")
        try:
            return db.execute("SELECT COUNT(*) FROM messages WHERE subject LIKE ?", [f"{tag} %"]).fetchone()[0]
        finally:
            db.close()

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while stored() < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    at_backup = stored()
    r = stack.ctl("backup", str(tmp_path / "bk"))
    after_backup = stored()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert r.returncode == 0, (r.stdout, r.stderr)
    total = sessions * per
    deadline = time.monotonic() + 180
    while stored() < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored() == total, f"{stored()} of {total} stored"
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg = tmp_path / "fresh.toml"
    cfg.write_text(re.sub(r'(?m)^(path|messages_dir) = ".*/(store\.sqlite|messages)"$',
                          lambda m: f'{m.group(1)} = "{fresh}/{m.group(2)}"', stack.stack.config.read_text()))
    assert f'path = "{fresh}/store.sqlite"' in cfg.read_text()
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([str(Path(sys.executable).parent / "mattermailctl"), "--config", str(cfg), "restore",
                        str(tmp_path / "bk")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "store verify: OK" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    live = sqlite3.connect(stack.stack.var / "store.sqlite")
    back = sqlite3.connect(fresh / "store.sqlite")
    try:
        burst_back = back.execute("SELECT COUNT(*) FROM messages WHERE subject LIKE ?", [f"{tag} %"]).fetchone()[0]
        counts = back.execute("SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM filings), "
                              "(SELECT COUNT(*) FROM chain)").fetchone()
        top = back.execute("SELECT MAX(id) FROM messages").fetchone()[0]
        live_before = {r[0] for r in live.execute("SELECT sha256 FROM messages WHERE id <= ?", [top])}
        back_all = {r[0] for r in back.execute("SELECT sha256 FROM messages")}
    finally:
        live.close()
        back.close()
    assert counts == (manifest["messages"], manifest["filings"], manifest["chain"]["length"]), (counts, manifest)
    assert at_backup <= burst_back <= after_backup, (at_backup, burst_back, after_backup)
    assert live_before <= back_all, f"{len(live_before - back_all)} messages stored before the snapshot are missing"
