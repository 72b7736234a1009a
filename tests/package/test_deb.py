"""The Debian package on this machine: build, install, wire into the default Postfix, mail, remove.

Needs root and a Debian machine with Postfix and Dovecot installed but not
running (as `make deps` leaves it). It changes the machine for its duration and
puts it back: /etc/postfix and /etc/dovecot are copied aside and restored, the
package is purged, and leftovers of an earlier mattermail install
(/etc/mattermail, /var/lib/mattermail) are moved aside and put back.

Cost: `make deb` (about 50-60 s when the package's files changed since the
last build, nothing otherwise) plus about 60 s for the rest (postconf is slow
on a busy machine; unwire-postfix calls it a few dozen times).

The daemons are started exactly as their systemd units say (ExecStart, User,
Group, SupplementaryGroups, UMask, NoNewPrivileges, RuntimeDirectory) with
setpriv, since there is no systemd here; the sandboxing options (ProtectSystem
...) are only checked by `systemd-analyze verify`.
"""

from __future__ import annotations

import configparser
import fcntl
import os
import pwd
import grp
import re
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parents[2]
CTL = "/usr/bin/mattermailctl"
CONF = Path("/etc/mattermail/mattermail.toml")
UNITS = Path("/lib/systemd/system")
UNWIRE = "/usr/share/mattermail/unwire-postfix"
SPOOL_SOCKETS = Path("/var/spool/postfix/mattermail")
PASSWORD = "correct-horse-battery"
DISCLAIMER_1 = "Lawfirm LLP: this email is confidential (first disclaimer)."
DISCLAIMER_2 = "Lawfirm LLP: privileged and confidential (second disclaimer)."
POSTFIX_LOG = Path("/var/log/mm-pkgtest-postfix.log")
LOCK = Path("/run/lock/mattermail-package-test.lock")


# ---------------------------------------------------------------- helpers


def machine_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's MATTERMAIL_* (README's quick start exports
    MATTERMAIL_CONFIG=var/mattermail.toml: unwire-postfix and mattermailctl would act on the dev
    stack instead of the machine's Postfix) and without PYTHONSAFEPATH."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MATTERMAIL_") and k != "PYTHONSAFEPATH"} | extra


def run(*argv: str, input: str | None = None, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                       env=machine_env() if env is None else env,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def unix_listening(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(path))
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def proc_ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "NoNewPrivs"):
            out[key] = [int(v) for v in value.split()]
    return out


def unit(name: str) -> dict[str, str]:
    """The [Service] settings of an installed unit (last value wins, as in systemd)."""
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment]
    p.read(UNITS / name)
    return dict(p["Service"])


class Daemon:
    """A mattermail daemon started as its unit would start it (or, with as_root, as root)."""

    def __init__(self, unit_name: str, log: Path, as_root: bool = False) -> None:
        self.unit_name = unit_name
        self.log = log
        self.settings = unit(unit_name)
        svc = self.settings
        argv = shlex.split(svc["ExecStart"])
        if not as_root:
            supplementary = svc.get("SupplementaryGroups", "").split()
            groups = [svc["Group"], *supplementary]
            argv = ["setpriv", f"--reuid={svc['User']}", f"--regid={svc['Group']}",
                    f"--groups={','.join(groups)}",
                    *(["--no-new-privs"] if svc.get("NoNewPrivileges") == "yes" else []), "--", *argv]
        for d in svc.get("RuntimeDirectory", "").split():
            path = Path("/run") / d
            path.mkdir(mode=0o755, exist_ok=True)
            shutil.chown(path, svc["User"], svc["Group"])
        umask = int(svc.get("UMask", "0022"), 8)
        user = pwd.getpwnam(svc["User"])
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if not as_root:
            env |= {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         env=env, cwd="/", start_new_session=True,
                                         preexec_fn=lambda: os.umask(umask))
        self.pid = self.proc.pid  # setpriv execs the daemon: same pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def hup(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def hup_milter(self) -> None:
        """SIGHUP the milter and wait for each worker's "reloaded" line: the parent passes the signal on and
        every worker reloads on its own (one process, without workers, logs the one line itself)."""
        before = self.text().count("reloaded")
        n = max(1, len(Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()))
        self.hup()
        wait_for(lambda: self.text().count("reloaded") >= before + n, 30, f"{n} milter process(es) reloaded")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for d in self.settings.get("RuntimeDirectory", "").split():
            shutil.rmtree(Path("/run") / d, ignore_errors=True)


