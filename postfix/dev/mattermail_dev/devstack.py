"""mattermail-devstack: the dev/test stack — a real Postfix calling the real milter.

Everything runs on loopback with its state in one directory (``var/`` for
``make run``; a temp directory per test session): a private Postfix instance
(inbound SMTP and STARTTLS+SASL submission), an auth-only Dovecot, the
milter, the router (LMTP), the SRS socketmap (its own process), a sink
standing for "the internet", and a DNS server serving ``<var>/dns/*.zone``.
With ``--store postgresql`` (``make run STORE=postgresql``) the store is the
database ``mattermail`` in a PostgreSQL cluster kept in ``<var>/postgresql``
(127.0.0.1:5433, mattermail_dev.pgcluster), started and stopped with the rest.
``start`` is idempotent: parts already running are left alone. It returns
when every part answers; a part that cannot start is named with the log
line that says why.

Postfix's and Dovecot's daemons run as ``postfix`` / ``dovecot`` and must
enter the state directory. A checkout where they cannot (one under /root,
mode 0700) gets its ``var`` moved to /var/lib/mattermail-dev/<hash of the
path>/ with ``var`` left as a symlink to it (see :func:`place_var`).

Size: over 400 lines because it renders and drives six real programs (Postfix, Dovecot, DNS,
sink, milter, router, SRS) with their start-up checks; it is a dev tool, not shipped.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "postfix" / "dev"
BIN = Path(sys.executable).parent


# Our own processes, started (and stopped) by pid file, each logging to <var>/log/<name>.log.
DAEMONS = ("milter", "router", "srs", "sink", "dns", "web")
# Where a var/ the daemons cannot enter is moved to (see place_var).
DEV_STATE = Path("/var/lib/mattermail-dev")
# Unprivileged users whose daemons must enter the state directory.
DAEMON_USERS = ("postfix", "dovecot", "dovenull", "postgres")
# The dev stack's PostgreSQL cluster (--store postgresql): its port and database.
PG_PORT = 5433
PG_DATABASE = "mattermail"


class StackError(RuntimeError):
    pass


def _can_enter(path: Path, user: str) -> bool:
    """Whether ``user`` may search (x) every directory from / down to ``path`` (mode bits; no ACLs)."""
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return True  # no such user here: nothing of it will run
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for d in [path, *path.parents]:
        try:
            st = d.stat()
        except FileNotFoundError:
            continue  # made later, by us, 0755
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def unreachable_for_daemons(var: Path) -> str:
    """Why Postfix's or Dovecot's unprivileged daemons could not enter ``var`` ("" when they can)."""
    var = Path(var).resolve()
    for user in DAEMON_USERS:
        if not _can_enter(var, user):
            blocker = next(d for d in [*reversed(var.parents), var]
                           if d.exists() and not _can_enter(d, user))
            return (f"user {user} cannot enter {blocker} (mode {stat.S_IMODE(blocker.stat().st_mode):04o}), "
                    f"which holds the state directory {var}")
    return ""


def place_var(var: Path, home: Path = DEV_STATE) -> Path:
    """The state directory for ``var``: itself, or — when Postfix's or Dovecot's daemons cannot enter it
    (a checkout under /root) — ``home/<hash of its path>``, with ``var`` made a symlink to that.

    A ``var`` directory already there (from a start that failed on exactly that) is moved, after its
    daemons are stopped. Returns the path to run the stack in.
    """
    var = Path(os.path.abspath(var))
    if var.is_symlink() or not unreachable_for_daemons(var):
        return var
    why = unreachable_for_daemons(var)
    target = home / hashlib.sha1(str(var).encode()).hexdigest()[:12]
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    if target.exists():
        raise StackError(f"{var}: {why}; wanted to move it to {target}, which exists: "
                         f"remove one of them (or make {var} a symlink to {target})")
    if var.exists():
        Stack(var).stop()  # our daemons from a failed start run with paths under the old place
        shutil.move(str(var), str(target))
        print(f"devstack: moved {var} to {target}: {why}")
    else:
        target.mkdir(mode=0o755)
        print(f"devstack: state in {target}: {why}")
    var.symlink_to(target, target_is_directory=True)
    print(f"devstack: {var} is a symlink to it")
    return var


@dataclass(frozen=True)
class Ports:
    smtp: int = 2525
    submission: int = 5870
    milter: int = 8894
    lmtp: int = 2424
    sink: int = 2526
    dns: int = 5353
    srs: int = 10001
    web: int = 8025

    @classmethod
    def free(cls) -> "Ports":
        """Ports nobody listens on now (TCP, and UDP too for DNS)."""
        socks, ports = [], []
        for i in range(len(fields(cls))):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        dns_port = ports[5]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", dns_port))
        socks.append(u)
        for s in socks:
            s.close()
        return cls(*ports)


def _render(name: str, dest: Path, **values: object) -> None:
    text = (TEMPLATES / name).read_text(encoding="utf-8").format(**values)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.read_text(encoding="utf-8") != text:
        dest.write_text(text, encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _smtp_banner(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _dns_answers(port: int) -> bool:
    import dns.message
    import dns.query

    try:
        q = dns.message.make_query("lawfirm.test.", "SOA")
        dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
        return True
    except Exception:
        return False


class Stack:
    def __init__(self, var: Path, ports: Ports = Ports(), store: str | None = None, pg_port: int = PG_PORT) -> None:
        self.var = Path(var).resolve()
        self.ports = ports
        self.store = store  # "sqlite", "postgresql", or None: as the config says (SQLite for a new one)
        self.pg_port = pg_port
        self.pg_root = self.var / "postgresql"
        self.name = "postfix-mm-" + hashlib.sha1(str(self.var).encode()).hexdigest()[:8]
        self.etc = self.var / "postfix" / "etc"
        self.spool = self.var / "postfix" / "spool"
        self.dovecot_conf = self.var / "dovecot" / "dovecot.conf"
        self.config = self.var / "mattermail.toml"
        self.passwd_file = self.var / "dovecot-users"
        self.sender_login_map = self.var / "sender-login-map"
        self.sink_dir = self.var / "sink"
        self.dns_dir = self.var / "dns"
        self.logs = self.var / "log"
        self.run_dir = self.var / "run"
        self._log_start: dict[str, int] = {}  # where each part's log stood when it was last started

    # -- preparation -------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "MATTERMAIL_CONFIG": str(self.config)}

    def values(self) -> dict[str, object]:
        """What the templates in postfix/dev/ are filled with."""
        return dict(var=self.var, etc=self.etc, syslog_name=self.name, passwd_file=self.passwd_file,
                    sender_login_map=self.sender_login_map,
                    smtp_port=self.ports.smtp, submission_port=self.ports.submission,
                    milter_port=self.ports.milter, lmtp_port=self.ports.lmtp, sink_port=self.ports.sink,
                    dns_port=self.ports.dns, srs_port=self.ports.srs, web_port=self.ports.web,
                    store_url=self.pg_url() if self.store == "postgresql" else "")

    def _write_srs_filters(self) -> None:
        """The regexp filters main.cf puts in front of the SRS socketmaps, as `mattermailctl postfix
        configure` writes them (the same function), from this stack's config."""
        from mattermail import config as configmod
        from mattermail.ctl.postfixconf import SRS_RECIPIENTS_FILE, SRS_SENDERS_FILE, srs_filters

        senders, recipients = srs_filters(configmod.load(self.config))
        (self.etc / SRS_SENDERS_FILE).write_text(senders)
        (self.etc / SRS_RECIPIENTS_FILE).write_text(recipients)

    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{PG_DATABASE}"

    def uses_postgresql(self) -> bool:
        """--store postgresql, or (without --store) a config whose store.url is set."""
        if self.store is not None:
            return self.store == "postgresql"
        try:
            return bool(tomllib.loads(self.config.read_text()).get("store", {}).get("url"))
        except FileNotFoundError:
            return False

    def prepare(self) -> None:
        blocked = unreachable_for_daemons(self.var)
        if blocked:
            raise StackError(f"postfix and dovecot: cannot start: {blocked} (mattermail-devstack start "
                             f"moves such a var/ to {DEV_STATE}/)")
        for d in (self.var, self.logs, self.run_dir, self.sink_dir, self.dns_dir, self.var / "tls",
                  self.var / "dovecot" / "run", self.var / "dovecot" / "state", self.var / "postfix" / "data", self.spool):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.var, 0o755)
        values = self.values()
        _render("main.cf.in", self.etc / "main.cf", **values)
        _render("master.cf.in", self.etc / "master.cf", **values)
        _render("transport.in", self.etc / "transport", **values)
        _render("virtual.in", self.etc / "virtual", **values)
        _render("dovecot.conf.in", self.dovecot_conf, **values)
        if not self.config.exists():
            _render("mattermail.toml.in", self.config, **values)
        else:
            self._migrate_config()
            self._migrate_submission()
            self._set_store()
            self._migrate_web()
        self._write_srs_filters()
        for zone in (TEMPLATES / "zones").glob("*.zone"):
            if not (self.dns_dir / zone.name).exists():
                shutil.copy(zone, self.dns_dir / zone.name)
        if not self.passwd_file.exists():
            from mattermail.passwords import write_passwd_file

            write_passwd_file(self.passwd_file, [], group="dovecot")
        if not self.sender_login_map.exists():
            from mattermail.passwords import write_sender_login_map

            warning = write_sender_login_map(self.sender_login_map, [], self.etc)
            if warning:
                raise StackError(warning)
        self._make_cert()
        self._make_secrets_and_keys()
        pd = self.var / "postfix" / "data"
        shutil.chown(pd, "postfix", "postfix")

    def _migrate_config(self) -> None:
        """A config written before ``general.user`` existed: the dev daemons run as whoever starts
        them, so say so (the default, "mattermail", would make them refuse to start as root)."""
        text = self.config.read_text()
        if "user" in tomllib.loads(text).get("general", {}):
            return
        new = re.sub(r"(?m)^\[general\][ \t]*\n", '[general]\n# Added by mattermail-devstack: the dev stack runs as '
                     'whoever started it.\nuser = ""\n', text, count=1)
        if new == text:
            new = text.rstrip("\n") + '\n\n[general]\nuser = ""\n'
        self.config.write_text(new)
        print(f"devstack: added general.user = \"\" to {self.config} (daemons keep the starting user)")

    def _migrate_submission(self) -> None:
        """A config written before ``postfix.submission`` existed: commands that talk to the
        submission service (``mattermailctl test-send``) would try 127.0.0.1:587."""
        text = self.config.read_text()
        if "submission" in tomllib.loads(text).get("postfix", {}):
            return
        line = f'submission = "127.0.0.1:{self.ports.submission}"\n'
        new = re.sub(r"(?m)^\[postfix\][ \t]*\n", lambda m: m.group(0) + line, text, count=1)
        if new == text:
            new = text.rstrip("\n") + "\n\n[postfix]\n" + line
        self.config.write_text(new)
        print(f"devstack: added postfix.submission = 127.0.0.1:{self.ports.submission} to {self.config}")

    def _set_store(self) -> None:
        """--store given for an existing config: point store.url at the dev cluster, or empty it (SQLite)."""
        if self.store is None:
            return
        text = self.config.read_text()
        want = self.values()["store_url"]
        if tomllib.loads(text).get("store", {}).get("url", "") == want:
            return
        line = f'url = "{want}"\n'
        new, n = re.subn(r'(?m)^url[ \t]*=.*\n', line, text, count=1) if "url" in tomllib.loads(text).get(
            "store", {}) else re.subn(r"(?m)^\[store\][ \t]*\n", lambda m: m.group(0) + line, text, count=1)
        if not n:
            new = text.rstrip("\n") + "\n\n[store]\n" + line
        self.config.write_text(new)
        print(f"devstack: set store.url = \"{want}\" in {self.config}")

    # -- the PostgreSQL store (--store postgresql) --------------------------------------------
    def start_postgres(self) -> None:
        from mattermail_dev import pgcluster

        try:
            cluster = pgcluster.open_persistent(self.pg_root, self.pg_port)
            if not cluster.database_exists(PG_DATABASE):
                cluster.create_database(PG_DATABASE)
        except pgcluster.ClusterError as e:
            raise StackError(f"postgresql: {e}") from None

    def stop_postgres(self) -> None:
        if not (self.pg_root / "data" / "postmaster.pid").exists():
            return
        from mattermail_dev import pgcluster

        pgcluster.persistent(self.pg_root, self.pg_port).stop()

    def postgres_running(self) -> bool:
        return (self.pg_root / "data" / "postmaster.pid").exists()
    def _migrate_web(self) -> None:
        """A config written before ``[web]`` existed: the web view listens on the dev port, over plain http."""
        text = self.config.read_text()
        if "web" in tomllib.loads(text):
            return
        self.config.write_text(text.rstrip("\n") + f'\n\n[web]\nlisten = "127.0.0.1:{self.ports.web}"\n'
                               'cookie_secure = false\n')
        print(f"devstack: added [web] listen = 127.0.0.1:{self.ports.web} to {self.config}")

    def _make_secrets_and_keys(self) -> None:
        """The capture HMAC secret, and demo DKIM keys for lawfirm.test published in the demo DNS."""
        from mattermail import dkimkeys

        for name in ("capture.key", "srs.key"):
            secret = self.var / name
            if not secret.exists():
                fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(os.urandom(32).hex() + "\n")
        keys = self.var / "dkim" / "lawfirm.test"
        zone = self.dns_dir / "lawfirm.test-dkim.zone"
        if keys.exists() and zone.exists():
            return
        lines = ["; DKIM keys of the dev stack (generated with the keys in dkim/)"]
        for alg, selector in (("rsa", "dev2026r"), ("ed25519", "dev2026e")):
            path = keys / f"{selector}.{alg}.pem"
            if not path.exists():
                dkimkeys.write_private_key(path, dkimkeys.generate(alg))
            owner, record = dkimkeys.dns_record(dkimkeys.load_private_key(path), selector, "lawfirm.test")
            lines.append(dkimkeys.zone_line(owner, record, ttl=300))
        zone.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _make_cert(self) -> None:
        cert, key = self.var / "tls" / "cert.pem", self.var / "tls" / "key.pem"
        if cert.exists() and key.exists():
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.lawfirm.test")])
        now = datetime.datetime.now(datetime.timezone.utc)
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=3650))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.lawfirm.test"), x509.DNSName("localhost")]), False)
             .sign(k, hashes.SHA256()))
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))

    # -- our own daemons --------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _running(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _mark_log(self, name: str) -> None:
        p = self.logs / f"{name}.log"
        self._log_start[name] = p.stat().st_size if p.exists() else 0

    def _spawn(self, name: str, argv: list[str]) -> None:
        if self._running(name):
            return
        self._mark_log(name)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env(), start_new_session=True, cwd=self.var)
        self._pidfile(name).write_text(str(proc.pid))

    def _kill(self, name: str, timeout: float = 10.0) -> None:
        pid = self._running(name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._pidfile(name).unlink(missing_ok=True)

    def start_milter(self) -> None:
        self._spawn("milter", [str(BIN / "mattermail-milter"), "--config", str(self.config)])
        self._wait("milter", lambda: _tcp_open(self.ports.milter))

    def stop_milter(self) -> None:
        self._kill("milter")

    def start_router(self) -> None:
        self._spawn("router", [str(BIN / "mattermail-router"), "--config", str(self.config)])
        self._wait("router", lambda: _smtp_banner(self.ports.lmtp))

    def stop_router(self) -> None:
        self._kill("router")

    def start_srs(self) -> None:
        self._spawn("srs", [str(BIN / "mattermail-srs"), "--config", str(self.config)])
        self._wait("srs", lambda: _tcp_open(self.ports.srs))

    def stop_srs(self) -> None:
        self._kill("srs")

    def start_web(self) -> None:
        self._spawn("web", [str(BIN / "mattermail-web"), "--config", str(self.config)])
        self._wait("web", lambda: _tcp_open(self.ports.web))

    def stop_web(self) -> None:
        self._kill("web")

    def start_dns(self) -> None:
        self._spawn("dns", [str(BIN / "mattermail-devdns"), "--zones", str(self.dns_dir), "--port", str(self.ports.dns)])
        self._wait("dns", lambda: _dns_answers(self.ports.dns))

    def stop_dns(self) -> None:
        self._kill("dns")

    def start_sink(self) -> None:
        self._spawn("sink", [str(BIN / "mattermail-sink"), "--dir", str(self.sink_dir), "--port", str(self.ports.sink)])
        self._wait("sink", lambda: _smtp_banner(self.ports.sink))

    # -- Postfix and Dovecot ------------------------------------------------------------
    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, check=check)

    def postfix_running(self) -> bool:
        return self.postfix("status", check=False).returncode == 0

    def start_postfix(self) -> None:
        if not self.postfix_running():
            self._mark_log("postfix")
            r = self.postfix("start", check=False)
            if r.returncode != 0:
                raise StackError(f"postfix: failed to start: {self._why('postfix', r.stdout + r.stderr)}"
                                 f"\n{r.stdout}{r.stderr}{self._tail('postfix')}")
        self._wait("postfix", lambda: _smtp_banner(self.ports.smtp) and _smtp_banner(self.ports.submission),
                   alive=self.postfix_running)

    def stop_postfix(self) -> None:
        if self.postfix_running():
            self.postfix("stop", check=False)

    def _dovecot_pid(self) -> int | None:
        try:
            pid = int((self.var / "dovecot" / "run" / "master.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def start_dovecot(self) -> None:
        if not self._dovecot_pid():
            self._mark_log("dovecot")
            # Dovecot daemonizes with our stdout still open: give it the log file, not a pipe.
            with open(self.logs / "dovecot.log", "ab") as log:
                r = subprocess.run(["dovecot", "-c", str(self.dovecot_conf)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                raise StackError(f"dovecot: failed to start (exit {r.returncode}): {self._why('dovecot')}"
                                 f"{self._tail('dovecot')}")
        auth = self.spool / "private" / "auth"
        self._wait("dovecot", auth.exists)

    def stop_dovecot(self) -> None:
        pid = self._dovecot_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    # -- the whole stack -----------------------------------------------------------------
    def start(self) -> None:
        self.prepare()
        if self.uses_postgresql():
            self.start_postgres()
        self.start_dns()
        self.start_sink()
        self.start_srs()
        self.start_router()
        self.start_milter()
        self.start_web()
        # Postfix first creates the spool (with private/), where Dovecot puts its auth socket.
        self.start_postfix()
        self.start_dovecot()

    def stop(self) -> None:
        self.stop_postfix()
        self.stop_dovecot()
        for name in DAEMONS:
            self._kill(name)
        self.stop_postgres()

    def _tail(self, name: str, lines: int = 20) -> str:
        p = self.logs / f"{name}.log"
        if not p.exists():
            return ""
        return f"\n--- last lines of {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])

    def _why(self, name: str, output: str = "") -> str:
        """The line that says why the part failed: the first fatal/panic one it wrote (to ``output`` or its
        log, since it was started), else the last error, else the last warning, else its last line."""
        p = self.logs / f"{name}.log"
        lines = output.splitlines()
        if p.exists():
            with open(p, "rb") as f:
                f.seek(self._log_start.get(name, 0))
                lines += f.read().decode("utf-8", "replace").splitlines()
        lines = [l.strip() for l in lines if l.strip()]
        fatal = [l for l in lines if re.search(r"\b(fatal|panic)\b", l, re.IGNORECASE)]
        # Postfix's own last word, "fatal: mail system startup failed", only says that it failed.
        if fatal and any("startup failed" not in l for l in fatal):
            fatal = [l for l in fatal if "startup failed" not in l]
        if fatal:
            return fatal[0]
        for pattern in (r"\berror\b", r"\bwarning\b"):
            hits = [l for l in lines if re.search(pattern, l, re.IGNORECASE)]
            if hits:
                return hits[-1]
        return lines[-1] if lines else f"nothing in {p}"

    def _wait(self, name: str, ready, timeout: float = 30.0, alive=None) -> None:
        """Until ``ready()``; a part that exits meanwhile (``alive()``, checked each second) fails at once."""
        deadline = time.monotonic() + timeout
        if alive is None and name in DAEMONS:
            alive = lambda: self._running(name)  # noqa: E731
        checked = time.monotonic()
        while time.monotonic() < deadline:
            if ready():
                return
            if alive is not None and (name in DAEMONS or time.monotonic() - checked >= 1.0):
                checked = time.monotonic()
                if not alive() and not ready():
                    raise StackError(f"{name}: failed to start (exited): {self._why(name)}{self._tail(name)}")
            time.sleep(0.05)
        raise StackError(f"{name}: failed to start (no answer within {timeout:.0f}s): {self._why(name)}"
                         f"{self._tail(name)}")

    def summary(self) -> str:
        p = self.ports
        return f"""mattermail dev stack is up (state in {self.var})

  Postfix inbound MX            127.0.0.1:{p.smtp}
  Postfix submission (587-like) 127.0.0.1:{p.submission}   STARTTLS + AUTH required
  milter                        inet:127.0.0.1:{p.milter}
  router (LMTP)                 127.0.0.1:{p.lmtp}
  store                         {self.pg_url() if self.uses_postgresql() else self.var / "store.sqlite"}
  sink ("the internet")         127.0.0.1:{p.sink}   -> {self.sink_dir}/*.eml
  DNS (zones in {self.dns_dir}) 127.0.0.1:{p.dns} udp+tcp
  SRS socketmap (mattermail-srs) 127.0.0.1:{p.srs}
  web view and JSON API         http://127.0.0.1:{p.web}/   (sign in as a user added below)
  logs                          {self.logs}/

Try:
  export MATTERMAIL_CONFIG={self.config}
  echo 'correct-horse-battery' | .venv/bin/mattermailctl user add alice@lawfirm.test
  swaks --server 127.0.0.1:{p.submission} --tls --auth LOGIN \\
        --auth-user alice@lawfirm.test --auth-password correct-horse-battery \\
        --from alice@lawfirm.test --to someone@example.test
  .venv/bin/mattermailctl matter add 1234 --title 'Smith v Jones'
  swaks --server 127.0.0.1:{p.smtp} --local-interface 127.0.0.2 \\
        --from bob@example.test --to 1234@matters.lawfirm.test
  .venv/bin/mattermailctl messages list --matter 1234
  ls {self.sink_dir} ; tail {self.logs}/milter.log
Stop it with: make stop"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mattermail-devstack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--var", type=Path, default=Path("var"))
    parser.add_argument("--store", choices=["sqlite", "postgresql"],
                        help="the store's engine (default: as var/mattermail.toml says; SQLite for a new stack)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("mattermail-devstack: must run as root (it starts a private Postfix instance)")
    try:
        stack = Stack(place_var(args.var) if args.action == "start" else args.var, store=args.store)
        if args.action == "start":
            stack.start()
            print(stack.summary())
        elif args.action == "stop":
            stack.stop()
            print("mattermail dev stack stopped")
        else:
            print({"postfix": stack.postfix_running(), "dovecot": bool(stack._dovecot_pid()),
                   "postgresql": stack.postgres_running(),
                   **{n: bool(stack._running(n)) for n in DAEMONS}})
            print(asdict(stack.ports))
    except StackError as e:
        sys.exit(f"mattermail-devstack: {e}")


if __name__ == "__main__":
    main()
