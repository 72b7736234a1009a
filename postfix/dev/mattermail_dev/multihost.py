"""Several hosts on one machine: Postfix edges, one router host and one PostgreSQL store (issue 16).

Each "host" is a :class:`~mattermail_dev.devstack.Stack` with its own state directory, config and free
ports on 127.0.0.1; what makes them hosts of one deployment is what they share and how they are wired:

* the **database**: a private PostgreSQL cluster (:mod:`mattermail_dev.pgcluster`), database
  ``mattermail``; every host's ``[store] url`` names it;
* the **router host**: ``mattermail-router`` listening on TCP (its ``router.listen``), plus "the
  internet" of the tests: the DNS server and the sink, which the edges use too;
* each **edge**: its own Postfix instance (config directory, queue), auth-only Dovecot and
  ``mattermail-milter``; no router and no SRS daemon. Its Postfix is wired by the product's own
  ``mattermailctl postfix configure --edge --router 127.0.0.1:<router port>``: the dev templates' own
  catch-all transport and SRS maps are removed first, so catch-all mail and capture copies reach the
  router only through what that command writes. Only the submission service's listen address is then
  moved from 587 to the edge's loopback test port (as tests/unit/test_postfix_configure.py does).

What an edge gets from the router host is what docs/deployment.md lists: the capture secret (the
router checks the HMAC in each capture address), the DKIM keys, the database URL; its users' SASL
and sender-login files come from the database (``mattermailctl user sync``).

    hosts = MultiHost(Path("/tmp/mm"), edges=2)
    hosts.start()
    ...
    hosts.stop()
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from mattermail_dev import pgcluster
from mattermail_dev.devstack import BIN, PG_DATABASE, Ports, Stack, StackError

# main.cf parameters of the dev templates that an edge does not have: the catch-all transport (configure
# --edge writes its own) and the SRS maps (no SRS daemon on an edge).
EDGE_DROPS = ("transport_maps", "sender_canonical_maps", "sender_canonical_classes", "recipient_canonical_maps",
              "recipient_canonical_classes", "smtpd_recipient_restrictions")


class MultiHost:
    def __init__(self, root: Path, edges: int = 2) -> None:
        self.root = Path(root)
        self.cluster: pgcluster.Cluster | None = None
        self.router: Stack | None = None
        self.edges: list[Stack] = []
        self.n_edges = edges

    # -- start and stop -------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.cluster = pgcluster.start(parent=self.root)
        self.cluster.create_database(PG_DATABASE)
        self.router = Stack(self.root / "router", Ports.free(), store="postgresql", pg_port=self.cluster.port)
        self.router.prepare()
        self.router.start_dns()
        self.router.start_sink()
        self.router.start_router()  # migrates the new database
        for i in range(1, self.n_edges + 1):
            self.edges.append(self._start_edge(i))

    def _start_edge(self, i: int) -> Stack:
        assert self.router is not None and self.cluster is not None
        r = self.router
        # DNS and "the internet" (the sink) are the router host's; everything else is the edge's own.
        ports = dataclasses.replace(Ports.free(), dns=r.ports.dns, sink=r.ports.sink)
        edge = Stack(self.root / f"edge{i}", ports, store="postgresql", pg_port=self.cluster.port)
        edge.var.mkdir(parents=True, exist_ok=True)
        # What an edge takes from the router host: the capture secret and the DKIM keys (their DNS zone too,
        # so the edge does not make keys of its own).
        shutil.copy2(r.var / "capture.key", edge.var / "capture.key")
        shutil.copytree(r.var / "dkim", edge.var / "dkim")
        edge.dns_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(r.dns_dir / "lawfirm.test-dkim.zone", edge.dns_dir / "lawfirm.test-dkim.zone")
        edge.prepare()
        text = edge.config.read_text()
        text, n = re.subn(r'(?m)^(\[srs\]\n)listen = "[^"]*"\n', r'\1listen = ""\n', text)
        assert n == 1, "the dev template's [srs] listen line moved"
        edge.config.write_text(text)

        self.postconf(edge, "-X", *EDGE_DROPS)
        self.postconf(edge, "-e", f"myhostname=edge{i}.lawfirm.test")
        self.postconf(edge, "-MX", f"127.0.0.1:{ports.submission}/inet")  # configure adds submission/inet
        r_cfg = self.ctl(edge, "postfix", "configure", "--edge", "--router", f"127.0.0.1:{r.ports.lmtp}")
        if r_cfg.returncode != 0:
            raise StackError(f"edge{i}: postfix configure --edge failed: {r_cfg.stdout}{r_cfg.stderr}")
        self.postconf(edge, "-F", f"submission/inet/service=127.0.0.1:{ports.submission}")

        edge.start_milter()
        edge.start_postfix()
        edge.start_dovecot()
        return edge

    def stop(self) -> None:
        for s in [*self.edges, *([self.router] if self.router else [])]:
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - stop the rest; say which one failed
                print(f"multihost: stopping {s.var} failed: {e}")
        if self.cluster is not None:
            self.cluster.stop()

    # -- what the tests do ------------------------------------------------------------------------
    @staticmethod
    def postconf(stack: Stack, *args: str) -> str:
        r = subprocess.run(["postconf", "-c", str(stack.etc), *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(f"postconf -c {stack.etc} {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    @staticmethod
    def ctl(stack: Stack, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "mattermailctl"), "--config", str(stack.config), *args], input=input,
                              capture_output=True, text=True, timeout=120)

    def db_url(self) -> str:
        assert self.router is not None
        return self.router.pg_url()

    def kill_router(self) -> int:
        """SIGKILL the router (no clean shutdown); its pid."""
        assert self.router is not None
        pid = int((self.router.run_dir / "router.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        return pid

    def start_router(self) -> None:
        assert self.router is not None
        self.router.start_router()

    def postqueue(self, edge: Stack, *args: str) -> str:
        return subprocess.run(["postqueue", "-c", str(edge.etc), *args], capture_output=True, text=True,
                              check=True).stdout
