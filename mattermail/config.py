"""The one TOML config file, loaded once into frozen, typed dataclasses.

Path: ``--config`` on the command line, else ``$MATTERMAIL_CONFIG``, else
``/etc/mattermail/mattermail.toml``. Unknown keys and values of the wrong type
or out of range are errors that name the key and the file; daemons turn such
an error into one log line and exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/mattermail/mattermail.toml")
ENV_VAR = "MATTERMAIL_CONFIG"
EX_CONFIG = 78


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and key."""


def _socket_spec(value: str) -> str:
    """Check a socket spec: ``unix:/path``, ``inet:HOST:PORT`` or ``HOST:PORT``."""
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ValueError("unix socket path must be absolute")
        return value
    rest = value[5:] if value.startswith("inet:") else value
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected unix:/path or inet:HOST:PORT")
    return value


def _host_port(value: str) -> str:
    """Check ``HOST:PORT`` (``[v6]:PORT`` too)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return value


_DOMAIN = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\.?")


def _network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


@dataclass(frozen=True)
class General:
    hostname: str = "localhost"
    # authserv-id of our Authentication-Results headers; defaults to hostname.
    authserv_id: str = ""
    sending_domains: tuple[str, ...] = ()
    catchall_domains: tuple[str, ...] = ()
    # Daemons started as root bind their sockets, then switch to this user (and its groups)
    # before serving; mattermailctl run as root switches to it for everything but Postfix
    # wiring. "" = keep running as started (the dev stack).
    user: str = "mattermail"

    _validators = {"user": lambda v: v if v == "" or v.replace("-", "").replace("_", "").isalnum()
                   else _bad("a user name")}


MAX_MILTER_WORKERS = 64


@dataclass(frozen=True)
class Milter:
    socket: str = "unix:/run/mattermail/milter.sock"
    timeout: int = 60
    # Processes accepting Postfix's connections on the one socket, each with its own Python
    # interpreter (so its own GIL, DNS cache and store connections); 0: one per CPU the process
    # may run on; 1: no worker processes.
    workers: int = 0
    trusted_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # Submission: a From/Sender/Resent-* display name naming an address the login does not own
    # ("ceo@firm" <alice@firm>): "refuse" (553 5.7.1) or "off".
    display_name_check: str = "refuse"

    _validators = {"socket": _socket_spec, "trusted_networks": _network,
                   "workers": lambda v: v if 0 <= v <= MAX_MILTER_WORKERS
                   else _bad(f"0 (one per CPU) to {MAX_MILTER_WORKERS} processes"),
                   "display_name_check": lambda v: v if v in ("refuse", "off") else _bad("refuse or off")}


@dataclass(frozen=True)
class Router:
    # LMTP listeners: unix:/path and/or HOST:PORT (several edges may deliver over TCP).
    listen: tuple[str, ...] = ("unix:/run/mattermail/lmtp.sock",)
    # Local parts of matter addresses (searched case-insensitively); group 1 is the matter id.
    matter_patterns: tuple[str, ...] = (r"^(\d+)$", r"^m-(\d+)$")
    # Matter references in the Subject (searched case-insensitively); group 1 is the matter id.
    subject_patterns: tuple[str, ...] = (r"\[M-(\d+)\]", r"\bMatter (\d+)\b", r"id=[^:\s]+:(\d+)")
    # Mail without an LMTP envelope (imports): headers naming the recipient, tried in this order.
    catchall_headers: tuple[str, ...] = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received")
    # How many of the topmost instances of each such header our own MTA wrote (0 trusts none).
    trusted_hops: int = 1
    # Unfiled mail is forwarded here with the reason ("" keeps it in the store only).
    failed_mail_address: str = ""
    # Capture copies with no known correspondent: false = personal (kept, not filed, no alarm);
    # true = unfiled like any other unmatched mail (and forwarded to failed_mail_address).
    file_personal: bool = False
    # Subject-only threading (rule thread-subject): mail that no other rule gave a matter files to the matter
    # of the latest filed message with the same subject, Re:/Fwd: prefixes stripped. Off: subjects repeat.
    thread_subject: bool = False
    # Seconds the background indexer waits after a delivery before indexing it for search (0: at once);
    # the start-up catch-up never waits. For tests that need mail stored but not yet indexed.
    index_delay: int = 0
    # How a batch of delivered messages is made durable before its commit and 250: "syncfs" flushes the
    # store's file system once per batch (every message file and rename in it); "fsync" flushes each file
    # and each hash directory (for a store on a file system that other programs write heavily to).
    sync: str = "syncfs"

    @staticmethod
    def _one_group(value: str) -> str:
        import re

        try:
            groups = re.compile(value).groups
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one group (the matter id), has {groups}")
        return value

    _validators = {
        "listen": _socket_spec,
        "matter_patterns": _one_group,
        "subject_patterns": _one_group,
        "catchall_headers": lambda v: v if v and all(c.isalnum() or c == "-" for c in v) else _bad("a header name"),
        "trusted_hops": lambda v: v if v <= 100 else _bad("0 to 100"),
        "failed_mail_address": lambda v: v if v == "" or v.count("@") == 1 else _bad("an email address"),
        "index_delay": lambda v: v if v <= 3600 else _bad("0 to 3600 seconds"),
        "sync": lambda v: v if v in ("syncfs", "fsync") else _bad("syncfs or fsync"),
    }


@dataclass(frozen=True)
class Store:
    path: Path = Path("/var/lib/mattermail/store.sqlite")
    messages_dir: Path = Path("/var/lib/mattermail/messages")
    # "postgresql://user:password@host:port/dbname": the database on a PostgreSQL server instead of the
    # SQLite file at ``path`` (ignored then). Raw message files stay in messages_dir on this host.
    url: str = ""
    # A message of at most this many bytes is kept inside the database (its row), not in a file of its own
    # under messages_dir: no file to create and flush per message. 0: every message in a file. At most 256 KiB
    # (what the router keeps in memory while it receives a message; a larger one is spooled to a file).
    inline_max: int = 32768

    _validators = {
        "url": lambda v: v if v == "" or v.startswith(("postgresql://", "postgres://"))
        else _bad("empty (the SQLite file at store.path) or a postgresql:// URL"),
        "inline_max": lambda v: v if 0 <= v <= 1 << 18 else _bad("a number of bytes from 0 to 262144"),
    }

    @property
    def location(self) -> Path | str:
        """What :class:`mattermail.store.Store` opens: the URL when set, else the SQLite file."""
        return self.url or self.path

    @property
    def where(self) -> str:
        """The store as messages name it: the file, or the URL without its password."""
        if not self.url:
            return str(self.path)
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return self.url.replace(f":{parts.password}@", ":***@", 1) if parts.password else self.url


@dataclass(frozen=True)
class Auth:
    # passwd-file that Dovecot's passdb reads; mattermailctl user rewrites it.
    passwd_file: Path = Path("/var/lib/mattermail/dovecot-users")
    # Group the passwd-file (0640) is given to, so Dovecot's auth service can read it:
    # "dovecot" (its user's group); the Debian package uses a group of its own,
    # "mattermail-auth", joined by Dovecot with extra_groups. Absent group: left as is.
    passwd_group: str = "dovecot"
    # Postfix smtpd_sender_login_maps source (address -> logins); rewritten and
    # postmap'ed with the passwd-file. Use it as hash:<this path>.
    sender_login_map: Path = Path("/var/lib/mattermail/sender-login-map")


@dataclass(frozen=True)
class DNS:
    # Empty: the system resolver's nameservers (from /etc/resolv.conf).
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0
    # Answers kept in memory for their TTL (positive and negative), per process; 0 disables.
    cache_size: int = 10000

    _validators = {
        "nameservers": lambda v: str(ipaddress.ip_address(v)),
        "port": lambda v: v if 0 < v < 65536 else _bad("a port number 1-65535"),
    }


@dataclass(frozen=True)
class DKIM:
    # Keys as <keys_dir>/<domain>/<selector>.<rsa|ed25519>.pem (see mattermail.dkimkeys).
    keys_dir: Path = Path("/etc/mattermail/dkim")
    # Sign mail from sub.firm.example with firm.example's key (aligns under relaxed DMARC).
    sign_subdomains: bool = True


def _pattern(value: str) -> str:
    import re

    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a regular expression: {e}") from None
    return value


@dataclass(frozen=True)
class Capture:
    # Every outbound message gets this extra envelope recipient ("" disables capture).
    address: str = ""
    # Secret for the HMAC that signs the envelope reference in the capture address.
    secret_file: Path = Path("/etc/mattermail/capture.key")
    # When capture is impossible: "tempfail" (nothing leaves uncaptured) or "accept".
    on_failure: str = "tempfail"
    # Regular expressions (case-insensitive, searched) for senders / recipients never captured.
    exclude_senders: tuple[str, ...] = ()
    exclude_recipients: tuple[str, ...] = ()
    # Inbound mail to the firm's users (not to the catch-all domain), after SPF/DKIM/DMARC accepted it:
    # "off"; "known" (a copy is captured, the router keeps it only when a rule files it: a known
    # correspondent, a thread, a subject tag; the rest is dropped unstored); "all" (kept, personal if unfiled).
    inbound: str = "known"

    _validators = {
        "on_failure": lambda v: v if v in ("tempfail", "accept") else _bad("tempfail or accept"),
        "inbound": lambda v: v if v in ("off", "known", "all") else _bad("off, known or all"),
        "exclude_senders": _pattern,
        "exclude_recipients": _pattern,
        "address": lambda v: v if v == "" or v.count("@") == 1 else _bad("an email address"),
    }


@dataclass(frozen=True)
class Inbound:
    # SPF "fail" (never applied when DMARC passed, RFC 7489 10.1): "reject" (550 5.7.23) or "tag".
    spf_fail: str = "reject"
    # DMARC quarantine: "hold" (Postfix hold queue) or "tag" (deliver with the result).
    dmarc_quarantine: str = "hold"
    # DNS timeout/SERVFAIL while authenticating: "tempfail" (451 4.4.3) or "accept" (tagged temperror).
    on_temperror: str = "tempfail"
    # Forwarders (networks) whose mail is exempt from SPF/DMARC rejection (tagged instead).
    trusted_forwarders: tuple[str, ...] = ()
    # The same for mail carrying a valid ARC chain whose newest set one of these authserv-ids sealed.
    trusted_arc_authserv_ids: tuple[str, ...] = ()
    # Seconds the whole SPF evaluation may take; keep it below Postfix's milter_command_timeout (30 s).
    spf_timeout: float = 20.0
    # RSA DKIM keys shorter than this count as a policy failure (RFC 8301).
    min_rsa_bits: int = 1024
    # No usable author address (no From:, or one without local@domain): "reject" (550 5.7.1) or
    # "tag" (delivered, dmarc=permerror). Bounces (null sender) showing no address are always accepted.
    invalid_from: str = "reject"
    # From: display name showing a sending_domains address on mail from outside:
    # "tag" (noted in Authentication-Results), "reject" (550 5.7.1) or "off".
    display_name_spoof: str = "tag"
    # ARC-seal (RFC 8617) accepted mail that a virtual alias forwards outside the firm's domains.
    arc_seal: bool = False
    # d= of the ARC set: a domain with an RSA key in dkim.keys_dir ("": the first of general.sending_domains).
    arc_domain: str = ""

    _validators = {
        "spf_fail": lambda v: v if v in ("reject", "tag") else _bad("reject or tag"),
        "dmarc_quarantine": lambda v: v if v in ("hold", "tag") else _bad("hold or tag"),
        "on_temperror": lambda v: v if v in ("tempfail", "accept") else _bad("tempfail or accept"),
        "trusted_forwarders": _network,
        "min_rsa_bits": lambda v: v if v >= 512 else _bad("at least 512"),
        "invalid_from": lambda v: v if v in ("reject", "tag") else _bad("reject or tag"),
        "display_name_spoof": lambda v: v if v in ("tag", "reject", "off") else _bad("tag, reject or off"),
        "arc_domain": lambda v: v.lower().rstrip(".") if v == "" or _DOMAIN.fullmatch(v) else _bad("a domain name"),
    }


@dataclass(frozen=True)
class SRS:
    # Socketmap listener of mattermail-srs (its own daemon) for Postfix ("" disables SRS): HOST:PORT or unix:/path.
    listen: str = ""
    # The domain SRS addresses are made in (one of ours, with SPF allowing this server).
    domain: str = ""
    secret_file: Path = Path("/etc/mattermail/srs.key")
    # Bounces to SRS addresses older than this are refused.
    validity_days: int = 21

    _validators = {
        "listen": lambda v: v if v == "" else _socket_spec(v),
        "validity_days": lambda v: v if 1 <= v <= 365 else _bad("1 to 365 days"),
    }


@dataclass(frozen=True)
class Postfix:
    # The Postfix instance mattermail works with (postmap -c, postfix configure).
    config_dir: Path = Path("/etc/postfix")
    # Where its submission service (STARTTLS + AUTH) listens: mattermailctl test-send connects here.
    submission: str = "127.0.0.1:587"

    _validators = {"submission": lambda v: _host_port(v)}


@dataclass(frozen=True)
class Web:
    # mattermail-web (the web view and JSON API): HOST:PORT it listens on. Loopback by default: put a TLS
    # reverse proxy in front of it for people on other machines.
    listen: str = "127.0.0.1:8025"
    # The session cookie's Secure flag: true (the browser sends it over HTTPS only, as behind the proxy);
    # false only for a dev stack reached over plain http on loopback.
    cookie_secure: bool = True
    # A web session ends this many hours after sign-in.
    session_hours: int = 12
    # Messages per page in the web view and the API's default (the API's per_page may ask for up to 500).
    page_size: int = 50

    _validators = {
        "listen": lambda v: _host_port(v),
        "session_hours": lambda v: v if 1 <= v <= 24 * 30 else _bad("1 to 720 hours"),
        "page_size": lambda v: v if 1 <= v <= 500 else _bad("1 to 500"),
    }


@dataclass(frozen=True)
class Log:
    level: str = "info"
    # Also send each line to syslog (facility mail), as Postfix does; stderr (journald) always.
    syslog: bool = False
    syslog_socket: Path = Path("/dev/log")

    _validators = {
        "level": lambda v: v if v in ("debug", "info", "warning", "error") else _bad("one of debug, info, warning, error")
    }


def _bad(expected: str) -> typing.NoReturn:
    raise ValueError(f"expected {expected}")


@dataclass(frozen=True)
class Config:
    general: General = field(default_factory=General)
    milter: Milter = field(default_factory=Milter)
    router: Router = field(default_factory=Router)
    store: Store = field(default_factory=Store)
    auth: Auth = field(default_factory=Auth)
    dns: DNS = field(default_factory=DNS)
    dkim: DKIM = field(default_factory=DKIM)
    capture: Capture = field(default_factory=Capture)
    inbound: Inbound = field(default_factory=Inbound)
    srs: SRS = field(default_factory=SRS)
    postfix: Postfix = field(default_factory=Postfix)
    web: Web = field(default_factory=Web)
    log: Log = field(default_factory=Log)
    source: Path | None = None

    @property
    def authserv_id(self) -> str:
        return self.general.authserv_id or self.general.hostname


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and check the config file; raise ConfigError naming the file and key."""
    p = resolve_path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found (set --config or ${ENV_VAR})") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied reading config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return from_dict(raw, source=p)


def from_dict(raw: dict[str, Any], source: Path | None = None) -> Config:
    where = str(source) if source else "<config>"
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for key, value in raw.items():
        if key not in hints or key == "source":
            raise ConfigError(f"{where}: unknown section [{key}] (known: {', '.join(_sections())})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}] must be a table")
        sections[key] = _build(hints[key], value, key, where)
    return Config(**sections, source=source)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "source"]


def _build(cls: type, raw: dict[str, Any], section: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    validators: dict[str, Any] = getattr(cls, "_validators", {})
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{section}.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key {name} (known: {', '.join(sorted(known))})")
        try:
            kwargs[key] = _coerce(hints[key], value, validators.get(key))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: bad value for {name}: {e}") from None
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, check: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(item, v, check) for v in value)
    if origin in (types.UnionType, typing.Union):
        raise TypeError("unsupported")  # pragma: no cover - no optional keys yet
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise TypeError("expected a path string")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if value < 0:
            raise ValueError("must not be negative")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        if value <= 0:
            raise ValueError("must be positive")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
    if check is not None:
        try:
            value = check(value)
        except ValueError as e:
            raise ValueError(f"{value!r}: {e}") from None
    return value
