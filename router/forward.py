"""Unfiled mail to the failed-mail address: a notice with the reason and the original attached.

Sent through Postfix's own ``sendmail`` (so it is queued, retried and logged
like any other mail) with the null envelope sender and ``Auto-Submitted:
auto-generated``, so it can never bounce back into a loop. The original is
attached byte for byte as ``message/rfc822`` (never re-encoded) and stays in
the store whatever happens here.
"""

from __future__ import annotations

import io
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from email import policy
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import BinaryIO

from mattermail.config import Config

__all__ = ["SENDMAIL", "ForwardError", "notice_message_id", "send_notice", "unfiled_notice",
           "write_notice"]

SENDMAIL = "/usr/sbin/sendmail"
_CHUNK = 1024 * 1024


class ForwardError(Exception):
    """sendmail did not take the notice; the notice stays in the outbox and is retried."""


def _header(name: str, value: str) -> bytes:
    return policy.SMTP.fold(name, " ".join(value.split())).replace("\r\n", "\n").encode("ascii", "replace")


def notice_message_id(outbox_id: int, sha256: str, hostname: str) -> str:
    """The notice's Message-ID, derived from its outbox record: a notice sent twice (a crash between
    sendmail's success and the record being marked) carries the same one, so the copy is recognisable."""
    return f"<unfiled.{outbox_id}.{sha256[:16]}@{hostname}>"


def write_notice(out: BinaryIO, original: BinaryIO, reasons: Sequence[tuple[str, str]], to: str, hostname: str,
                 queue_id: str = "", subject: str = "", sender: str = "", message_id: str = "") -> None:
    """Write the notice (LF-terminated, for sendmail) to ``out``: a text part with the reasons, the original
    (read from ``original``, a chunk at a time, never held whole) attached byte for byte."""
    boundary = "=_mattermail_" + secrets.token_hex(12)  # 96 random bits: never in the original
    eight_bit = False
    while chunk := original.read(_CHUNK):
        if not chunk.isascii():
            eight_bit = True
            break
    original.seek(0)
    lines = ["This message reached the catch-all domain but could not be filed to a matter or a person.", ""]
    lines += [f"  <{rcpt}>: {reason}" for rcpt, reason in reasons]
    lines += ["", f"From:     {sender or '<>'}", f"Subject:  {subject}", f"Queue id: {queue_id or '-'}", "",
              "The original is attached and kept in the store; file it with mattermailctl."]
    out.write(b"".join([
        _header("From", f"Mail Delivery System <MAILER-DAEMON@{hostname}>"),
        _header("To", to),
        _header("Subject", f"Unfiled: {subject}" if subject else "Unfiled message"),
        _header("Date", formatdate(localtime=True)),
        _header("Message-ID", message_id or make_msgid("unfiled", domain=hostname)),
        _header("Auto-Submitted", "auto-generated"),
        _header("MIME-Version", "1.0"),
        _header("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
        b"\nThis is a MIME message: the reason, then the original message.\n",
        f"--{boundary}\n".encode(),
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
        "\n".join(lines).encode("utf-8") + b"\n",
        f"--{boundary}\n".encode(),
        b"Content-Type: message/rfc822\nContent-Disposition: attachment; filename=\"unfiled.eml\"\n",
        b"Content-Transfer-Encoding: 8bit\n" if eight_bit else b"",
        b"\n",
    ]))
    last = b"\n"
    for line in original:  # CRLF to LF, as sendmail wants local mail
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        out.write(line)
        last = line[-1:]
    if last != b"\n":
        out.write(b"\n")
    out.write(f"--{boundary}--\n".encode())


def unfiled_notice(raw: bytes, reasons: Sequence[tuple[str, str]], to: str, hostname: str, queue_id: str = "",
                   subject: str = "", sender: str = "", message_id: str = "") -> bytes:
    """The notice as LF-terminated bytes (see :func:`write_notice`)."""
    out = io.BytesIO()
    write_notice(out, io.BytesIO(raw), reasons, to, hostname, queue_id, subject, sender, message_id)
    return out.getvalue()


def send_notice(original: Path | bytes, reasons: Sequence[tuple[str, str]], to: str, cfg: Config, queue_id: str = "",
                subject: str = "", sender: str = "", message_id: str = "", timeout: float = 60.0,
                spool: Path | None = None) -> None:
    """Hand the notice about the stored message at ``original`` (its file, or its bytes when the store keeps
    it in its row) to Postfix (``sendmail -C <config_dir> -f <> -- <to>``), through an unnamed temp file in
    ``spool`` (default: the system's temp directory), never a whole message file in memory."""
    cmd = [SENDMAIL, "-C", str(cfg.postfix.config_dir), "-i", "-f", "<>", "--", to]
    spool = Path(spool or tempfile.gettempdir())
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool, prefix=".notice-") as tmp, \
                (io.BytesIO(original) if isinstance(original, bytes) else open(original, "rb")) as src:
            write_notice(tmp, src, reasons, to, cfg.general.hostname, queue_id, subject, sender, message_id)
            tmp.seek(0)
            r = subprocess.run(cmd, stdin=tmp, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ForwardError(f"{SENDMAIL}: {e}") from None
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ForwardError(f"{SENDMAIL} exit {r.returncode}: {err[-1] if err else ''}")