# ---------------------------------------------------------------- the machine


class Machine:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mm-pkgtest-"))
        os.chmod(self.tmp, 0o755)
        self.backup = self.tmp / "backup"
        self.backup.mkdir()
        self.cleanups: list[tuple[str, Callable[[], object]]] = []
        self.daemons: dict[str, Daemon] = {}
        self.sink_dir = self.tmp / "sink"
        self.dns_dir = self.tmp / "dns"
        self.dns_port = 0
        self.sink_port = 0
        self.dovecot_conf = self.tmp / "dovecot" / "dovecot.conf"
        self.unwired = False

    # -- undo list --------------------------------------------------------------
    def on_teardown(self, what: str, fn: Callable[[], object]) -> None:
        self.cleanups.append((what, fn))

    def teardown(self) -> list[str]:
        errors = []
        for what, fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep going: put back as much as possible
                errors.append(f"{what}: {e}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return errors

    # -- pieces ------------------------------------------------------------------
    def save_dir(self, path: Path) -> None:
        """Copy a directory aside; restore it (exactly) at teardown."""
        if not path.exists():
            self.on_teardown(f"remove {path}", lambda: shutil.rmtree(path, ignore_errors=True))
            return
        dest = self.backup / path.name
        shutil.copytree(path, dest, symlinks=True)

        def restore() -> None:
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(dest, path, symlinks=True)
            shutil.copystat(dest, path)
        self.on_teardown(f"restore {path}", restore)

    def move_aside(self, path: Path) -> None:
        """A leftover of an earlier install: moved away for the test, put back after it."""
        if not path.exists():
            return
        dest = self.backup / ("aside" + str(path).replace("/", "_"))
        shutil.move(str(path), dest)

        def back() -> None:
            shutil.rmtree(path, ignore_errors=True)
            shutil.move(str(dest), path)
        self.on_teardown(f"put back {path}", back)

    def build_and_install(self) -> Path:
        r = run("make", "-s", "deb", check=False, timeout=1200,
                env=machine_env(PWD=str(REPO)))
        assert r.returncode == 0, f"make deb failed:\n{r.stdout}{r.stderr}"
        version = re.search(r'__version__\s*=\s*"([^"]+)"', (REPO / "mattermail/version.py").read_text()).group(1)
        deb = REPO / "build" / "deb" / f"mattermail_{version}_amd64.deb"
        assert deb.exists(), r.stdout
        self.on_teardown("apt-get purge mattermail", self.purge)
        env = machine_env(DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "install", "--reinstall", "-y", "-q", "--no-install-recommends", str(deb), env=env, timeout=600)
        return deb

    def purge(self) -> None:
        env = machine_env(DEBIAN_FRONTEND="noninteractive")
        run("apt-get", "purge", "-y", "-q", "mattermail", env=env, timeout=600)

    def postfix_setup(self) -> None:
        etc = Path("/etc/postfix")
        tls = self.tmp / "tls"
        tls.mkdir()
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=mx.lawfirm.test", "-keyout", str(tls / "key.pem"),
            "-out", str(tls / "cert.pem"))
        if not (etc / "main.cf").exists():
            shutil.copy("/usr/share/postfix/main.cf.debian", etc / "main.cf")
        transport = etc / "pkgtest-transport"
        transport.write_text(f"example.test\tsmtp:[127.0.0.1]:{self.sink_port}\n")
        settings = {
            "myhostname": "mx.lawfirm.test", "mydomain": "lawfirm.test", "myorigin": "$myhostname",
            "mydestination": "$myhostname, localhost", "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4", "mynetworks": "127.0.0.0/8",
            # an admin's own table: `postfix configure` puts ours in front, unwire-postfix takes only ours out
            "transport_maps": f"texthash:{transport}",
            "alias_maps": "", "alias_database": "", "local_transport": "discard:local delivery off in this test",
            "smtp_tls_security_level": "none", "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(tls / "cert.pem"), "smtpd_tls_key_file": str(tls / "key.pem"),
            "maillog_file": str(POSTFIX_LOG), "queue_run_delay": "10s", "minimal_backoff_time": "10s",
        }
        run("postconf", "-e", *(f"{k}={v}" for k, v in settings.items()))
        self.on_teardown(f"remove {POSTFIX_LOG}", lambda: POSTFIX_LOG.unlink(missing_ok=True))
        ok = run("postfix", "check", check=False)
        assert ok.returncode == 0, ok.stderr

    def postfix_start(self) -> None:
        queues = [Path("/var/spool/postfix", q) for q in ("maildrop", "incoming", "active", "deferred", "hold")]
        if not any(p.is_file() for q in queues for p in q.rglob("*")):  # an empty queue is left empty
            self.on_teardown("empty the queue", lambda: run("postsuper", "-d", "ALL", check=False))
        self.on_teardown("postfix stop", lambda: run("postfix", "stop", check=False))
        run("postfix", "start")
        wait_for(lambda: banner(25) and banner(587), 30, "Postfix on ports 25 and 587")

    def dovecot_start(self) -> None:
        d = self.dovecot_conf.parent
        (d / "run").mkdir(parents=True)
        (d / "state").mkdir()
        passwd = self.config_value("auth", "passwd_file")
        self.dovecot_conf.write_text(f"""# auth-only Dovecot for the package test (SASL for Postfix's submission port)
protocols =
base_dir = {d}/run
state_dir = {d}/state
instance_name = mm-pkgtest-dovecot
log_path = {d}/dovecot.log
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup
}}
service auth {{
  extra_groups = mattermail-auth
  unix_listener /var/spool/postfix/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
""")
        auth = Path("/var/spool/postfix/private/auth")

        def stop() -> None:
            try:
                pid = int((d / "run" / "master.pid").read_text())
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not pid_alive(pid), 10, "dovecot to stop")
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass
            auth.unlink(missing_ok=True)
        self.on_teardown("stop dovecot", stop)
        with open(d / "dovecot.log", "ab") as log:
            r = subprocess.run(["dovecot", "-c", str(self.dovecot_conf)], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT)
        assert r.returncode == 0, (d / "dovecot.log").read_text()
        wait_for(auth.exists, 20, "dovecot's auth socket")

    def dns_start(self) -> None:
        from mattermail_dev import devdns

        self.dns_dir.mkdir()
        for z in (REPO / "postfix" / "dev" / "zones").glob("*.zone"):
            shutil.copy(z, self.dns_dir / z.name)
        self.dns_port = devdns.free_port()
        servers = devdns.serve(self.dns_dir, "127.0.0.1", self.dns_port)
        self.on_teardown("stop DNS", lambda: [s.stop() for s in servers])

    def sink_start(self) -> None:
        from aiosmtpd.controller import Controller

        from mattermail_dev.sink import SinkHandler

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.sink_port = s.getsockname()[1]
        c = Controller(SinkHandler(self.sink_dir), hostname="127.0.0.1", port=self.sink_port)
        c.start()
        self.on_teardown("stop sink", c.stop)

    def config_value(self, section: str, key: str) -> str:
        import tomllib

        return tomllib.loads(CONF.read_text())[section][key]

    def edit_config(self) -> None:
        text = CONF.read_text()
        replacements = [
            ('hostname = "mx.example.com"', 'hostname = "mx.lawfirm.test"'),
            ('sending_domains = ["example.com"]', 'sending_domains = ["lawfirm.test"]'),
            ('catchall_domains = ["matters.example.com"]', 'catchall_domains = ["matters.lawfirm.test"]'),
            ('address = "capture@matters.example.com"', 'address = "capture@matters.lawfirm.test"'),
            ("[dns]\n", f"[dns]\nnameservers = [\"127.0.0.1\"]\nport = {self.dns_port}\ntimeout = 3.0\n"),
            ('# listen = "unix:/var/spool/postfix/mattermail/srs.sock"', 'listen = "unix:/var/spool/postfix/mattermail/srs.sock"'),
            ('# domain = "example.com"', 'domain = "lawfirm.test"'),
        ]
        for old, new in replacements:
            assert old in text, f"{CONF} no longer has {old!r}"
            text = text.replace(old, new, 1)
        CONF.write_text(text)
        self.good_config = text

    def ctl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(CTL, *args, input=input, check=check)

    def start_daemons(self, as_root: bool = False) -> None:
        for name in ("srs", "router", "milter"):
            self.stop_daemon(name)
            d = Daemon(f"mattermail-{name}.service", self.tmp / f"{name}.log", as_root=as_root)
            self.daemons[name] = d
            sock = SPOOL_SOCKETS / {"router": "lmtp.sock", "milter": "milter.sock", "srs": "srs.sock"}[name]

            def ready(d: Daemon = d, sock: Path = sock) -> bool:
                if not d.alive():
                    raise AssertionError(f"mattermail-{name} exited ({d.proc.returncode}):\n{d.text()}")
                return unix_listening(sock)
            wait_for(ready, 30, f"mattermail-{name} on {sock}")

    def stop_daemon(self, name: str) -> None:
        d = self.daemons.pop(name, None)
        if d:
            d.stop()

    def stop_daemons(self) -> None:
        for name in ("milter", "router", "srs"):
            self.stop_daemon(name)

    # -- mail ----------------------------------------------------------------------
    @staticmethod
    def message(subject: str, to: list[str], body: str = "Hello from the package test.\n") -> EmailMessage:
        m = EmailMessage()
        m["From"] = "Alice <alice@lawfirm.test>"
        m["To"] = ", ".join(to)
        m["Subject"] = subject
        m["Message-ID"] = f"<{time.time_ns()}@pkgtest.lawfirm.test>"
        m.set_content(body)
        return m

    def submit(self, msg: EmailMessage, rcpts: list[str]) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", 587, timeout=60) as c:
            c.ehlo("client.lawfirm.test")
            c.starttls(context=ctx)
            c.ehlo("client.lawfirm.test")
            c.login("alice@lawfirm.test", PASSWORD)
            c.send_message(msg, "alice@lawfirm.test", rcpts)

    def sink_with(self, needle: str, timeout: float = 30) -> bytes:
        def find() -> bytes | None:
            for p in sorted(self.sink_dir.glob("*.eml")):
                raw = p.read_bytes()
                if needle.encode() in raw:
                    return raw
            return None
        return wait_for(find, timeout, f"{needle!r} at the sink (Postfix log: {POSTFIX_LOG})")  # type: ignore[return-value]

    def dkim_ok(self, raw: bytes) -> bool:
        import dkim
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = self.dns_port

        def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
            try:
                ans = res.resolve((name.decode() if isinstance(name, bytes) else name).rstrip("."), "TXT")
            except Exception:
                return b""
            return b"".join(b"".join(r.strings) for r in ans)
        return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def disclaimer_count(raw: bytes, text: str) -> int:
    msg = message_from_bytes(raw)
    n = 0
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            n += (part.get_payload(decode=True) or b"").decode(part.get_content_charset() or "utf-8",
                                                                "replace").count(text)
    return n


