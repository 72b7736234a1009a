"""What mattermail needs in an existing Postfix's main.cf and master.cf, and applying it.

Two steps, so the policy is testable without touching Postfix:

* :func:`desired_settings` turns the mattermail config into the settings it
  needs (``main``: parameter -> our value; ``master``: service entries; and the
  mattermail transport table). List-valued parameters hold only *our* items:
  :func:`apply` merges them into the admin's current value (``relay_domains``
  keeps existing domains, ``transport_maps`` gets our table in front, ...).
* :func:`apply` reads the instance with ``postconf``, computes what differs
  and, unless it is a dry run, backs up main.cf and master.cf, edits them with
  ``postconf -e`` / ``-M`` / ``-F`` / ``-P`` (which keep the admin's comments),
  runs ``postfix check`` and restores the originals if it fails. A second run
  finds nothing to change and writes nothing.

Edges (``--edge --router HOST:PORT``): a Postfix host with its own milter whose
catch-all mail and capture copies go to the router on another host over
LMTP/TCP (``lmtp:inet:HOST:PORT``), not to a local ``router.listen`` socket.
Nothing of the router runs on an edge; SRS maps are wired only when the edge's
config has ``[srs] listen``. The edge's milter records envelopes in the shared
database (``[store] url``), which is why an edge without one is warned about.

Chroot: Debian runs smtpd, cleanup and lmtp chrooted in the queue directory, so
a unix socket they use (milter, LMTP router, SRS socketmap) must live under it
and is written relative to it (``unix:/var/spool/postfix/mattermail/milter.sock``
in mattermail's config is ``unix:/mattermail/milter.sock`` in main.cf).

Size: over 400 lines because main.cf and master.cf each need reading, merging and rollback;
the policy (desired_settings) and the editing (apply) are its two halves.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import pty
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mattermail.atomicfile import write_atomic
from mattermail.config import Config
from mattermail.srs import local_domains as srs_local_domains

DEFAULT_SPOOL = "/var/spool/postfix"
TRANSPORT_FILE = "mattermail-transport"
SRS_SENDERS_FILE = "mattermail-srs-senders"  # regexp: tables in the SRS pipemaps (srs_filters)
SRS_RECIPIENTS_FILE = "mattermail-srs-recipients"

CONNECT_MACROS = "j {daemon_name} {daemon_addr} {daemon_port} {client_addr} v _"
MAIL_MACROS = "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}"

# How our value combines with the admin's current one (default: replace).
APPEND = "append"  # current items, then ours that are missing
PREPEND = "prepend"  # ours first (when missing), then the current items
MACROS = "macros"  # union of macro names
MILTERS_FOR_NON_SMTPD = "non_smtpd"  # "$smtpd_milters" unless it already has ours
MERGE: dict[str, str] = {
    "relay_domains": APPEND,
    "smtpd_milters": APPEND,
    "sender_canonical_maps": APPEND,
    "recipient_canonical_maps": APPEND,
    "transport_maps": PREPEND,
    "smtpd_recipient_restrictions": PREPEND,
    "milter_connect_macros": MACROS,
    "milter_mail_macros": MACROS,
    "non_smtpd_milters": MILTERS_FOR_NON_SMTPD,
}

MASTER_FIELDS = ("private", "unprivileged", "chroot", "wakeup", "process_limit", "command")


class PostfixConfError(Exception):
    """Something the admin must fix; the message is one line and names the problem."""


@dataclass(frozen=True)
class MasterEntry:
    service: str
    type: str
    private: str
    unprivileged: str
    chroot: str
    wakeup: str
    process_limit: str
    command: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.service}/{self.type}"

    def line(self) -> str:
        return " ".join((self.service, self.type, self.private, self.unprivileged, self.chroot,
                         self.wakeup, self.process_limit, self.command))


@dataclass
class Settings:
    """What mattermail needs. Unpacks as ``main, master = desired_settings(cfg)``."""

    main: dict[str, str]
    master: list[MasterEntry]
    files: dict[Path, str] = field(default_factory=dict)  # tables we own: path -> content
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[object]:
        return iter((self.main, self.master))


@dataclass
class Change:
    config_dir: Path
    changes: list[str] = field(default_factory=list)  # one human line per setting changed
    diff: str = ""
    backups: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)


# ---------------------------------------------------------------- desired settings


def _under_spool(path: str, spool: str) -> str | None:
    """``/X`` for a path inside the spool, None outside it."""
    p, s = PurePosixPath(os.path.normpath(path)), PurePosixPath(os.path.normpath(spool))
    try:
        rel = p.relative_to(s)
    except ValueError:
        return None
    return None if str(rel) == "." else f"/{rel}"


def _endpoint(spec: str, key: str, spool: str, chrooted: list[bool], suggestion: str) -> str:
    """Postfix notation (``unix:/path`` or ``inet:host:port``) for a mattermail socket spec.

    ``chrooted`` holds the chroot flags of the Postfix services that connect to it.
    """
    if not spec.startswith("unix:"):
        rest = spec.removeprefix("inet:")
        host, _, port = rest.rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
        return f"inet:{host}:{port}"
    path = spec[5:]
    if not any(chrooted):
        return spec
    if not all(chrooted):
        raise PostfixConfError(
            f"{key}: {spec} is a unix socket, but the Postfix services that use it are chrooted in some "
            f"master.cf entries and not in others; make them alike or use an inet socket ({suggestion})"
        )
    inside = _under_spool(path, spool)
    if inside is None:
        base = PurePosixPath(path).name or "mattermail.sock"
        raise PostfixConfError(
            f"{key}: {spec} is outside the Postfix spool {spool}, which chrooted Postfix daemons cannot reach; "
            f"use unix:{spool}/mattermail/{base} (or {suggestion})"
        )
    return f"unix:{inside}"


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def router_nexthop(spec: str, option: str = "--router") -> str:
    """Postfix's LMTP destination (``inet:host:port``, ``inet:[ipv6:addr]:port``) for a router's ``HOST:PORT``.

    Raises PostfixConfError naming ``option`` for anything else: a unix socket, no port, a wildcard address.
    """
    example = f"{option}: expected the router host's LMTP address as HOST:PORT (its router.listen), " \
              "e.g. router.lawfirm.example:2424, 192.0.2.10:2424 or [2001:db8::10]:2424"
    value = spec.strip()
    if value.startswith("unix:"):
        raise PostfixConfError(f"{option}: {spec!r} is a unix socket, which another host cannot reach; "
                               + example.split(": ", 1)[1])
    value = value.removeprefix("inet:")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PostfixConfError(f"{example}; got {spec!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            addr = ipaddress.IPv6Address(host[1:-1].removeprefix("ipv6:"))
        except ValueError:
            raise PostfixConfError(f"{option}: {host} is not an IPv6 address; {example.split(': ', 1)[1]}") from None
        if addr.is_unspecified:
            raise PostfixConfError(f"{option}: {spec!r} is a wildcard; name the router host's address")
        return f"inet:[ipv6:{addr.compressed}]:{int(port)}"
    if ":" in host:
        raise PostfixConfError(f"{option}: an IPv6 address needs brackets, as [{host}]:{port}; got {spec!r}")
    try:
        addr4 = ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise PostfixConfError(f"{option}: {host!r} is not a host name or address; "
                                   f"{example.split(': ', 1)[1]}") from None
        return f"inet:{host.lower().rstrip('.')}:{int(port)}"
    if addr4.is_unspecified:
        raise PostfixConfError(f"{option}: {spec!r} is a wildcard; name the router host's address")
    return f"inet:{addr4}:{int(port)}"


def desired_settings(
    cfg: Config,
    *,
    config_dir: str | os.PathLike[str] | None = None,
    queue_directory: str = DEFAULT_SPOOL,
    chroot: Mapping[str, bool | None] | None = None,
    edge_router: str | None = None,
) -> Settings:
    """The main.cf / master.cf settings mattermail needs, for a Postfix with this spool.

    ``chroot`` maps role -> chrooted for ``smtpd``, ``cleanup`` and ``lmtp``
    (default: all chrooted, as in Debian's master.cf; None: some services of
    that role are chrooted, others not). ``edge_router``: this Postfix is an
    edge, delivering catch-all mail and capture copies to the router at that
    ``HOST:PORT`` over LMTP/TCP (``router.listen`` is not consulted). Raises
    PostfixConfError naming the mattermail config key (or ``--router``) that
    Postfix cannot use.
    """
    roles: dict[str, bool | None] = {"smtpd": True, "cleanup": True, "lmtp": True, **(chroot or {})}

    def flags(*names: str) -> list[bool]:
        return [f for n in names for f in ([True, False] if roles[n] is None else [bool(roles[n])])]

    conf_dir = Path(config_dir) if config_dir is not None else cfg.postfix.config_dir
    spool = queue_directory
    main: dict[str, str] = {}
    files: dict[Path, str] = {}

    milter = _endpoint(cfg.milter.socket, "milter.socket", spool, flags("smtpd", "cleanup"), "inet:127.0.0.1:8894")
    main["smtpd_milters"] = milter
    main["non_smtpd_milters"] = "$smtpd_milters"
    main["milter_default_action"] = "tempfail"
    main["milter_protocol"] = "6"
    main["milter_connect_macros"] = CONNECT_MACROS
    main["milter_mail_macros"] = MAIL_MACROS

    domains = [d.strip().lower().rstrip(".") for d in cfg.general.catchall_domains if d.strip()]
    warnings: list[str] = []
    if edge_router is not None:
        edge_nexthop = router_nexthop(edge_router)
        if not domains:
            raise PostfixConfError("general.catchall_domains: empty, but an edge exists to send catch-all mail and "
                                   "capture copies to the router: list the catch-all domains (the capture "
                                   "address's among them)")
        if not cfg.store.url:
            warnings.append("store.url: empty, so this edge's milter records capture envelopes in the local file "
                            f"{cfg.store.path}, which the router never reads: set [store] url to the shared "
                            "postgresql:// database")
    if domains:
        nexthop = edge_nexthop if edge_router is not None else None
        problems = []
        for spec in () if nexthop is not None else cfg.router.listen:
            try:
                nexthop = _endpoint(spec, "router.listen", spool, flags("lmtp"), "127.0.0.1:2424")
                break
            except PostfixConfError as e:
                problems.append(str(e))
        if nexthop is None:
            raise PostfixConfError(problems[0] if problems else
                                   "router.listen: empty, but catch-all domains need the router's LMTP address")
        table = conf_dir / TRANSPORT_FILE
        files[table] = (
            ("# Catch-all domains -> the central mattermail-router over LMTP/TCP (this host is an edge).\n"
             if edge_router is not None else "# Catch-all domains -> mattermail-router over LMTP.\n")
            + "# Written by `mattermailctl postfix configure`; edits here are overwritten.\n"
            + "".join(f"{d}\tlmtp:{nexthop}\n" for d in domains)
        )
        main["relay_domains"] = ", ".join(domains)
        main["transport_maps"] = f"texthash:{table}"

    if cfg.srs.listen:
        sock = _endpoint(cfg.srs.listen, "srs.listen", spool, flags("smtpd", "cleanup"), "127.0.0.1:10001")
        senders, recipients = conf_dir / SRS_SENDERS_FILE, conf_dir / SRS_RECIPIENTS_FILE
        files[senders], files[recipients] = srs_filters(cfg)
        main["sender_canonical_maps"] = srs_map(senders, f"socketmap:{sock}:srs_forward")
        main["sender_canonical_classes"] = "envelope_sender"
        main["recipient_canonical_maps"] = srs_map(recipients, f"socketmap:{sock}:srs_reverse")
        main["recipient_canonical_classes"] = "envelope_recipient"
        main["smtpd_recipient_restrictions"] = \
            f"check_recipient_access {srs_map(recipients, f'socketmap:{sock}:srs_check')}"

    main["smtpd_sasl_type"] = "dovecot"
    main["smtpd_sasl_path"] = "private/auth"

    submission = MasterEntry(
        "submission", "inet", "n", "-", "n" if roles["smtpd"] is False else "y", "-", "-", "smtpd",
        options=(
            ("syslog_name", "postfix/submission"),
            ("smtpd_tls_security_level", "encrypt"),
            ("smtpd_sasl_auth_enable", "yes"),
            ("smtpd_tls_auth_only", "yes"),
            ("smtpd_client_restrictions", "permit_sasl_authenticated,reject"),
            ("smtpd_sender_login_maps", f"hash:{cfg.auth.sender_login_map}"),
            ("smtpd_sender_restrictions", "reject_sender_login_mismatch"),
            ("smtpd_relay_restrictions", "permit_sasl_authenticated,reject"),
            ("smtpd_recipient_restrictions", "permit_sasl_authenticated,reject"),
        ),
    )
    return Settings(main=main, master=[submission], files=files, warnings=warnings)


# ---------------------------------------------------------------- merging with current values


def split_list(value: str) -> list[str]:
    """Postfix list items: separated by whitespace or commas, ``{...}`` kept whole."""
    items: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        if depth == 0 and (ch.isspace() or ch == ","):
            if cur:
                items.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        items.append("".join(cur))
    return items


def _ere_domain(domain: str) -> str:
    """A domain as a POSIX extended regular expression matching it literally (dots escaped); "" for a name
    with anything but letters, digits, hyphens and inner dots: the filter leaves such a domain out, so its
    addresses go on to the daemon, which decides (a lookup more, never a different answer)."""
    d = domain.lower()
    return d.replace(".", "\\.") if re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", d) else ""


def srs_map(filter_table: Path, socketmap: str) -> str:
    """One of our SRS socketmaps behind its filter: ``pipemap:{regexp:FILTER, socketmap:...}``. Postfix asks
    the filter first; only an address it passes on reaches mattermail-srs, and one it does not pass is
    simply not found, as the daemon would answer (so smtpd's unknown-recipient check is unchanged)."""
    return f"pipemap:{{regexp:{filter_table}, {socketmap}}}"


def srs_filters(cfg: Config) -> tuple[str, str]:
    """The two ``regexp:`` tables of :func:`srs_map` (sender; recipient, also for ``srs_check``).

    Each passes on, unchanged, only the addresses mattermail-srs may answer with something other than
    NOTFOUND: a sender outside the firm's domains (``srs_forward`` rewrites foreign senders only), a
    recipient in ``srs.domain`` (``srs_reverse`` and ``srs_check`` concern SRS addresses of it only). So the
    firm's own outbound mail and mail to its users cost the daemon no lookup and do not wait on it.
    Regexp tables match without regard to case, as the daemon compares domains. Written from
    ``general.sending_domains``, ``general.catchall_domains`` and ``srs.domain``: run ``postfix configure``
    again after changing them (a domain added meanwhile is only asked about needlessly)."""
    head = "# Written by `mattermailctl postfix configure`; edits here are overwritten.\n"
    local = sorted({_ere_domain(d) for d in srs_local_domains(cfg)} - {""})  # the daemon's own set
    senders = head + "# Senders outside the firm's domains go on to mattermail-srs (srs_forward rewrites them).\n"
    pass_on = "/^(.+@.+)$/\t${1}\n"
    senders += f"if !/@({'|'.join(local)})$/\n{pass_on}endif\n" if local else pass_on
    srs_domain = _ere_domain(cfg.srs.domain)
    recipients = head + "# Recipients in srs.domain go on to mattermail-srs (srs_reverse, srs_check).\n"
    recipients += f"/^(.+@{srs_domain})$/\t${{1}}\n" if srs_domain else pass_on  # (no domain: all, as before)
    return senders, recipients


def _older_srs_forms(current: str, ours: list[str]) -> str:
    """``current`` with a bare SRS socketmap of ours (as an older mattermail wired it, or an admin) replaced
    in place by our pipemap around it, the rest of the text as it was: the daemon is then asked through the
    filter only, once."""
    for o in ours:
        m = re.fullmatch(r"pipemap:\{regexp:[^,{}]+,\s*(socketmap:[^{}]+)\}", o)
        if m:
            bare = re.escape(m.group(1).strip())
            current = re.sub(rf"(?<![^\s,]){bare}(?![^\s,])", lambda _: o, current, flags=re.IGNORECASE)
    return current


def _contains(items: list[str], ours: list[str]) -> bool:
    low = [i.lower() for i in items]
    want = [o.lower() for o in ours]
    n = len(want)
    return any(low[i:i + n] == want for i in range(len(low) - n + 1))


def merge_value(name: str, current: str, ours: str, milter: str = "") -> str:
    """The value ``name`` should have, given its current (raw) value and our part.

    ``milter`` is our smtpd_milters entry (for non_smtpd_milters).
    """
    rule = MERGE.get(name)
    current = _older_srs_forms(current, split_list(ours))
    cur_items = split_list(current)
    if rule == APPEND:
        missing = [o for o in split_list(ours) if not _contains(cur_items, [o])]
        if not missing:
            return current
        return ", ".join(([current.strip()] if current.strip() else []) + missing)
    if rule == PREPEND:
        if _contains(cur_items, split_list(ours)):
            return current
        return ", ".join([ours] + ([current.strip()] if current.strip() else []))
    if rule == MACROS:
        want = split_list(ours)
        extra = [m for m in cur_items if m not in want]
        if not extra and set(cur_items) >= set(want):
            return current
        return " ".join(want + extra)
    if rule == MILTERS_FOR_NON_SMTPD:
        if not cur_items:
            return ours
        if any(i in ("$smtpd_milters", "${smtpd_milters}", "$(smtpd_milters)") for i in cur_items) \
                or (milter and _contains(cur_items, [milter])):
            return current
        return f"{current.strip()}, {milter}" if milter else current
    return ours


# ---------------------------------------------------------------- talking to Postfix


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise PostfixConfError(f"{name} not found: is Postfix installed?")
    return path


def _postconf(config_dir: Path, *args: str) -> str:
    r = subprocess.run([_tool("postconf"), "-c", str(config_dir), *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()
        raise PostfixConfError(f"postconf {' '.join(args[:2])}: {msg[-1] if msg else f'exit {r.returncode}'}")
    return r.stdout


def _name_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" =")
        if sep:
            out[name.strip()] = value.removeprefix(" ")
    return out


def postfix_check(config_dir: Path) -> tuple[bool, str]:
    """Run ``postfix -c DIR check``; (ok, message).

    postfix(1) prints its errors on stderr only when that is a terminal
    (otherwise they go to syslog alone), so stderr is a pseudo-terminal here.
    """
    cmd = [_tool("postfix"), "-c", str(config_dir), "check"]
    try:
        master, slave = pty.openpty()
    except OSError:
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        return r.returncode == 0, (r.stderr or r.stdout).strip()
    try:
        r = subprocess.run(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, check=False)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").strip()
    return r.returncode == 0, text


@dataclass
class Instance:
    """What postconf says about one Postfix instance."""

    config_dir: Path
    explicit: dict[str, str]  # postconf -n
    services: dict[str, dict[str, str]]  # "smtp/inet" -> field -> value (postconf -F)

    @classmethod
    def read(cls, config_dir: Path) -> Instance:
        for f in ("main.cf", "master.cf"):
            if not (config_dir / f).is_file():
                raise PostfixConfError(f"--config-dir: {config_dir} has no {f} (is it a Postfix config directory?)")
        explicit = _name_values(_postconf(config_dir, "-n"))
        services: dict[str, dict[str, str]] = {}
        for key, value in _name_values(_postconf(config_dir, "-F")).items():
            svc, _, fld = key.rpartition("/")
            services.setdefault(svc, {})[fld] = value
        return cls(config_dir, explicit, services)

    def values(self, names: list[str], expand: bool = False) -> dict[str, str]:
        if not names:
            return {}
        return _name_values(_postconf(self.config_dir, *(["-x"] if expand else []), *names))

    def options(self, service: str) -> dict[str, str]:
        if service not in self.services:
            return {}
        prefix = service + "/"
        return {k[len(prefix):]: v for k, v in _name_values(_postconf(self.config_dir, "-P", service)).items()
                if k.startswith(prefix)}

    def chrooted(self, role: str) -> bool | None:
        """Whether the services running ``role`` are chrooted (None: some are, some not)."""
        flags = [f.get("chroot") == "y"  # "-" is n since Postfix 3.0
                 for name, f in self.services.items()
                 if f.get("command", "").split()[:1] == [role] and (role != "lmtp" or name == "lmtp/unix")]
        if role == "smtpd" and "submission/inet" not in self.services:
            smtp = self.services.get("smtp/inet")  # our new submission service copies its chroot flag
            flags.append(smtp is None or smtp.get("chroot") == "y")
        if not flags:
            return True
        return flags[0] if len(set(flags)) == 1 else None


def settings_for(cfg: Config, config_dir: Path, edge_router: str | None = None) -> Settings:
    """desired_settings for the instance in ``config_dir`` (its spool and chroot flags)."""
    inst = Instance.read(config_dir)
    spool = inst.values(["queue_directory"], expand=True).get("queue_directory") or DEFAULT_SPOOL
    settings = desired_settings(cfg, config_dir=config_dir, queue_directory=spool,
                                chroot={r: inst.chrooted(r) for r in ("smtpd", "cleanup", "lmtp")},
                                edge_router=edge_router)
    login_db = Path(f"{cfg.auth.sender_login_map}.db")
    if not login_db.exists():
        settings.warnings.append(f"auth.sender_login_map: {login_db} does not exist yet; the submission service "
                                 "defers mail (4xx) until `mattermailctl user add` creates it")
    return settings


# ---------------------------------------------------------------- planning and applying


@dataclass
class _Plan:
    main: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name -> (old or None: unset, new)
    new_entries: list[MasterEntry] = field(default_factory=list)
    fields: dict[str, tuple[str, str]] = field(default_factory=dict)  # svc/type/field -> (old, new)
    options: dict[str, tuple[str, str]] = field(default_factory=dict)  # svc/type/name -> (old, new)
    files: dict[Path, tuple[str | None, str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"main.cf: {n} = {new}  (was {'unset' if old is None else repr(old)})"
               for n, (old, new) in self.main.items()]
        out += [f"master.cf: new service {e.line()}" for e in self.new_entries]
        out += [f"master.cf: {k} = {new}  (was {old!r})" for k, (old, new) in self.fields.items()]
        out += [f"master.cf: {k.rsplit('/', 1)[0]} -o {k.rsplit('/', 1)[1]}={new}"
                + (f"  (was {old!r})" if old else "") for k, (old, new) in self.options.items()]
        out += [f"{'new file' if old is None else 'rewrote'} {p}" for p, (old, _) in self.files.items()]
        return out

    def empty(self) -> bool:
        return not (self.main or self.new_entries or self.fields or self.options or self.files)


def _plan(inst: Instance, settings: Settings) -> tuple[_Plan, list[str]]:
    plan = _Plan()
    warnings: list[str] = list(settings.warnings)
    names = list(settings.main)
    raw = inst.values(names)
    expanded = inst.values(names, expand=True)
    ours_milter = settings.main.get("smtpd_milters", "")
    for name, ours in settings.main.items():
        have = raw.get(name, "")  # the explicit value, or else the default
        # an unset parameter merges with its default only when that is not empty
        # (relay_domains' default is a compatibility expression that is empty today)
        current = have if name in inst.explicit or expanded.get(name, "").strip() else ""
        new = merge_value(name, current, ours, milter=ours_milter)
        if name == "smtpd_milters":
            items = [i.lower() for i in split_list(new)]
            if ours.lower() in items and items[-1] != ours.lower():
                after = split_list(new)[items.index(ours.lower()) + 1:]
                warnings.append(f"smtpd_milters: {', '.join(after)} runs after mattermail's milter, which signs "
                                "DKIM and should be the last one (move it to the end)")
        # written even when the default already is right: main.cf then shows what mattermail relies on
        if name not in inst.explicit or new != have:
            plan.main[name] = (have if name in inst.explicit else None, new)
    for name in ("sender_canonical_classes", "recipient_canonical_classes"):
        if name in plan.main and name.replace("classes", "maps") in inst.explicit:
            warnings.append(f"{name} is narrowed to {plan.main[name][1]} for SRS: existing "
                            f"{name.replace('classes', 'maps')} no longer rewrite headers")

    for entry in settings.master:
        if entry.name not in inst.services:
            plan.new_entries.append(entry)
            for k, v in entry.options:
                plan.options[f"{entry.name}/{k}"] = ("", v)
            continue
        have = inst.services[entry.name]
        cmd = have.get("command", "").split()
        if cmd[:1] != [entry.command]:
            raise PostfixConfError(f"master.cf: {entry.name} runs {' '.join(cmd[:1]) or 'nothing'}, not "
                                   f"{entry.command}; rename or remove that service, then run again")
        if have.get("private") != entry.private:
            plan.fields[f"{entry.name}/private"] = (have.get("private", ""), entry.private)
        opts = inst.options(entry.name)
        for k, v in entry.options:
            if opts.get(k) != v:
                plan.options[f"{entry.name}/{k}"] = (opts.get(k, ""), v)

    for path, content in settings.files.items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != content:
            plan.files[path] = (old, content)

    tls = inst.values(["smtpd_tls_cert_file", "smtpd_tls_chain_files"], expand=True)
    if not any(v.strip() for v in tls.values()):
        warnings.append("no smtpd_tls_cert_file / smtpd_tls_chain_files: the submission service requires "
                        "STARTTLS and will refuse every client until a certificate is configured")
    return plan, warnings


def _write_edits(config_dir: Path, plan: _Plan, files: bool = True) -> None:
    if any(old is None for old, _ in plan.main.values()):
        # postconf -e appends parameters that are not set yet: head them with a comment
        main_cf = config_dir / "main.cf"
        text = main_cf.read_text(encoding="utf-8", errors="surrogateescape")
        sep = "" if not text or text.endswith("\n") else "\n"
        with main_cf.open("a", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"{sep}\n# mattermail (written by mattermailctl postfix configure):\n")
    for n, (_, new) in plan.main.items():  # one at a time: postconf -e appends in no useful order
        _postconf(config_dir, "-e", f"{n}={new}")
    for e in plan.new_entries:
        _postconf(config_dir, "-M", f"{e.name}={e.line()}")
    if plan.fields:
        _postconf(config_dir, "-F", *(f"{k}={new}" for k, (_, new) in plan.fields.items()))
    if plan.options:
        _postconf(config_dir, "-P", *(f"{k}={new}" for k, (_, new) in plan.options.items()))
    if files:
        for path, (_, content) in plan.files.items():
            _atomic_write(path, content)


def _atomic_write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, content, mode=0o644)


def _unified(path: Path, old: str | None, new: str) -> str:
    return "".join(difflib.unified_diff(
        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=str(path) if old is not None else "/dev/null", tofile=str(path)))


def _backup_path(path: Path, stamp: str) -> Path:
    candidate = path.with_name(f"{path.name}.mattermail-{stamp}.bak")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.mattermail-{stamp}-{n}.bak")
        n += 1
    return candidate


def apply(config_dir: str | os.PathLike[str], settings: Settings, dry_run: bool = False) -> Change:
    """Bring the instance in ``config_dir`` to ``settings``; see the module docstring."""
    config_dir = Path(config_dir)
    inst = Instance.read(config_dir)
    plan, warnings = _plan(inst, settings)
    change = Change(config_dir, changes=plan.lines(), warnings=warnings, dry_run=dry_run)
    if plan.empty():
        return change
    cf_files = [config_dir / "main.cf", config_dir / "master.cf"]
    originals = {p: p.read_bytes() for p in cf_files}

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="mattermail-postfix-") as tmp:
            for p in cf_files:
                shutil.copy2(p, Path(tmp) / p.name)
            _write_edits(Path(tmp), plan, files=False)
            diff = [_unified(p, originals[p].decode("utf-8", "replace"),
                             (Path(tmp) / p.name).read_text(encoding="utf-8", errors="replace"))
                    for p in cf_files]
        diff += [_unified(p, old, new) for p, (old, new) in plan.files.items()]
        change.diff = "".join(diff)
        return change

    ok, msg = postfix_check(config_dir)
    if not ok:
        raise PostfixConfError(f"postfix check fails before any change; fix that first: {_one_line(msg)}")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    file_originals = {p: (p.read_bytes() if p.exists() else None) for p in plan.files}
    for p in cf_files + [p for p, b in file_originals.items() if b is not None]:
        b = _backup_path(p, stamp)
        shutil.copy2(p, b)
        change.backups.append(b)
    try:
        _write_edits(config_dir, plan)
        ok, msg = postfix_check(config_dir)
        if not ok:
            raise PostfixConfError(f"postfix check failed, original files restored: {_one_line(msg)}")
    except BaseException:
        _restore(originals, file_originals)
        for b in change.backups:
            b.unlink(missing_ok=True)
        change.backups.clear()
        raise
    return change


def _restore(originals: dict[Path, bytes], file_originals: dict[Path, bytes | None]) -> None:
    for p, data in originals.items():
        p.write_bytes(data)
    for p, data in file_originals.items():
        if data is None:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(data)


def _one_line(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if "fatal" in ln or "error" in ln]
    return (fatal or lines or ["no message (see the mail log)"])[-1]


def configure(cfg: Config, config_dir: str | os.PathLike[str] | None = None, dry_run: bool = False,
              edge_router: str | None = None) -> Change:
    """desired settings for ``cfg``, applied to ``config_dir`` (default ``postfix.config_dir``);
    ``edge_router``: wire an edge that delivers to the router at that HOST:PORT."""
    if edge_router is not None:
        router_nexthop(edge_router)  # a bad --router is named before anything else is looked at
    d = Path(config_dir) if config_dir is not None else cfg.postfix.config_dir
    if not d.is_dir():
        raise PostfixConfError(f"--config-dir: {d} is not a directory")
    return apply(d, settings_for(cfg, d, edge_router=edge_router), dry_run=dry_run)
