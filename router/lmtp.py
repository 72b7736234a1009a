"""The LMTP front of the router: aiosmtpd's LMTP server adapted to the store.

LMTP answers once per recipient after DATA. Each answer is ``250`` only after
the message file and its database row are durable; any failure answers
``451 4.3.0`` so Postfix keeps the message queued and retries (nothing lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from mattermail.daemon import parse_listen
from mattermail.logs import QueueIdAdapter
from mattermail.router.store import Store

log = logging.getLogger("mattermail.router.lmtp")

MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def queue_id_of(raw: bytes) -> str:
    """Postfix's queue id from its topmost Received header ("with LMTP id X" / "with ESMTP id X")."""
    head = raw[:8192].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    text = head.decode("ascii", "replace").replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ")
    for line in text.split("\n"):
        if line.lower().startswith("received:"):
            words = line.split()
            for i, w in enumerate(words[:-1]):
                if w == "id" and i > 0 and words[i - 2].lower() == "with":
                    return words[i + 1].rstrip(";")
            return ""
    return ""


class DeliveryHandler:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        qlog = QueueIdAdapter(log, {"queue_id": queue_id_of(raw)})
        try:
            stored = self.store.deliver(raw, envelope.mail_from or "", rcpts, queue_id=qlog.extra["queue_id"])
        except Exception:
            qlog.exception("storing failed, deferring %d recipient(s)", len(rcpts))
            return "\r\n".join("451 4.3.0 <%s> temporary failure storing message, try again later" % r for r in rcpts)
        for r in rcpts:
            qlog.info("to=<%s>, from=<%s>, size=%d, sha256=%s, status=stored%s",
                      r, envelope.mail_from, len(raw), stored.sha256[:16], "" if stored.new else " (duplicate content)")
        # One reply per recipient, as LMTP requires; aiosmtpd pushes the lines as given.
        return "\r\n".join(f"250 2.0.0 <{r}> stored as {stored.sha256[:16]}" for r in rcpts)


async def serve(listen: tuple[str, ...], store: Store) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    handler = DeliveryHandler(store)

    def factory() -> LMTP:
        return LMTP(handler, data_size_limit=MAX_MESSAGE_SIZE, enable_SMTPUTF8=True, decode_data=False,
                    hostname="mattermail-router", ident="mattermail-router LMTP")

    servers = []
    for spec in listen:
        kind, where = parse_listen(spec)
        if kind == "unix":
            path = Path(str(where))
            path.unlink(missing_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            srv = await loop.create_unix_server(factory, path=str(path))
            os.chmod(path, 0o660)
        else:
            host, port = where  # type: ignore[misc]
            srv = await loop.create_server(factory, host=host, port=port, reuse_address=True)
        log.info("listening on %s", spec)
        servers.append(srv)
    return servers