# ---------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def machine():
    if os.geteuid() != 0:
        pytest.fail("the package test installs a .deb and configures the machine's Postfix: run it as root")
    for tool in ("dpkg", "apt-get", "postfix", "postconf", "dovecot", "setpriv", "systemd-analyze", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (run `make deps` on Debian)")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one package test per machine at a time
    try:
        if run("postfix", "status", check=False).returncode == 0:
            pytest.fail("the machine's default Postfix is running and this test would reconfigure it: "
                        "stop it (postfix stop) or leave this test out (pytest -m 'not package')")
        for port in (25, 587):
            if banner(port):
                pytest.fail(f"something listens on 127.0.0.1:{port}, which this test needs for the machine's "
                            f"Postfix: stop it or leave this test out (pytest -m 'not package')")
        m = Machine()
        try:
            m.save_dir(Path("/etc/postfix"))
            m.save_dir(Path("/etc/dovecot"))
            installed = run("dpkg-query", "-W", "-f=${Status}", "mattermail", check=False).stdout
            if "installed" not in installed:
                m.move_aside(Path("/etc/mattermail"))
                m.move_aside(Path("/var/lib/mattermail"))
            m.sink_start()
            m.dns_start()
            t0 = time.monotonic()
            m.build_and_install()
            m.install_seconds = time.monotonic() - t0
            m.on_teardown("stop the daemons", m.stop_daemons)
            m.edit_config()
            m.postfix_setup()
            r = m.ctl("user", "add", "alice@lawfirm.test", input=PASSWORD + "\n")
            genkey = m.ctl("dkim", "genkey", "lawfirm.test")
            zone_lines = [ln.strip() for ln in genkey.stdout.splitlines() if "._domainkey." in ln and " TXT " in ln]
            assert zone_lines, genkey.stdout
            (m.dns_dir / "lawfirm.test-dkim.zone").write_text("\n".join(zone_lines) + "\n")
            (m.tmp / "disclaimer.txt").write_text(DISCLAIMER_1 + "\n")
            m.ctl("disclaimer", "set", "--text", str(m.tmp / "disclaimer.txt"))
            r = m.ctl("postfix", "configure")
            m.configure_output = r.stdout + r.stderr
            m.postfix_start()
            m.dovecot_start()
            m.start_daemons()
            yield m
        finally:
            errors = m.teardown()
            if errors:
                raise AssertionError("teardown: " + "; ".join(errors))
    finally:
        lock.close()


# ---------------------------------------------------------------- tests (in this order)


def test_units_verify_clean(machine):
    r = run("systemd-analyze", "verify", str(UNITS / "mattermail-milter.service"),
            str(UNITS / "mattermail-router.service"), str(UNITS / "mattermail-srs.service"),
            str(UNITS / "mattermail-web.service"), check=False)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr
    # the milter's supervisor passes SIGTERM on to its workers' main threads itself (milter/__main__.py)
    assert "\nKillMode=mixed\n" in (UNITS / "mattermail-milter.service").read_text()


def test_installed_layout(machine):
    for link in ("/usr/bin/mattermailctl", "/usr/sbin/mattermail-milter", "/usr/sbin/mattermail-router",
                 "/usr/sbin/mattermail-srs", "/usr/sbin/mattermail-web"):
        assert os.path.realpath(link).startswith("/usr/lib/mattermail/venv/bin/"), link
    shebang = Path("/usr/lib/mattermail/venv/bin/mattermailctl").read_text().splitlines()[0]
    assert shebang.startswith("#!/usr/lib/mattermail/venv/bin/python"), shebang
    r = run("grep", "-rlI", str(REPO), "/usr/lib/mattermail", check=False)
    assert r.stdout == "", f"build paths left in: {r.stdout}"
    st = SPOOL_SOCKETS.stat()
    assert grp.getgrgid(st.st_gid).gr_name == "postfix" and st.st_mode & stat.S_ISGID
    conf = CONF.stat()
    assert stat.S_IMODE(conf.st_mode) == 0o640 and grp.getgrgid(conf.st_gid).gr_name == "mattermail"


def test_daemons_run_as_unit_user(machine):
    uid = pwd.getpwnam("mattermail").pw_uid
    for name, d in machine.daemons.items():
        ids = proc_ids(d.pid)
        assert set(ids["Uid"]) == {uid}, (name, ids)
        assert ids["NoNewPrivs"] == [1]
    postdrop = grp.getgrnam("postdrop").gr_gid
    assert postdrop in proc_ids(machine.daemons["router"].pid)["Groups"]
    for sock in ("milter.sock", "lmtp.sock", "srs.sock"):
        st = (SPOOL_SOCKETS / sock).stat()
        assert grp.getgrgid(st.st_gid).gr_name == "postfix", sock
        assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060 and not stat.S_IMODE(st.st_mode) & 0o007, sock


def test_submission_is_signed_disclaimed_and_captured(machine):
    msg = machine.message("package test 1", ["bob@example.test"])
    machine.submit(msg, ["bob@example.test"])
    raw = machine.sink_with(msg["Message-ID"])
    assert machine.dkim_ok(raw), raw[:2000].decode(errors="replace")
    assert disclaimer_count(raw, DISCLAIMER_1) == 1

    def captured() -> dict | None:
        import json

        out = json.loads(machine.ctl("messages", "list", "--json").stdout)
        return next((m for m in out if m.get("message_id") == msg["Message-ID"]), None)
    entry = wait_for(captured, 30, "the capture copy in `mattermailctl messages list`")
    assert entry["direction"] == "outbound", entry
    assert [r for r in entry["envelope_recipients"] if r.startswith("capture")], entry
    # The submission's own envelope, as the milter recorded it and the router linked it.
    ce = entry["captured_envelope"]
    assert ce["verified"] and ce["mail_from"] == "alice@lawfirm.test" and ce["recipients"] == ["bob@example.test"], ce


def test_state_not_world_readable(machine):
    paths = [Path("/etc/mattermail/capture.key"), Path("/etc/mattermail/srs.key"),
             Path(machine.config_value("store", "path")), Path(machine.config_value("auth", "passwd_file")),
             *Path("/etc/mattermail/dkim").rglob("*")]
    bad = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in paths if p.stat().st_mode & 0o007]
    assert not bad, bad
    for p in Path("/etc/mattermail/dkim").rglob("*.pem"):
        assert pwd.getpwuid(p.stat().st_uid).pw_name == "mattermail", p
    # Dovecot reads the password hashes through a group of their own, and nothing more of ours.
    passwd = Path(machine.config_value("auth", "passwd_file")).stat()
    assert grp.getgrgid(passwd.st_gid).gr_name == "mattermail-auth" and stat.S_IMODE(passwd.st_mode) == 0o640
    assert grp.getgrnam("mattermail-auth").gr_mem == ["mattermail"]  # Dovecot's auth: extra_groups
    assert "mattermail" not in grp.getgrnam("dovecot").gr_mem


