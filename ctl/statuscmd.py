"""mattermailctl status: are the daemons up, how full is Postfix's queue, what went wrong lately, how big is the store.

Every check is read-only: the store is opened read-only (a missing store is
reported, never created), Postfix is only asked (``postqueue -j``,
``postconf -h``), and each daemon gets one short, well-formed exchange.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from mattermail import config as configmod
from mattermail.ctl.base import Context, cli, json_option, pass_ctx
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.daemon import parse_listen
from mattermail.store import StoreError
from mattermail.store import status as store_status

TIMEOUT = 3.0
QUEUES = ("active", "deferred", "hold", "incoming")
LOG_PATTERN = re.compile(r"\b(error|fatal|panic|warning)\b", re.IGNORECASE)
# Milter protocol: SMFIC_OPTNEG with version 6, every action, every protocol step; the reply is SMFIC_OPTNEG too.
_OPTNEG = b"O" + struct.pack("!III", 6, 0x1FF, 0x1FFFFF)
_QUIT = b"Q"


@dataclass
class Check:
    name: str
    address: str
    up: bool
    detail: str


@dataclass
class QueueCounts:
    source: str  # "postqueue", "files" or "" (nothing worked)
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""
    warning: str = ""  # e.g. postqueue's "Mail system is down -- accessing queue directly"


# -- daemons -------------------------------------------------------------------------------


def _connect(spec: str, timeout: float = TIMEOUT) -> socket.socket:
    kind, where = parse_listen(spec)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(where))
        except BaseException:
            s.close()
            raise
        return s
    host, port = where  # type: ignore[misc]
    return socket.create_connection((host, port), timeout=timeout)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _why(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, FileNotFoundError):
        return "socket file does not exist"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def check_milter(spec: str) -> Check:
    """Connect and negotiate (SMFIC_OPTNEG), then quit: the milter answered in its own protocol."""
    try:
        with _connect(spec) as s:
            s.sendall(struct.pack("!I", len(_OPTNEG)) + _OPTNEG)
            (length,) = struct.unpack("!I", _recv_exactly(s, 4))
            reply = _recv_exactly(s, min(length, 4096))
            s.sendall(struct.pack("!I", 1) + _QUIT)
        if reply[:1] != b"O" or len(reply) < 5:
            return Check("milter", spec, False, f"connected, but the reply is not a milter negotiation ({reply[:1]!r})")
        version = struct.unpack("!I", reply[1:5])[0]
        return Check("milter", spec, True, f"negotiated (milter protocol {version})")
    except (OSError, ConnectionError, struct.error) as e:
        return Check("milter", spec, False, _why(e))


def check_lmtp(spec: str) -> Check:
    """Read the router's 220 banner and say QUIT."""
    try:
        with _connect(spec) as s:
            banner = s.makefile("rb").readline(512).decode("utf-8", "replace").strip()
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
        if not banner.startswith("220"):
            return Check("router", spec, False, f"unexpected banner {banner!r}" if banner else "closed without a banner")
        return Check("router", spec, True, banner)
    except (OSError, ConnectionError) as e:
        return Check("router", spec, False, _why(e))


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def check_srs(spec: str) -> Check:
    """One lookup (``srs_forward postmaster@example.invalid``) at mattermail-srs: OK or NOTFOUND means it works."""
    try:
        with _connect(spec) as s:
            s.sendall(_netstring(b"srs_forward postmaster@example.invalid"))
            f = s.makefile("rb")
            digits = b""
            while (c := f.read(1)) not in (b":", b""):
                digits += c
                if len(digits) > 6:
                    raise ConnectionError("bad netstring reply")
            if not digits.isdigit():
                raise ConnectionError("closed without a reply" if not digits else "bad netstring reply")
            data = f.read(int(digits) + 1)
        reply = data[:-1].decode("utf-8", "replace")
        status = reply.partition(" ")[0]
        if status in ("OK", "NOTFOUND"):
            return Check("srs", spec, True, f"socketmap answered {status}")
        return Check("srs", spec, False, f"socketmap answered {reply!r}")
    except (OSError, ConnectionError, ValueError) as e:
        return Check("srs", spec, False, _why(e))


