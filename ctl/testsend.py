"""mattermailctl test-send: the "test account settings" button, step by step.

Submits one test message as a user, the way their mail program does
(submission port, STARTTLS, AUTH), then looks in the router's store for the
capture copy and checks that it was DKIM-signed. One line per step:
``<step> ok|FAILED <detail>``; the first failure ends the run.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import sys
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, make_msgid
from pathlib import Path

import click

from mattermail import config as configmod
from mattermail.ctl.base import Context, UserFacingError, cli, pass_ctx, valid_address
from mattermail.store import StoreError
from mattermail.store import status as store_status
from mattermail.ctl.terminal import echo, safe

HELO = "mattermailctl-test-send"


class StepFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step = step
        self.detail = detail


def _report(step: str, ok: bool | None, detail: str) -> None:
    state = "ok" if ok else "FAILED" if ok is False else "skipped"
    echo(f"{step:<9} {state:<7} {safe(detail)}")


def _server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--server")
    return host, int(port)


def _read_password(from_stdin: bool) -> str:
    if not from_stdin and sys.stdin.isatty():
        return click.prompt("Password", hide_input=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise UserFacingError("password: nothing on standard input")
    return line.rstrip("\r\n")


def _reply(code: int, resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    return f"{code} {' '.join(text.split())}"


def _message(user: str, to: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = user
    m["To"] = to
    m["Subject"] = "mattermail test message"
    m["Date"] = formatdate(localtime=True)
    m["Message-ID"] = make_msgid("test-send", domain=user.rpartition("@")[2])
    m["X-Mattermail-Test"] = "mattermailctl test-send"
    m.set_content("This is a test message sent by `mattermailctl test-send` to check that sending works:\n"
                  "submission, STARTTLS, authentication, DKIM signing and capture.\n\n"
                  "Nothing needs to be done with it.\n")
    return m


def _submit(host: str, port: int, user: str, password: str, msg: EmailMessage, to: str, verify_tls: bool,
            timeout: float) -> None:
    """connect, STARTTLS, AUTH, accepted: each reported as it happens; StepFailed ends the run."""
    try:
        c = smtplib.SMTP(timeout=timeout)
        c._host = host  # what starttls() gives as server_hostname (SNI, and the name --verify-tls checks)
        code, banner = c.connect(host, port)
    except (OSError, smtplib.SMTPException) as e:
        reason = "connection refused" if isinstance(e, ConnectionRefusedError) else \
            "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else str(e)
        raise StepFailed("connect", f"{host}:{port}: {reason}") from None
    try:
        if code != 220:
            raise StepFailed("connect", f"{host}:{port}: {_reply(code, banner)}")
        _report("connect", True, f"{host}:{port}: {_reply(code, banner)}")

        code, resp = c.ehlo(HELO)
        if code != 250:
            raise StepFailed("STARTTLS", f"EHLO refused: {_reply(code, resp)}")
        if not c.has_extn("starttls"):
            raise StepFailed("STARTTLS", "the server does not offer STARTTLS")
        if verify_tls:
            ctx = ssl.create_default_context()
            note = "certificate verified"
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            note = "certificate not verified (--verify-tls to verify)"
        try:
            code, resp = c.starttls(context=ctx)
        except ssl.SSLCertVerificationError as e:
            raise StepFailed("STARTTLS", f"certificate not trusted for {host}: {e.verify_message}") from None
        except (ssl.SSLError, ValueError) as e:
            raise StepFailed("STARTTLS", f"TLS handshake failed: {getattr(e, 'reason', None) or e}") from None
        if code != 220:
            raise StepFailed("STARTTLS", _reply(code, resp))
        sock = c.sock
        tls = f"{sock.version()} {sock.cipher()[0]}" if isinstance(sock, ssl.SSLSocket) else "TLS"
        _report("STARTTLS", True, f"{tls}; {note}")

        c.ehlo(HELO)
        if not c.has_extn("auth"):
            raise StepFailed("AUTH", "the server offers no AUTH after STARTTLS")
        # One mechanism, one attempt: smtplib's login() would retry a refused password with every
        # mechanism offered, paying the server's failed-auth delay each time.
        offered = c.esmtp_features["auth"].upper().split()
        mech = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mech is None:
            raise StepFailed("AUTH", f"the server offers neither PLAIN nor LOGIN (offers: {' '.join(offered)})")
        c.user, c.password = user, password
        try:
            code, resp = c.auth(mech, c.auth_plain if mech == "PLAIN" else c.auth_login)
        except smtplib.SMTPAuthenticationError as e:
            raise StepFailed("AUTH", f"{user}: {_reply(e.smtp_code, e.smtp_error)}") from None
        except smtplib.SMTPException as e:
            raise StepFailed("AUTH", f"{user}: {e}") from None
        _report("AUTH", True, f"{user} ({mech}): {_reply(code, resp)}")

        code, resp = c.mail(user)
        if code != 250:
            raise StepFailed("accepted", f"MAIL FROM:<{user}>: {_reply(code, resp)}")
        code, resp = c.rcpt(to)
        if code not in (250, 251):
            raise StepFailed("accepted", f"RCPT TO:<{to}>: {_reply(code, resp)}")
        code, resp = c.data(msg.as_bytes(policy=policy.SMTP))
        if code != 250:
            raise StepFailed("accepted", f"DATA: {_reply(code, resp)}")
        text = _reply(code, resp)
        qid = text.rsplit("queued as ", 1)[-1] if "queued as " in text else ""
        _report("accepted", True, f"to <{to}>, queue id {qid}" if qid else f"to <{to}>: {text}")
        try:
            c.quit()
        except (OSError, smtplib.SMTPException):
            pass
    except StepFailed:
        c.close()
        raise
    except (OSError, smtplib.SMTPException) as e:  # the server hung up or timed out mid-dialogue
        c.close()
        raise StepFailed("connect", f"{host}:{port}: connection lost: {e}") from None


def _is_capture(recipient: str, base: str) -> bool:
    local, _, domain = recipient.strip("<>").rpartition("@")
    base_local, _, base_domain = base.rpartition("@")
    return domain.lower() == base_domain.lower() and local.partition("+")[0].lower() == base_local.lower()


def _find_capture(store: configmod.Store, capture_address: str, message_id: str) -> tuple[int, bytes | Path] | None:
    """(message row id, its raw bytes or file) of the stored copy with ``message_id`` that came in as a capture
    copy."""
    return store_status.find_capture_copy(store.location, store.messages_dir, message_id,
                                          lambda r: _is_capture(r, capture_address))


def _dkim_tags(value: str) -> dict[str, str]:
    tags = {}
    for part in "".join(value.split()).split(";"):
        k, eq, v = part.partition("=")
        if eq:
            tags[k] = v
    return tags


def _check_stored(cfg: configmod.Config, message_id: str, wait: float) -> None:
    """captured and signed: the capture copy in the store, and its DKIM-Signature headers."""
    if not cfg.capture.address:
        _report("captured", None, "capture is off (capture.address is empty)")
        _report("signed", None, "not checked: no capture copy to look at")
        return
    try:
        store_status.check_readable(cfg.store.location)
    except (OSError, StoreError) as e:
        _report("captured", None, f"store not readable here ({e})")
        _report("signed", None, "not checked: no capture copy to look at")
        return
    deadline = time.monotonic() + wait
    found = None
    while True:
        try:
            found = _find_capture(cfg.store, cfg.capture.address, message_id)
        except (OSError, StoreError) as e:  # a store being migrated or locked: try again until the deadline
            last_error = str(e)
        else:
            last_error = ""
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if not found:
        why = f" (last store error: {last_error})" if last_error else ""
        raise StepFailed("captured", f"no capture copy of {message_id} in the store after {wait:g}s{why}")
    row, raw = found
    _report("captured", True, f"stored as message {row} (to {cfg.capture.address})")
    try:
        hdr = BytesHeaderParser(policy=policy.compat32).parsebytes(raw if isinstance(raw, bytes) else raw.read_bytes())
    except OSError as e:
        raise StepFailed("signed", f"cannot read the stored copy {raw}: {e}") from None
    sigs = [_dkim_tags(str(v)) for v in hdr.get_all("DKIM-Signature") or []]
    if not sigs:
        raise StepFailed("signed", "the stored copy has no DKIM-Signature header")
    _report("signed", True, ", ".join(f"d={t.get('d', '?')} s={t.get('s', '?')} a={t.get('a', '?')}" for t in sigs))


@cli.command("test-send")
@click.option("--user", "user", required=True, metavar="ADDRESS", help="The SMTP user to log in as (and send from).")
@click.option("--to", "to", metavar="ADDRESS", help="Recipient (default: the user's own address).")
@click.option("--server", metavar="HOST:PORT",
              help="The submission service to connect to (default: postfix.submission of the config, 127.0.0.1:587).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--verify-tls", is_flag=True, help="Verify the server's certificate and host name (default: not).")
@click.option("--wait", default=20.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="How long to wait for the capture copy to reach the store.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(1), metavar="SECONDS",
              help="Timeout of each SMTP command.")
@pass_ctx
def test_send(ctx: Context, user: str, to: str | None, server: str | None, password_stdin: bool, verify_tls: bool,
              wait: float, timeout: float) -> None:
    """Send a test message as a user and report each step: connect, STARTTLS, AUTH, accepted, captured, signed.

    Like the "test account settings" button of hosted mail: it logs in on the
    submission port as the user's mail program would (password prompted, or
    read from standard input), sends one message to the user (or --to), then,
    where the store in the config is readable, waits for the capture copy and
    checks that it was DKIM-signed. Exit status 0 when every step passed, 1
    naming the step that failed.

    \b
    Example:
      mattermailctl test-send --user alice@lawfirm.test
      echo 's3cret-pass' | mattermailctl test-send --user alice@lawfirm.test --server 127.0.0.1:5870 --password-stdin
    """
    cfg = ctx.config
    host, port = _server(server or cfg.postfix.submission)
    login = valid_address(user, "--user")
    rcpt = valid_address(to, "--to") if to else login
    password = _read_password(password_stdin)
    msg = _message(login, rcpt)
    try:
        _submit(host, port, login, password, msg, rcpt, verify_tls, timeout)
        _check_stored(cfg, str(msg["Message-ID"]), wait)
    except StepFailed as e:
        _report(e.step, False, e.detail)
        raise UserFacingError(f"test-send failed at {e.step}: {e.detail}") from None
    echo(f"test-send: every step passed (Message-ID {safe(msg['Message-ID'])})")
