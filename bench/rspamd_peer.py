"""A private Rspamd (Debian's package) as a milter, for bench/inbound and bench/outbound.

Rspamd's own milter: the ``rspamd_proxy`` worker with ``milter = yes`` and a
``self_scan`` upstream (the proxy scans the message itself, no separate
normal worker). Only the modules the comparison needs are loaded: our own
top-level ``rspamd.conf`` (not Debian's, whose ``modules.conf`` loads every
module with a config section) with ``filters = "dkim"`` (the C module: DKIM
verification, and the signer behind ``dkim_signing``), no ``explicit_modules``
and no ``lua = rspamd.lua`` (no regexp/header rules), plus config sections for
exactly:

  verify   spf, dmarc and milter_headers (one Authentication-Results,
           ``authentication-results`` routine only)
  sign     dkim_signing (the given keys, relaxed/relaxed as Rspamd always signs)

Everything else (redis, bayes/statistics, fuzzy, neural, rbl, multimap,
phishing, ...) has no section and is not loaded; the log shows which modules
were initialised (``check_modules`` asserts it). Debian's metrics, actions and
groups are included for the symbols' scores only.

DNS: Rspamd has no DNS cache of its own (its docs ask for a local caching
resolver); the dkim module's key cache and the spf module's record cache are
its in-process caches (``cache_size`` sizes both; 0 in the uncached terms).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

__all__ = ["Rspamd", "RSPAMD_PACKAGES", "rspamd_key_file", "rspamd_version"]

RSPAMD_PACKAGES = ("rspamd",)


def rspamd_key_file(pem: Path, folder: Path) -> Path:
    """The key as Rspamd reads it: RSA as the PEM file itself; Ed25519 in Rspamd's own format (what
    ``rspamadm dkim_keygen -t ed25519`` writes: base64 of libsodium's 64-byte secret key, seed +
    public key) -- Rspamd 3.4 does not load an Ed25519 PKCS#8 PEM. Same key, another file format."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        return pem
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    out = folder / (pem.name + ".rspamd")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(raw + pub).decode() + "\n")
    return out