def test_sighup_new_disclaimer(machine):
    (machine.tmp / "disclaimer2.txt").write_text(DISCLAIMER_2 + "\n")
    machine.ctl("disclaimer", "set", "--text", str(machine.tmp / "disclaimer2.txt"))
    milter = machine.daemons["milter"]
    milter.hup_milter()
    assert milter.alive()
    msg = machine.message("package test 2", ["bob@example.test"])
    machine.submit(msg, ["bob@example.test"])
    raw = machine.sink_with(msg["Message-ID"])
    assert disclaimer_count(raw, DISCLAIMER_2) == 1 and disclaimer_count(raw, DISCLAIMER_1) == 0
    assert machine.dkim_ok(raw)


def test_sighup_broken_config_keeps_old(machine):
    pids = {n: d.pid for n, d in machine.daemons.items()}
    sizes = {n: len(d.text()) for n, d in machine.daemons.items()}
    CONF.write_text(machine.good_config.replace("[milter]\n", "[milter]\nno_such_key = 1\n", 1))
    try:
        for d in machine.daemons.values():
            d.hup()

        def logged() -> bool:
            return all("no_such_key" in d.text()[sizes[n]:] for n, d in machine.daemons.items())
        wait_for(logged, 10, "every daemon logging why the new config was refused")
        for n, d in machine.daemons.items():
            assert d.alive() and d.pid == pids[n], n
        msg = machine.message("package test 3", ["bob@example.test"])
        machine.submit(msg, ["bob@example.test"])
        raw = machine.sink_with(msg["Message-ID"])
        assert machine.dkim_ok(raw) and disclaimer_count(raw, DISCLAIMER_2) == 1
    finally:
        CONF.write_text(machine.good_config)
        for d in machine.daemons.values():
            if d.alive():
                d.hup()


