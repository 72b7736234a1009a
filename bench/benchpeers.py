"""Helpers shared by the end-to-end benches (bench/router, bench/outbound): Debian packages installed
at bench time, and a private LMTP-only Dovecot delivering into one Maildir.

Imported by the bench scripts after they put this folder on ``sys.path`` (they run with ``python -P``).
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Dovecot", "MAILBOX_GROUP", "MAILBOX_USER", "SEARCH_WORD", "children_cpu", "ensure_packages",
           "free_port", "journaled_scratch", "listening", "package_version", "wait_for"]

MAILBOX_USER = "nobody"  # owner of the Maildirs (virtual(8) and Dovecot)
MAILBOX_GROUP = "nogroup"
# smtp-source's body lines are "1XXX...X" (79 characters): fts-xapian indexes no word that long, so
# Dovecot is searched for this substring (partial=3 full=20).
SEARCH_WORD = "XXXXXXXXXX"


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def wait_for(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def workers_text(workers: int) -> str:
    """mattermail's milter.workers as the run used it: ``0 (one per CPU: 2 processes)``."""
    from mattermail import config
    from mattermail.milter.__main__ import worker_count

    n = worker_count(config.from_dict({"milter": {"workers": workers}}))
    return f"{workers} ({'one per CPU: ' if workers == 0 else ''}{n} process{'' if n == 1 else 'es'})"


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_machine() -> float:
    """Seconds of every CPU's busy time so far (/proc/stat: user, nice, system, irq, softirq, steal; not idle
    or iowait): what per-process columns leave out too -- a load generator, kernel threads (writeback, the
    journal), anything else running. Per message, 2 CPUs saturated read 2000 / (msgs/s) ms."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8)) / os.sysconf("SC_CLK_TCK")


def package_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
    return r.stdout.strip() or "?"


def ensure_packages(pkgs: tuple[str, ...]) -> list[str]:
    """Install the missing Debian packages (apt-get, no recommends); returns what it installed."""
    def installed(p: str) -> bool:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False)
        return r.returncode == 0 and r.stdout.strip() == "install ok installed"

    missing = [p for p in pkgs if not installed(p)]
    if not missing:
        return []
    log(f"installing {' '.join(missing)}: apt-get install -y --no-install-recommends {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(20):  # apt may be busy with another session's install: wait, bounded
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env,
                           capture_output=True, text=True, check=False)
        if r.returncode == 0:
            break
        if "Could not get lock" not in r.stderr and "Unable to acquire" not in r.stderr:
            raise RuntimeError(f"apt-get install {' '.join(missing)} failed (exit {r.returncode}): {r.stderr[-800:]}")
        log(f"   apt is busy (attempt {attempt + 1}/20), retrying in 15 s")
        time.sleep(15)
    else:
        raise RuntimeError(f"apt-get install {' '.join(missing)}: apt stayed busy for 5 minutes")
    for line in r.stdout.splitlines():
        if line.startswith("Setting up "):
            log(f"   {line}")
    still = [p for p in missing if not installed(p)]
    if still:
        raise RuntimeError(f"apt-get install reported success but {', '.join(still)} is not installed")
    return missing



# -- the file system the stack runs on ------------------------------------------------------
def _has_journal(path: Path) -> bool | None:
    """Whether the ext4 file system holding ``path`` has a journal (None: not ext4, or not known)."""
    try:
        dev = os.stat(path).st_dev
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            f = line.split()
            major, minor = (int(x) for x in f[2].split(":"))
            if os.makedev(major, minor) != dev:
                continue
            fstype, source = f[f.index("-") + 1], f[f.index("-") + 2]
            if fstype != "ext4":
                return None
            task = Path(f"/sys/fs/ext4/{Path(source).name}/journal_task").read_text().strip()
            return task != "<none>"
    except (OSError, ValueError, IndexError):
        return None
    return None


def _run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout.strip()


@contextmanager
def journaled_scratch(bench: str, in_place: bool, keep: bool, size_gb: int = 8) -> Iterator[tuple[Path, str]]:
    """A folder for the stack (Postfix's queue, the store, the Maildirs of every configuration) on ext4 with a
    journal, as a production mail host has; yields (folder, a line saying what it is).

    Why: on ext4 *without* a journal (this project's 2-core machines) every file created looks past each
    inode freed in the last 5-35 s (``recently_deleted()`` in the kernel's inode allocator, which only runs
    when there is no journal). A bench that deletes thousands of queue files (the SMTP path's held mail at
    each drain; discard(8) and delivery all run long) then pays a cost that grows with the deletion rate:
    measured with ``perf record -a`` in bench/outbound, 5-18% of all CPU in one configuration's run, more
    for the faster configuration and for whichever ran right after a drain. A journaled file system has no
    such scan, and it is what Debian's installer makes.

    So, as root and where the kernel has loop devices: a sparse image under the temp folder, a loop device
    over it with direct I/O (the host's page cache is not a second cache in front of the "disk"; an fsync
    reaches the image's disk), ``mkfs.ext4`` with its defaults (journal, data=ordered) and the inode tables
    written now, not by a background thread during the runs; removed afterwards (kept mounted with
    ``keep``). ``in_place`` (or no loop device): the temp folder as it is, said in the line."""
    base = Path(tempfile.gettempdir())

    def as_it_is(why: str) -> tuple[Path, str]:
        j = _has_journal(base)
        kind = "ext4 with a journal" if j else "ext4 WITHOUT a journal" if j is False else "not ext4"
        return base, f"file system: {base} as it is ({why}): {kind}"

    if in_place or not Path("/dev/loop-control").exists() or not shutil.which("losetup"):
        yield as_it_is("--in-place" if in_place else "no loop device here")
        return
    fd, name = tempfile.mkstemp(prefix=f"mattermail-{bench}-fs-", suffix=".img", dir=base)
    os.close(fd)
    image = Path(name)
    mnt = Path(tempfile.mkdtemp(prefix="mmfs-", dir=base))  # short: Dovecot's unix sockets live below it
    dev = ""
    mounted = False
    try:
        os.truncate(image, size_gb << 30)
        try:
            dev = _run("losetup", "--direct-io=on", "--sector-size", "4096", "-f", "--show", str(image))
            dio = "direct I/O"
        except RuntimeError:  # a file system under the image without O_DIRECT: through the page cache
            dev = _run("losetup", "-f", "--show", str(image))
            dio = "buffered (no direct I/O on the image's file system)"
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
        _run("mount", dev, str(mnt))
        mounted = True
        os.chmod(mnt, 0o755)
        made = (mnt, f"file system: ext4 with a journal (mkfs.ext4 defaults, data=ordered) on {dev}, {dio}, "
                     f"over a sparse {size_gb} GB image in {base}: every configuration's queue, store and "
                     "Maildir on it (the machine's own may lack a journal; see bench/README)")
    except (OSError, RuntimeError) as e:  # no room, no permission to mount (a container): run in place, say so
        log(f"{bench}: cannot make a journaled file system for the stack ({e}); running in {base} as it is")
        _remove_scratch(bench, image, mnt, dev, mounted)
        yield as_it_is(f"no journaled file system of its own: {e}")
        return
    try:
        yield made
    finally:
        if keep and mounted:
            log(f"{bench}: the stack's file system stays mounted at {mnt}: "
                f"umount {mnt} && losetup -d {dev} && rm {image}")
        else:
            _remove_scratch(bench, image, mnt, dev, mounted)


def _remove_scratch(bench: str, image: Path, mnt: Path, dev: str, mounted: bool) -> None:
    if mounted:
        for _ in range(20):  # a process of the stack may still be closing its files
            if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            log(f"{bench}: could not unmount {mnt}; left mounted ({dev}, {image})")
            return
    if dev:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    image.unlink(missing_ok=True)
    try:
        mnt.rmdir()
    except OSError:
        pass


# -- a private Dovecot: LMTP into one catch-all Maildir -------------------------------------
class Dovecot:
    """One private Dovecot instance (own base_dir, config, log) delivering every LMTP recipient into one
    Maildir as user nobody (one static user, ``user``); with ``fts``, fts-xapian indexes it."""

    def __init__(self, root: Path, name: str, fts: bool, user: str = "catchall", bench: str = "bench/router") -> None:
        self.name, self.fts, self.user, self.bench = name, fts, user, bench
        self.dir = root / f"bench-{name}"  # not root / "dovecot": the stack's own (auth-only) Dovecot
        self.conf = self.dir / "dovecot.conf"
        self.maildir = self.dir / "Maildir"
        self.home = self.dir / "home"
        self.logfile = self.dir / "dovecot.log"
        self.port = 0
        self.search_cpu = 0.0  # CPU seconds spent in doveadm search (our children)

    def config(self) -> str:
        pw, gr = pwd.getpwnam(MAILBOX_USER), grp.getgrnam(MAILBOX_GROUP)
        d = self.dir
        fts = f"""
# Full-text search: fts-xapian, indexed in the background after each delivery (fts_autoindex).
mail_plugins = $mail_plugins fts fts_xapian
plugin {{
  fts = xapian
  fts_xapian = partial=3 full=20 verbose=0
  fts_autoindex = yes
  fts_enforced = yes
}}
service indexer-worker {{
  vsz_limit = 2G
}}
""" if self.fts else ""
        return f"""# Private LMTP-only Dovecot of {self.bench} ({self.name}); generated, removed with the bench's temp dir.
protocols = lmtp
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mattermail-bench-{self.name}
log_path = {self.logfile}
ssl = no
# Durability: Dovecot's defaults (mail_fsync = optimized: the new mail file is fsynced before the 250).
mail_location = maildir:{self.maildir}
# Auth needs a passdb even when only LMTP's userdb lookups are made: an empty passwd-file.
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
# Every recipient is the one static user, with one Maildir.
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={gr.gr_gid} home={self.home} user={self.user} allow_all_users=yes
}}
lmtp_rcpt_check_quota = no
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
{fts}"""

    def start(self) -> None:
        pw, gr = pwd.getpwnam(MAILBOX_USER), grp.getgrnam(MAILBOX_GROUP)
        for p in (self.dir / "run", self.dir / "state"):
            p.mkdir(parents=True, exist_ok=True)
        for p in (self.maildir, self.home):
            p.mkdir(parents=True, exist_ok=True)
            os.chown(p, pw.pw_uid, gr.gr_gid)
        (self.dir / "passwd").write_text("")
        self.port = free_port()
        self.conf.write_text(self.config())
        with open(self.logfile, "ab") as out:  # it daemonizes with our stdout: give it the log file
            r = subprocess.run(["dovecot", "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, check=False)
        if r.returncode:
            raise RuntimeError(f"dovecot ({self.name}) failed to start (exit {r.returncode}): {self.tail()}")
        wait_for(lambda: listening(self.port), 20, f"dovecot ({self.name}) LMTP on 127.0.0.1:{self.port}")
        wait_for(self.socket.exists, 20, f"dovecot ({self.name}) LMTP on {self.socket}")

    @property
    def socket(self) -> Path:
        """Its LMTP unix socket: Dovecot's own ``service lmtp`` listener (``unix_listener lmtp``, mode 0666, in
        base_dir), the one Postfix usually delivers to (``lmtp:unix:private/dovecot-lmtp`` in its docs)."""
        return self.dir / "run" / "lmtp"

    def pid(self) -> int | None:
        try:
            pid = int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _stat(pid) else None

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _stat(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def files(self) -> list[Path]:
        out: list[Path] = []
        for sub in ("new", "cur"):
            try:
                out += [e for e in (self.maildir / sub).iterdir()]
            except FileNotFoundError:
                pass
        return out

    def count(self) -> int:
        n = 0
        for sub in ("new", "cur"):
            try:
                n += len(os.listdir(self.maildir / sub))
            except FileNotFoundError:
                pass
        return n

    def search(self, word: str = SEARCH_WORD) -> int:
        """Messages that ``doveadm search`` finds through the index by a word of every body."""
        c0 = children_cpu()
        r = subprocess.run(["doveadm", "-c", str(self.conf), "search", "-u", self.user, "mailbox", "INBOX",
                            "body", word], capture_output=True, text=True, timeout=120, check=False)
        self.search_cpu += children_cpu() - c0
        if r.returncode:
            raise RuntimeError(f"doveadm search ({self.name}) exited {r.returncode}: {r.stderr[-500:]}")
        return sum(1 for line in r.stdout.splitlines() if line.strip())