def check_dns(cfg: configmod.Config) -> Check:
    """One SOA query for the first sending domain (else general.hostname); an empty answer still counts as up."""
    from mattermail.dns import Resolver, TempError

    servers = ", ".join(cfg.dns.nameservers) or "system resolver"
    where = f"{servers} port {cfg.dns.port}"
    name = cfg.general.sending_domains[0] if cfg.general.sending_domains else cfg.general.hostname
    try:
        answers = Resolver(cfg.dns).query(name, "SOA")
    except TempError as e:
        return Check("dns", where, False, f"SOA {name}: {e}")
    except Exception as e:  # a malformed name, an unusable resolv.conf
        return Check("dns", where, False, f"SOA {name}: {e}")
    return Check("dns", where, True, f"SOA {name}: {len(answers)} record(s)")


def check_daemons(cfg: configmod.Config) -> list[Check]:
    checks = [check_milter(cfg.milter.socket)]
    checks += [check_lmtp(spec) for spec in cfg.router.listen]
    if cfg.srs.listen:
        checks.append(check_srs(cfg.srs.listen))
    checks.append(check_dns(cfg))
    return checks


# -- Postfix ------------------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)


def postconf(config_dir: Path, parameter: str) -> str:
    """``postconf -c DIR -h PARAMETER``; ValueError with Postfix's complaint when it fails."""
    try:
        r = _run(["postconf", "-c", str(config_dir), "-h", parameter])
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValueError(f"postconf: {e}") from None
    if r.returncode != 0:
        raise ValueError(f"postconf: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")
    return r.stdout.strip()


def queue_counts(config_dir: Path) -> QueueCounts:
    """Counts from ``postqueue -j``; when that fails, the files under the queue directory."""
    counts = dict.fromkeys(QUEUES, 0)
    try:
        r = _run(["postqueue", "-c", str(config_dir), "-j"])
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"postqueue failed: {e}"
    else:
        if r.returncode == 0:
            try:
                for line in r.stdout.splitlines():
                    if line.strip():
                        name = json.loads(line).get("queue_name")
                        if name in counts:
                            counts[name] += 1
                warnings = [l for l in r.stderr.splitlines() if l.strip()]
                return QueueCounts("postqueue", counts, warning=warnings[-1] if warnings else "")
            except (ValueError, AttributeError):
                why = "postqueue -j printed something that is not JSON lines"
                counts = dict.fromkeys(QUEUES, 0)
        else:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:]
            why = f"postqueue failed: {last[0] if last else f'exit {r.returncode}'}"
    try:
        queue_dir = Path(postconf(config_dir, "queue_directory"))
        for name in QUEUES:
            d = queue_dir / name
            if not d.is_dir():
                raise ValueError(f"{d}: not a directory")
            counts[name] = sum(len(files) for _, _, files in os.walk(d))
        return QueueCounts("files", counts, why)
    except (OSError, ValueError) as e:
        return QueueCounts("", {}, f"{why}; counting queue files failed: {e}")


