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
from mattermail.milter.capture import parse_capture_address
from mattermail.router.srs import SRSCodec
from mattermail.router.store import Store, get_envelope, record_capture

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
    def __init__(self, store: Store, capture_address: str = "", capture_secret: bytes | None = None,
                 srs: SRSCodec | None = None) -> None:
        self.store = store
        self.srs = srs
        self.capture_address = capture_address
        self.capture_secret = capture_secret

    def _link_capture(self, rcpt: str, message: int, qlog: QueueIdAdapter, linked_in_same_delivery: bool) -> str:
        """For the capture recipient: check the signed reference and link the recorded envelope."""
        if not self.capture_address:
            return ""
        parsed = parse_capture_address(rcpt, self.capture_address, self.capture_secret or b"")
        if parsed is None:
            return ""
        if parsed.ref is None:
            if linked_in_same_delivery:
                # A Postfix BCC map and the milter both captured: one copy is enough.
                return " capture=duplicate (also captured by the milter)"
            qlog.warning("to=<%s>: capture copy without an envelope reference (a BCC map?); stored unlinked", rcpt)
            return " capture=unlinked"
        if not parsed.valid or self.capture_secret is None:
            qlog.warning("to=<%s>: capture reference does not verify; stored, envelope not trusted", rcpt)
            record_capture(self.store, message, parsed.ref, verified=False)
            return " capture=forged"
        env = get_envelope(self.store, parsed.ref)
        record_capture(self.store, message, parsed.ref, verified=env is not None)
        if env is None:
            qlog.warning("to=<%s>: no recorded envelope for capture reference %s", rcpt, parsed.ref)
            return " capture=missing-envelope"
        return f" capture={parsed.ref} envelope_rcpts={len(env.recipients)}"

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        # Postfix rewrote foreign senders for SRS on the way in; record the real one.
        sender = self.srs.unwrap(envelope.mail_from or "") if self.srs else (envelope.mail_from or "")
        qlog = QueueIdAdapter(log, {"queue_id": queue_id_of(raw)})
        try:
            stored = self.store.deliver(raw, sender, rcpts, queue_id=qlog.extra["queue_id"])
        except Exception:
            qlog.exception("storing failed, deferring %d recipient(s)", len(rcpts))
            return "\r\n".join("451 4.3.0 <%s> temporary failure storing message, try again later" % r for r in rcpts)
        extra = {}
        try:
            refs = [parse_capture_address(r, self.capture_address, self.capture_secret or b"")
                    for r in rcpts] if self.capture_address else []
            linked = any(p is not None and p.ref is not None and p.valid for p in refs)
            for r in rcpts:
                extra[r] = self._link_capture(r, stored.id, qlog, linked)
        except Exception:
            qlog.exception("linking the capture envelope failed, deferring")
            return "\r\n".join("451 4.3.0 <%s> temporary failure filing message, try again later" % r for r in rcpts)
        for r in rcpts:
            qlog.info("to=<%s>, from=<%s>, size=%d, sha256=%s, status=stored%s%s",
                      r, sender, len(raw), stored.sha256[:16], "" if stored.new else " (duplicate content)",
                      extra[r])
        # One reply per recipient, as LMTP requires; aiosmtpd pushes the lines as given.
        return "\r\n".join(f"250 2.0.0 <{r}> stored as {stored.sha256[:16]}" for r in rcpts)


async def serve(listen: tuple[str, ...], store: Store, handler: DeliveryHandler | None = None) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    handler = handler or DeliveryHandler(store)

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
