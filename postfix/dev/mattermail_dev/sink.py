"""mattermail-sink: "the internet" of the dev stack.

An SMTP server that accepts everything and writes each message, byte for
byte, to ``DIR/<time>-<n>.eml`` with its envelope beside it in ``.json``
(so tests can see exactly what a recipient would receive, and who the
envelope named). For the dev stack and tests only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("mattermail_dev.sink")


class SinkHandler:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        stem = f"{time.time():.6f}-{os.getpid()}-{next(self._n)}"
        raw = envelope.original_content or b""
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                "rcpt_options": envelope.rcpt_options, "peer": list(session.peer) if session.peer else None,
                "helo": session.host_name}
        tmp = self.dir / f".{stem}.tmp"
        tmp.write_bytes(raw)
        (self.dir / f"{stem}.json").write_text(json.dumps(meta), encoding="utf-8")
        tmp.rename(self.dir / f"{stem}.eml")  # the .eml appears last: its presence means complete
        log.info("stored %s from=<%s> to=%s size=%d", stem, envelope.mail_from, envelope.rcpt_tos, len(raw))
        return "250 2.0.0 Ok: stored by sink"


async def _run(directory: Path, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = SinkHandler(directory)
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, enable_SMTPUTF8=True, data_size_limit=64 * 1024 * 1024,
                     hostname="sink.test", ident="mattermail-sink"),
        host=host, port=port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d, writing to %s", host, port, directory)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mattermail-sink", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2526)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mattermail-sink: %(message)s")
    asyncio.run(_run(args.dir, args.address, args.port))


if __name__ == "__main__":
    main()