def _tail(path: Path, lines: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return [l.decode("utf-8", "replace") for l in deque(data.splitlines(), maxlen=lines)]


def recent_errors(config_dir: Path, lines: int) -> dict[str, Any]:
    """Lines with error|fatal|panic|warning among the last ``lines`` of Postfix's maillog_file."""
    out: dict[str, Any] = {"file": None, "scanned": 0, "errors": [], "note": ""}
    try:
        log_file = postconf(config_dir, "maillog_file")
    except ValueError as e:
        out["note"] = str(e)
        return out
    if not log_file:
        out["note"] = "no log file configured (maillog_file is empty: Postfix logs to syslog)"
        return out
    out["file"] = log_file
    try:
        tail = _tail(Path(log_file), lines)
    except OSError as e:
        out["note"] = f"cannot read {log_file}: {_why(e)}"
        return out
    out["scanned"] = len(tail)
    out["errors"] = [l for l in tail if LOG_PATTERN.search(l)]
    return out


# -- the store ----------------------------------------------------------------------------

def _dir_size(d: Path) -> tuple[int, int]:
    total = files = 0
    for root, _, names in os.walk(d):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def store_stats(cfg: configmod.Store) -> dict[str, Any]:
    out: dict[str, Any] = {"path": cfg.where, "messages_dir": str(cfg.messages_dir), "error": "",
                           "inline_max": cfg.inline_max}
    wal = Path(str(cfg.path) + "-wal")
    local = out["local"] = not cfg.url  # a PostgreSQL database's files are the server's: not counted here
    out["db_bytes"] = cfg.path.stat().st_size if local and cfg.path.is_file() else 0
    out["wal_bytes"] = wal.stat().st_size if local and wal.is_file() else 0
    out["messages_dir_bytes"], out["message_files"] = _dir_size(cfg.messages_dir)
    try:
        out["counts"] = store_status.counts(cfg.location)
    except (OSError, StoreError) as e:
        out["counts"] = {}
        out["error"] = str(e)
    return out


# -- the command -----------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@cli.command("status")
@click.option("--log-lines", default=1000, show_default=True, type=click.IntRange(1, 1_000_000), metavar="N",
              help="How many of the last lines of Postfix's maillog_file to scan for errors.")
@click.option("--show-errors", default=10, show_default=True, type=click.IntRange(0), metavar="N",
              help="How many of the most recent error lines to print (the count covers all).")
@json_option
@pass_ctx
def status(ctx: Context, log_lines: int, show_errors: int, as_json: bool) -> None:
    """Show whether each daemon answers, Postfix's queues, recent log errors and the store.

    Daemons: the milter (a protocol negotiation on milter.socket), the router
    (the LMTP banner on each router.listen), mattermail-srs's SRS socketmap (one
    lookup, if srs.listen is set) and DNS (one query through the [dns] resolver). Queue
    counts come from `postqueue -j` (else from the queue files); errors from
    Postfix's maillog_file. Exit status 1 when any daemon is unreachable.

    \b
    Example:
      mattermailctl status
      mattermailctl status --json | jq '.daemons[] | select(.up == false)'
    """
    cfg = ctx.config
    daemons = check_daemons(cfg)
    queue = queue_counts(cfg.postfix.config_dir)
    logs = recent_errors(cfg.postfix.config_dir, log_lines)
    store = store_stats(cfg.store)
    down = [d for d in daemons if not d.up]
    if as_json:
        echo_json({"ok": not down, "daemons": [asdict(d) for d in daemons],
                   "unreachable": [d.name for d in down],
                   "queue": {"source": queue.source, **queue.counts, "error": queue.error,
                             "warning": queue.warning},
                   "log": logs, "store": store})
    else:
        echo("daemons:")
        for d in daemons:
            echo(f"  {d.name:<7} {'up' if d.up else 'DOWN':<5} {safe(d.address)}: {safe(d.detail)}")
        echo("postfix queue:")
        if queue.counts:
            echo("  " + ", ".join(f"{k} {v}" for k, v in queue.counts.items())
                 + ("" if queue.source == "postqueue" else " (counted from the queue files)"))
        for problem in (queue.error, queue.warning):
            if problem:
                echo(f"  {safe(problem)}")
        echo("recent errors:")
        if logs["file"] and not logs["note"]:
            errs = logs["errors"]
            echo(f"  {len(errs)} in the last {logs['scanned']} line(s) of {safe(logs['file'])}")
            for line in errs[-show_errors:] if show_errors else []:
                echo(f"  {safe(line)}")
        else:
            echo(f"  {safe(logs['note'])}")
        echo("store:")
        sizes = f": {_size(store['db_bytes'])} + WAL {_size(store['wal_bytes'])}" if store["local"] else ""
        inline = (f" (messages up to {_size(store['inline_max'])} are kept in the database)"
                  if store["inline_max"] else "")
        echo(f"  {safe(store['path'])}{sizes}; "
             f"{safe(store['messages_dir'])}: {_size(store['messages_dir_bytes'])} in {store['message_files']} "
             f"file(s){inline}")
        if store["counts"]:
            echo("  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in store["counts"].items()))
        if store["error"]:
            echo(f"  cannot read the store: {safe(store['error'])}")
    if down:
        echo("mattermailctl: status: unreachable: "
             + "; ".join(f"{d.name} ({safe(d.address)}: {safe(d.detail)})" for d in down), err=True)
        click.get_current_context().exit(1)
