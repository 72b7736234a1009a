"""The router's memory for one large message: DATA is streamed to a spool file and the text index reads a
bounded prefix, so the peak grows by well under twice the message (issue 13: it grew by 342 MB for 35 MB)."""

from __future__ import annotations

import os
import uuid
from email.message import EmailMessage
from pathlib import Path

from .test_router_robustness import MATTER, RCPT, SENDER, assert_postfix_path_clean, db, matter, router_pid, via_postfix  # noqa: F401


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def test_a_35_mb_message_raises_the_routers_peak_by_less_than_70_mb(stack, matter):
    pid = router_pid(stack)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _status(pid)
    assert before["VmHWM"] - before["VmRSS"] < 1_000_000, before  # the reset took
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = SENDER, RCPT, "35 MB of exhibits"
    m["Message-ID"] = f"<mem-{uuid.uuid4().hex}@test.mattermail>"
    m.set_content("Exhibits attached, see the quarterly figures.\n")
    m.add_attachment(os.urandom(25 * 1024 * 1024), maintype="application", subtype="octet-stream",
                     filename="exhibits.bin")
    sent = m.as_bytes().replace(b"\n", b"\r\n")
    del m
    size = len(sent)
    assert size > 34_000_000
    code, text = via_postfix(stack, sent)
    del sent
    row = assert_postfix_path_clean(stack, code, text)  # 250, filed once to the matter, file sound
    assert row is not None
    after = _status(pid)
    growth = after["VmHWM"] - before["VmRSS"]
    with db(stack) as conn:
        body = conn.execute("SELECT body_text FROM messages WHERE id = ?", [row[0]]).fetchone()[0]
    assert body == "Exhibits attached, see the quarterly figures.", body  # the text part is still indexed
    print(f"\nrouter memory for a {size / 1e6:.1f} MB message: RSS {before['VmRSS'] / 1e6:.1f} MB before, "
          f"peak {after['VmHWM'] / 1e6:.1f} MB (+{growth / 1e6:.1f} MB)")
    assert growth < 70_000_000, (f"a {size / 1e6:.1f} MB message raised the router's peak RSS from "
                                 f"{before['VmRSS'] / 1e6:.1f} MB to {after['VmHWM'] / 1e6:.1f} MB "
                                 f"(+{growth / 1e6:.1f} MB, limit 70 MB)")