def rspamd_version() -> str:
    r = subprocess.run(["rspamd", "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version\s+(\S+)", r.stdout + r.stderr)
    return m.group(1) if m else "?"


class Rspamd:
    """One private instance: its own config dir, run dir (pid, sockets, caches) and log."""

    def __init__(self, root: Path, name: str, *, mode: str, nameserver: str, socket: str,
                 authserv: str = "mx.lawfirm.test", cache: bool = True, count: int = 2,
                 keys: list[tuple[str, str, Path]] | None = None, trusted: list[str] | None = None) -> None:
        """``socket``: ``unix:/path`` or ``inet:127.0.0.1:PORT`` (as Postfix names it); ``nameserver``:
        ``addr:port``; ``keys`` (sign mode): (domain, selector, private key file) triples."""
        if mode not in ("verify", "sign"):
            raise ValueError(mode)
        self.root, self.name, self.mode = root, name, mode
        self.dir = root / name
        self.conf = self.dir / "rspamd.conf"
        self.logfile = self.dir / "rspamd.log"
        self.socket, self.nameserver, self.authserv = socket, nameserver, authserv
        self.cache, self.count, self.keys = cache, count, keys or []
        self.trusted = trusted or []
        self.proc: subprocess.Popen | None = None

    def _bind(self) -> str:
        if self.socket.startswith("unix:"):
            return f'"{self.socket[5:]} mode=0666"'
        return f'"{self.socket[5:]}"'

    def config(self) -> str:
        d, cs = self.dir, 0 if not self.cache else 2048
        if self.mode == "verify":
            modules = f"""
# Verification: SPF, DKIM (the C module), DMARC; one Authentication-Results. Mail from loopback is
# "local" to Rspamd: check it anyway (the bench's "internet" is 127.0.0.2).
dkim {{
  check_local = true;
  check_authed = true;
  dkim_cache_size = {cs};
}}
spf {{
  check_local = true;
  check_authed = true;
  spf_cache_size = {cs};
}}
dmarc {{
  check_local = true;
  check_authed = true;
  reporting {{ enabled = false; }}
  actions {{ }}
}}
milter_headers {{
  use = ["authentication-results"];
  skip_local = false;
  skip_authenticated = false;
  extended_spam_headers = false;
  routines {{
    authentication-results {{
      header = "Authentication-Results";
      remove = 0;
      add_smtp_user = false;
    }}
  }}
}}
"""
        else:
            domains: dict[str, list[tuple[str, Path]]] = {}
            for dom, sel, path in self.keys:
                domains.setdefault(dom, []).append((sel, rspamd_key_file(path, self.dir)))
            sel_conf = "\n".join(
                f"    {dom} {{\n      selectors = [\n"
                + ",\n".join(f'        {{ selector = "{sel}"; path = "{path}"; }}' for sel, path in sels)
                + "\n      ];\n    }" for dom, sels in domains.items())
            modules = f"""
# Signing only: the dkim_signing module with every key of the domain (one signature per selector).
dkim {{
  dkim_cache_size = {cs};
}}
dkim_signing {{
  sign_local = true;
  sign_authenticated = true;
  sign_networks = [{", ".join(f'"{n}"' for n in self.trusted)}];
  use_domain = "header";
  use_esld = false;
  allow_hdrfrom_mismatch = false;
  allow_username_mismatch = true;
  try_fallback = false;
  domain {{
{sel_conf}
  }}
}}
"""
        return f"""# Private Rspamd of the mattermail benches ({self.name}, {self.mode}); generated, removed afterwards.
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
modules {{
  path = "${{PLUGINSDIR}}";
}}
options {{
  pidfile = "{d}/rspamd.pid";
  filters = "dkim";
  explicit_modules = [];
  check_all_filters = false;
  cache_file = "{d}/symbols.cache";
  dynamic_conf = "{d}/rspamd_dynamic";
  history_file = "{d}/rspamd.history";
  stats_file = "{d}/stats.ucl";
  hs_cache_dir = "{d}/";
  tempdir = "{d}";
  url_tld = "${{SHAREDIR}}/effective_tld_names.dat";
  local_addrs = [];
  task_timeout = 20s;
  dns {{
    nameserver = ["{self.nameserver}"];
    timeout = 3s;
    retransmits = 1;
    sockets = 16;
  }}
}}
logging {{
  type = "file";
  filename = "{self.logfile}";
  level = "notice";
}}
worker "rspamd_proxy" {{
  bind_socket = {self._bind()};
  milter = yes;
  timeout = 120s;
  upstream "local" {{
    default = yes;
    self_scan = yes;
  }}
  count = {self.count};
  max_retries = 5;
  discard_on_reject = false;
  quarantine_on_reject = false;
  reject_message = "Spam message rejected";
  spam_header = "X-Spam";
}}
{modules}"""

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)  # Postfix (user postfix) must reach a unix socket in it
        self.conf.write_text(self.config())
        out = open(self.dir / "stdout.log", "ab")
        # -f: no fork (we own it, its process group ends with it); -i: run as root (the bench's user)
        self.proc = subprocess.Popen(["rspamd", "-f", "-i", "-u", "root", "-g", "root", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"rspamd ({self.name}) exited ({self.proc.returncode if self.proc else '-'}): "
                               + self.tail(20))
        if self.socket.startswith("unix:"):
            return Path(self.socket[5:]).exists()
        from benchpeers import listening
        return listening(int(self.socket.rsplit(":", 1)[1]))

    def modules(self) -> str:
        """The modules this config enables, as Rspamd itself reports them (``rspamadm configdump -m``)."""
        r = subprocess.run(["rspamadm", "configdump", "-c", str(self.conf), "-m"], capture_output=True, text=True,
                           timeout=60, check=False)
        m = re.search(r"(?m)^Modules enabled: (.*)$", r.stdout)
        if not m:
            raise RuntimeError(f"rspamadm configdump -m ({self.name}): {r.stdout[-300:]}{r.stderr[-300:]}")
        return ", ".join(sorted(x.strip() for x in m.group(1).split(",") if x.strip()))

    def pids(self) -> list[int]:
        """The main process and its workers (CPU accounting)."""
        if self.proc is None:
            return []
        out = [self.proc.pid]
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == str(self.proc.pid):
                    out.append(int(p.name))
        return out

    def stop(self) -> None:
        p = self.proc
        if p and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def tail(self, n: int = 10) -> str:
        parts = []
        for f in (self.logfile, self.dir / "stdout.log"):
            try:
                parts += f.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(parts[-n:])
