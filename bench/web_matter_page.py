"""Benchmark: the web view of a matter with 10,000 messages renders its first page (50 messages) in < 300 ms.

Builds a temp store with one matter of N messages (a mix of threads, some with a PDF attachment, a walled
second matter so the wall conditions are in play), signs a plain user in, then times ``GET /matters/1234``
over HTTP on loopback (uvicorn, as mattermail-web serves it) and prints the first (cold) time, the median
and the worst of the following runs. The API's first page is timed too.

    .venv/bin/python -P bench/web_matter_page.py [-n 10000] [--runs 20]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import uvicorn

from mattermail import config as configmod
from mattermail.store import Store, access, add_user, index_pending, insert_message, sessions, tokens, transaction
from mattermail.store import directory as d
from mattermail.web.app import create_app


def fill(store: Store, n: int) -> None:
    add_user(store, "alice@lawfirm.test", "{ARGON2ID}x")
    add_user(store, "bob@lawfirm.test", "{ARGON2ID}x")
    d.add_person(store, "jane@client.example", "Jane Client")
    d.add_matter(store, "1234", "Smith v Jones", ["jane@client.example"])
    d.add_matter(store, "5678", "Estate of Brown")
    access.deny(store, "5678", ["bob@lawfirm.test"])
    with transaction(store):
        for i in range(n):
            m = EmailMessage()
            m["From"] = "Jane Client <jane@client.example>" if i % 2 else "Alice <alice@lawfirm.test>"
            m["To"] = "1234@matters.lawfirm.test"
            m["Subject"] = ("Re: " if i % 3 else "") + f"Draft contract part {i // 3}"
            m["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1_700_000_000 + i * 600))
            m["Message-ID"] = f"<{i}@bench.example>"
            m.set_content(f"Message {i} about the draft contract, clause {i % 97}.\n" * 20)
            if i % 5 == 0:
                m.add_attachment(b"%PDF-1.4 " + bytes(2000), maintype="application", subtype="pdf",
                                 filename=f"draft-{i}.pdf")
            raw = bytes(m)
            sha, _ = store.write_blob(raw, sync_dir=False, sync_file=False)
            mid, _ = insert_message(store, raw, sha, body_text=m.get_body(("plain",)).get_content())
            matters = ("1234", "5678") if i % 100 == 0 else ("1234",)
            for matter in matters:
                d.record_filing(store, d.Filing(mid, matter, None, "bench", "1234@matters.lawfirm.test"))
    while index_pending(store, 2000):
        pass


def timed_get(port: int, path: str, headers: dict[str, str]) -> tuple[float, int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed * 1000, resp.status, len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="messages in the matter")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.sqlite", Path(tmp) / "messages")
        t0 = time.perf_counter()
        fill(store, args.n)
        print(f"filled {args.n} messages in {time.perf_counter() - t0:.1f} s")
        from mattermail.store import webview

        webview.warm_sort_keys(store)  # as mattermail-web does at start
        cookie, _ = sessions.create_session(store, "bob@lawfirm.test", 1)
        _, secret = tokens.create_token(store, "bob@lawfirm.test")
        cfg = configmod.from_dict({"store": {"path": str(store.path), "messages_dir": str(store.messages_dir)},
                                   "web": {"cookie_secure": False}})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(store, cfg), host="127.0.0.1", port=port, loop="uvloop",
                                               lifespan="off", log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        for label, path, headers in (
                ("web page /matters/1234", "/matters/1234", {"Cookie": f"mm_session={cookie}"}),
                ("API /api/v1/matters/1234/messages", "/api/v1/matters/1234/messages",
                 {"Authorization": f"Bearer {secret}"})):
            first, status, size = timed_get(port, path, headers)
            assert status == 200, (path, status)
            times = [timed_get(port, path, headers)[0] for _ in range(args.runs)]
            print(f"{label}: {size} bytes; first {first:.0f} ms, median {statistics.median(times):.0f} ms, "
                  f"worst {max(times):.0f} ms over {args.runs} runs")
        server.should_exit = True
        thread.join(10)
        store.close()


if __name__ == "__main__":
    main()
