"""Shared helpers of the probe suite (test_probe_*.py): raw SMTP sessions as "the internet" and as alice,
and the checks "stored exactly once" / "delivered once" a probe asserts after each attack."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import sqlite3
import ssl
import uuid

from .conftest import PASSWORD, wait_for
from .test_outbound import sink_envelopes as sink_copies  # noqa: F401  (used by the probe files)
from .test_router_robustness import alive

OUTSIDE = "127.0.0.2"  # "the internet"; only 127.0.0.1 is trusted


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mx(stack, source: str = OUTSIDE, helo: str = "mail.example.test") -> smtplib.SMTP:
    """A session on the MX port from an outside address (not logged in, no TLS)."""
    c = smtplib.SMTP("127.0.0.1", stack.stack.ports.smtp, timeout=120, source_address=(source, 0))
    c.ehlo(helo)
    return c


def submission(stack, login: str | None = "alice@lawfirm.test", password: str = PASSWORD) -> smtplib.SMTP:
    """A session on the submission port after STARTTLS (and AUTH when ``login`` is given)."""
    c = smtplib.SMTP("127.0.0.1", stack.stack.ports.submission, timeout=120)
    c.ehlo("client.lawfirm.test")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.starttls(context=ctx)
    c.ehlo("client.lawfirm.test")
    if login:
        c.login(login, password)
    return c


def transaction(c: smtplib.SMTP, mail_from: str, rcpts: list[str], raw: bytes,
                mail_options: tuple[str, ...] = ()) -> tuple[int, bytes]:
    """MAIL, RCPT..., DATA; the first reply that is not a success, else DATA's reply."""
    code, text = c.mail(mail_from, list(mail_options))
    if code != 250:
        return code, text
    for r in rcpts:
        code, text = c.rcpt(r)
        if code != 250:
            c.rset()
            return code, text
    return c.data(raw)


def queue_id(text: bytes) -> str:
    return text.decode().rsplit(" ", 1)[-1]


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def db(stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.stack.var / "store.sqlite", timeout=30)


def stored(stack, message_id: str) -> list[tuple[int, str, str]]:
    """The store's messages rows (id, sha256, direction) with this Message-ID."""
    conn = db(stack)
    try:
        return conn.execute("SELECT id, sha256, direction FROM messages WHERE message_id = ?", [message_id]).fetchall()
    finally:
        conn.close()


def blob(stack, sha256: str) -> bytes:
    return stack.stored_raw(sha256)


def pid_of(stack, name: str) -> int:
    return int((stack.stack.run_dir / f"{name}.pid").read_text())


def sigkill(stack, name: str) -> int:
    """SIGKILL a daemon the session fixture spawned (and reap it); its pid."""
    pid = pid_of(stack, name)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        wait_for(lambda: not alive(pid), 10, f"{name} to die")
    return pid


def our_ar_count(raw: bytes) -> int:
    """Authentication-Results fields claiming mx.lawfirm.test in the header (unfolded)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = head.replace("\r\n ", " ").replace("\r\n\t", " ").split("\r\n")
    ids = [re.split(r"[\s;]", f.split(":", 1)[1].strip(), maxsplit=1)[0].lower().rstrip(".")
           for f in fields if f.lower().startswith("authentication-results:")]
    return ids.count("mx.lawfirm.test")
