"""A 25 MB message with attachments goes through the full outbound pipeline
without the milter holding it in memory."""

from __future__ import annotations

import os
import threading
import time
from email import message_from_bytes, policy

from .test_outbound import DISCLAIMER, dkim_results, disclaimer  # noqa: F401  (module fixture)


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def test_25mb_message_is_signed_and_decorated_without_buffering_it(stack):
    pid = int((stack.stack.run_dir / "milter.pid").read_text())
    msg = stack.message("alice@lawfirm.test", ["big@example.test"], subject="25 MB of exhibits",
                        body="Exhibits attached.\n")
    blobs = [os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024), os.urandom(2 * 1024 * 1024)]
    for i, blob in enumerate(blobs):
        msg.add_attachment(blob, maintype="application", subtype="octet-stream", filename=f"exhibit-{i}.bin")
    size = len(msg.as_bytes())
    assert size > 25 * 1000 * 1000

    before = _status(pid)
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:  # VmHWM never falls, so sample VmRSS / RssAnon while the message passes
        while not done.is_set():
            now = _status(pid)
            for k in peak:
                peak[k] = max(peak[k], now[k])
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        stack.submit("alice@lawfirm.test", msg, ["big@example.test"])
    finally:
        done.set()
        sampler.join()
    raw = stack.sink_with(msg["Message-ID"].encode(), timeout=60).read_bytes()

    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed.get_body(("plain",)).get_content().count(DISCLAIMER) == 1
    got = [p.get_content() for p in parsed.iter_attachments()]
    assert got == blobs  # attachments byte-identical
    assert all(dkim_results(stack, raw))
    after = _status(pid)
    growth = max(peak["VmRSS"] - before["VmRSS"], after["VmHWM"] - before["VmHWM"])  # the sampler may miss a spike
    anon = peak["RssAnon"] - before["RssAnon"]
    print(f"\nmilter resident memory for a {size / 1e6:.1f} MB message: peak VmRSS +{growth / 1e6:.1f} MB "
          f"(heap +{anon / 1e6:.1f} MB, mapped spool +{(peak['RssFile'] - before['RssFile']) / 1e6:.1f} MB)")
    assert growth < size / 2
