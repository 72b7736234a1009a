"""Logging set-up shared by the daemons: Postfix-style lines on stderr.

A line about a message reads ``mattermail-milter[PID]: QUEUEID: text``, the way
Postfix's own daemons write, so ``grep QUEUEID`` over the mail log and ours
finds everything about one message.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(progname)s[%(process)d]: %(levelname)s %(message)s"


class _ProgFilter(logging.Filter):
    def __init__(self, progname: str) -> None:
        super().__init__()
        self.progname = progname

    def filter(self, record: logging.LogRecord) -> bool:
        record.progname = self.progname
        return True


def setup(progname: str, level: str = "info") -> None:
    """Send every logger's lines to stderr (journald or the dev stack's log file)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProgFilter(progname))
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every SMTP command at INFO; we log one line per message ourselves.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
    os.environ.setdefault("MATTERMAIL_PROG", progname)


class QueueIdAdapter(logging.LoggerAdapter):
    """Prefix every line with the Postfix queue id ("NOQUEUE" until it is known)."""

    def process(self, msg, kwargs):  # type: ignore[override]
        return f"{self.extra.get('queue_id') or 'NOQUEUE'}: {msg}", kwargs