def test_started_as_root_drops_to_mattermail(machine):
    machine.start_daemons(as_root=True)
    uid = pwd.getpwnam("mattermail").pw_uid
    for name, d in machine.daemons.items():
        ids = proc_ids(d.pid)
        assert set(ids["Uid"]) == {uid} and set(ids["Gid"]) == {pwd.getpwnam("mattermail").pw_gid}, (name, ids)
    msg = machine.message("package test 4", ["bob@example.test", "4242@matters.lawfirm.test"])
    machine.submit(msg, ["bob@example.test", "4242@matters.lawfirm.test"])
    raw = machine.sink_with(msg["Message-ID"])
    assert machine.dkim_ok(raw)


def test_unwire_leaves_postfix_working(machine):
    machine.stop_daemons()
    r = run(UNWIRE)
    left = run("postconf", "-n").stdout
    assert "mattermail" not in left, r.stdout + "\n---\n" + left
    assert "pkgtest-transport" in run("postconf", "-h", "transport_maps").stdout  # the admin's own table stays
    assert run("postconf", "-M", "submission/inet").stdout.strip() == ""
    ok = run("postfix", "check", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    run("postfix", "reload")
    time.sleep(1)
    wait_for(lambda: banner(25), 20, "Postfix on port 25 after the reload")
    with smtplib.SMTP("127.0.0.1", 25, timeout=30) as c:
        c.ehlo("client.test")
        c.sendmail("someone@example.test", ["postmaster@localhost"], b"Subject: after unwire\r\n\r\nhi\r\n")
    machine.unwired = True
