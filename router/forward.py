"""Unfiled mail to the failed-mail address: a notice with the reason and the original attached.

Sent through Postfix's own ``sendmail`` (so it is queued, retried and logged
like any other mail) with the null envelope sender and ``Auto-Submitted:
auto-generated``, so it can never bounce back into a loop. The original is
attached byte for byte as ``message/rfc822`` (never re-encoded) and stays in
the store whatever happens here.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from email import policy
from email.utils import formatdate, make_msgid

from mattermail.config import Config

__all__ = ["SENDMAIL", "ForwardError", "forward_unfiled", "unfiled_notice"]

SENDMAIL = "/usr/sbin/sendmail"


class ForwardError(Exception):
    """sendmail did not take the notice; the caller defers (4xx) so Postfix retries."""


def _header(name: str, value: str) -> bytes:
    return policy.SMTP.fold(name, " ".join(value.split())).replace("\r\n", "\n").encode("ascii", "replace")


def unfiled_notice(raw: bytes, reasons: Sequence[tuple[str, str]], to: str, hostname: str, queue_id: str = "",
                   subject: str = "", sender: str = "") -> bytes:
    """The notice as LF-terminated bytes for sendmail: a text part with the reasons, the original attached."""
    boundary = "=_mattermail_" + secrets.token_hex(12)
    while boundary.encode() in raw:  # pragma: no cover - 96 random bits
        boundary = "=_mattermail_" + secrets.token_hex(12)
    lines = ["This message reached the catch-all domain but could not be filed to a matter or a person.", ""]
    lines += [f"  <{rcpt}>: {reason}" for rcpt, reason in reasons]
    lines += ["", f"From:     {sender or '<>'}", f"Subject:  {subject}", f"Queue id: {queue_id or '-'}", "",
              "The original is attached and kept in the store; file it with mattermailctl."]
    head = b"".join([
        _header("From", f"Mail Delivery System <MAILER-DAEMON@{hostname}>"),
        _header("To", to),
        _header("Subject", f"Unfiled: {subject}" if subject else "Unfiled message"),
        _header("Date", formatdate(localtime=True)),
        _header("Message-ID", make_msgid("unfiled", domain=hostname)),
        _header("Auto-Submitted", "auto-generated"),
        _header("MIME-Version", "1.0"),
        _header("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
    ])
    original = raw.replace(b"\r\n", b"\n")
    if not original.endswith(b"\n"):
        original += b"\n"
    eight_bit = any(b > 127 for b in original)
    body = b"".join([
        b"\nThis is a MIME message: the reason, then the original message.\n",
        f"--{boundary}\n".encode(),
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
        "\n".join(lines).encode("utf-8") + b"\n",
        f"--{boundary}\n".encode(),
        b"Content-Type: message/rfc822\nContent-Disposition: attachment; filename=\"unfiled.eml\"\n",
        b"Content-Transfer-Encoding: 8bit\n" if eight_bit else b"",
        b"\n", original,
        f"--{boundary}--\n".encode(),
    ])
    return head + body


def forward_unfiled(raw: bytes, reasons: Sequence[tuple[str, str]], cfg: Config, queue_id: str = "",
                    subject: str = "", sender: str = "", timeout: float = 60.0) -> None:
    """Hand the notice to Postfix (``sendmail -C <config_dir> -f <> -- <failed_mail_address>``)."""
    to = cfg.router.failed_mail_address
    notice = unfiled_notice(raw, reasons, to, cfg.general.hostname, queue_id, subject, sender)
    cmd = [SENDMAIL, "-C", str(cfg.postfix.config_dir), "-i", "-f", "<>", "--", to]
    try:
        r = subprocess.run(cmd, input=notice, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ForwardError(f"{SENDMAIL}: {e}") from None
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ForwardError(f"{SENDMAIL} exit {r.returncode}: {err[-1] if err else ''}")
