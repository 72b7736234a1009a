"""Logging set-up shared by the daemons: Postfix-style lines on stderr, optionally syslog.

A line about a message reads ``mattermail-milter[PID]: QUEUEID: text``, the way
Postfix's own daemons write, so ``grep QUEUEID`` over the mail log and ours
finds everything about one message. Warnings and errors carry Postfix's
``warning:`` / ``error:`` / ``fatal:`` prefix; info and debug lines none.

Under systemd (``$JOURNAL_STREAM`` set) journald stamps each line, so we do
not; elsewhere (the dev stack's log files) each line starts with the time.
With ``log.syslog = true`` every line also goes to the syslog socket
(facility mail, tag ``mattermail-milter[PID]``), as Postfix's lines do.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import socket
import sys
from pathlib import Path

_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "fatal: "}


class PostfixStyle(logging.Formatter):
    """``[TIME ]PROG[PID]: [warning: ]text``; the tag is left out for syslog, which adds its own."""

    def __init__(self, progname: str, *, timestamps: bool, tag: bool = True) -> None:
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")
        self.progname = progname
        self.timestamps = timestamps
        self.tag = tag
        self._second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging's, made once per second (the stamp has no fraction): a busy daemon's lines
        share it."""
        second, text = self._second
        if datefmt != self.datefmt or int(record.created) != second:
            text = super().formatTime(record, datefmt)
            if datefmt == self.datefmt:
                self._second = (int(record.created), text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        text = _PREFIX.get(record.levelno, "") + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.tag:
            text = f"{self.progname}[{record.process}]: {text}"
        if self.timestamps:
            text = f"{self.formatTime(record, self.datefmt)} {text}"
        return text


def _syslog_handler(progname: str, path: Path) -> logging.Handler:
    # SysLogHandler keeps going without its socket (and drops every line); refuse instead.
    if not path.is_socket():
        raise FileNotFoundError(errno.ENOENT, "no syslog socket there (is a syslog daemon running?)", str(path))
    handler = logging.handlers.SysLogHandler(address=str(path), facility=logging.handlers.SysLogHandler.LOG_MAIL,
                                             socktype=socket.SOCK_DGRAM)
    handler.ident = f"{progname}[{os.getpid()}]: "
    handler.setFormatter(PostfixStyle(progname, timestamps=False, tag=False))
    return handler


def setup(progname: str, level: str = "info", *, syslog: bool = False,
          syslog_socket: Path = Path("/dev/log")) -> None:
    """Send every logger's lines to stderr (journald or the dev stack's log file), and syslog if asked.

    Raises OSError when syslog is asked for and its socket cannot be reached.
    """
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(PostfixStyle(progname, timestamps=not os.environ.get("JOURNAL_STREAM")))
    handlers: list[logging.Handler] = [stderr]
    if syslog:
        handlers.append(_syslog_handler(progname, syslog_socket))
    root = logging.getLogger()
    old, root.handlers[:] = list(root.handlers), handlers
    for h in old:
        if h not in handlers:
            h.close()
    root.setLevel(level.upper())
    # aiosmtpd logs every SMTP command at INFO; we log one line per message ourselves.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
    os.environ.setdefault("MATTERMAIL_PROG", progname)


class QueueIdAdapter(logging.LoggerAdapter):
    """Prefix every line with the Postfix queue id ("NOQUEUE" until it is known)."""

    def process(self, msg, kwargs):  # type: ignore[override]
        return f"{self.extra.get('queue_id') or 'NOQUEUE'}: {msg}", kwargs
