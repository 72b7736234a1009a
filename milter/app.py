"""The pymilter adapter: gathers what Postfix tells us, acts only at end of message.

Callbacks before end-of-message only record state (and are declared
``@Milter.noreply`` so Postfix does not wait for them); callbacks we do not
need are left to pymilter's defaults, which negotiate them away. Any exception
is logged with its traceback and answered ``451 4.3.0``: the client (or
Postfix's queue) retries, and nothing passes unfiltered.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import Milter

from mattermail.config import Config
from mattermail.logs import QueueIdAdapter
from mattermail.milter.direction import Direction, direction, parse_networks

log = logging.getLogger("mattermail.milter")

TEMPFAIL_TEXT = "Temporary local problem checking this message, please try again later"


@dataclass
class Message:
    """What we learn about one message, reset at MAIL FROM."""

    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    auth_authen: str | None = None
    queue_id: str = ""
    failed: bool = False


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log any exception with the queue id; passive callbacks defer the verdict to eom."""

    @wraps(fn)
    def wrapper(self: "MatterMilter", *args: Any) -> Any:
        try:
            return fn(self, *args)
        except Exception:
            self.qlog().exception("%s failed", fn.__name__)
            if self.msg is not None:
                self.msg.failed = True
            if fn.__name__ in ("eom",):
                return self.tempfail()
            return Milter.CONTINUE

    return wrapper


class MatterMilter(Milter.Base):
    config: Config  # set by run() before the first connection

    def __init__(self) -> None:
        self.client_ip: str | None = None
        self.msg: Message | None = None
        self._trusted = parse_networks(self.config.milter.trusted_networks)

    def qlog(self) -> QueueIdAdapter:
        qid = self.msg.queue_id if self.msg else ""
        if self.msg is not None and not qid:
            qid = self.getsymval("i") or ""
            self.msg.queue_id = qid
        return QueueIdAdapter(log, {"queue_id": qid})

    def tempfail(self) -> int:
        self.setreply("451", "4.3.0", TEMPFAIL_TEXT)
        return Milter.TEMPFAIL

    @Milter.noreply
    @_guard
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            self.client_ip = hostaddr[0]
        return Milter.CONTINUE

    @Milter.noreply
    @_guard
    def envfrom(self, mail_from: str, *params: str) -> int:
        self.msg = Message(mail_from=mail_from.strip("<>"), auth_authen=self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    @Milter.noreply
    @_guard
    def envrcpt(self, rcpt: str, *params: str) -> int:
        if self.msg is not None:
            self.msg.recipients.append(rcpt.strip("<>"))
        return Milter.CONTINUE

    @_guard
    def eom(self) -> int:
        msg = self.msg
        if msg is None:  # pragma: no cover - Postfix always sends MAIL FROM first
            return self.tempfail()
        qlog = self.qlog()
        if msg.failed:
            qlog.warning("verdict=tempfail reason=earlier callback failed")
            return self.tempfail()
        way = direction(msg.auth_authen, self.client_ip, self._trusted)
        qlog.info(
            "%s from=<%s> nrcpt=%d client=%s%s verdict=accept",
            way.value, msg.mail_from, len(msg.recipients), self.client_ip or "local",
            f" sasl_username={msg.auth_authen}" if msg.auth_authen else "",
        )
        return Milter.ACCEPT if way is Direction.INBOUND else Milter.CONTINUE

    def abort(self) -> int:
        self.msg = None
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE
