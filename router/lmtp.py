"""The LMTP front of the router: aiosmtpd's LMTP server adapted to the store.

LMTP answers once per recipient after DATA. Each answer is ``250`` only after
the message file is durable and the message, its filings and events are
committed (router/filing.py); any failure answers ``451 4.3.0`` so Postfix
keeps the message queued and retries (nothing lost, nothing filed twice).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from mattermail.config import Config
from mattermail.daemon import parse_listen
from mattermail.logs import QueueIdAdapter
from mattermail.router.capture_link import inspect_captures
from mattermail.router.filing import file_message
from mattermail.router.rules import RouterRules
from mattermail.router.srs import SRSCodec
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
                # "with ESMTP id X", or "(Postfix, from userid 0) id X" for mail from sendmail/pickup
                if w == "id" and i > 1 and (words[i - 2].lower() == "with" or words[i - 1].endswith(")")):
                    return words[i + 1].rstrip(";")
            return ""
    return ""


class MatterLMTP(LMTP):
    """aiosmtpd's LMTP, with one reply per recipient also when DATA itself is refused.

    aiosmtpd answers an over-long line or too much data with a single reply,
    as SMTP does; an LMTP client (RFC 2033) then waits for the replies of the
    other recipients until it times out.
    """

    _DATA_REFUSALS = ("500 Line too long", "552 Error: Too much mail data")

    async def push(self, status: str) -> None:
        rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
        if status.startswith(self._DATA_REFUSALS) and len(rcpts) > 1:
            for _ in rcpts:
                await super().push(status)
            return
        await super().push(status)


class DeliveryHandler:
    """Files each message (router/filing.py) and answers per recipient: 250 after the commit, else 451."""

    def __init__(self, store: Store, capture_address: str = "", capture_secret: bytes | None = None,
                 srs: SRSCodec | None = None, config: Config | None = None) -> None:
        self.store = store
        self.srs = srs
        self.capture_address = capture_address
        self.capture_secret = capture_secret
        self.config = config or Config()
        self.rules = RouterRules.from_config(self.config)

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        # Postfix rewrote foreign senders for SRS on the way in; record the real one.
        sender = self.srs.unwrap(envelope.mail_from or "") if self.srs else (envelope.mail_from or "")
        sender = "" if sender.strip() == "<>" else sender  # the null sender, as aiosmtpd gives it
        qlog = QueueIdAdapter(log, {"queue_id": queue_id_of(raw)})
        try:
            captures = inspect_captures(rcpts, self.capture_address, self.capture_secret, self.store, qlog)
            result = file_message(raw, sender, rcpts, self.store, self.config, qlog.extra["queue_id"], captures,
                                  rules=self.rules)
        except Exception:
            qlog.exception("storing or filing failed, deferring %d recipient(s)", len(rcpts))
            return "\r\n".join("451 4.3.0 <%s> temporary failure storing message, try again later" % r for r in rcpts)
        replies = []
        for r, o in zip(rcpts, result.outcomes):
            qlog.info("to=<%s>, from=<%s>, size=%d, sha256=%s, status=stored%s%s%s%s",
                      r, sender, len(raw), result.sha256[:16], "" if result.new else " (duplicate content)",
                      o.capture_note, f" {o.summary}" if o.summary else "",
                      f" system=({o.result.system_reason})" if o.result.system else "")
            if o.forward_error:
                replies.append(f"451 4.3.0 <{r}> stored, but forwarding to the failed-mail address failed; "
                               "try again later")
            else:
                replies.append(f"250 2.0.0 <{r}> stored as {result.sha256[:16]}")
        # One reply per recipient, as LMTP requires; aiosmtpd pushes the lines as given.
        return "\r\n".join(replies)


async def serve(listen: tuple[str, ...], store: Store, handler: DeliveryHandler | None = None) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    handler = handler or DeliveryHandler(store)

    def factory() -> LMTP:
        return MatterLMTP(handler, data_size_limit=MAX_MESSAGE_SIZE, enable_SMTPUTF8=True, decode_data=False,
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
