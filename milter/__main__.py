"""mattermail-milter: the daemon Postfix calls for every message.

libmilter runs in its own thread; the main thread only handles signals.
(libmilter's own signal thread would treat SIGHUP as "stop"; started from a
non-main thread it blocks the signals in its threads only, and the kernel
hands a process signal to the main thread, which does not block them -- as a
rule: with a signal already pending there, it may pick libmilter's thread,
which then stops. With workers, the supervisor therefore passes signals on
thread-directed, to each worker's main thread: see signal_main_thread.)

* SIGHUP: load the config again, with keys and the capture secret. New SMTP
  sessions get the new runtime; sessions in flight finish on the one they
  started with. A config, key table or secret that does not load is logged
  and the old runtime stays.
* SIGTERM / SIGINT: libmilter stops accepting and the process exits.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

import Milter

from mattermail import config as configmod
from mattermail import daemon
from mattermail import capture
from mattermail.milter.app import MatterMilter
from mattermail.milter.runtime import Runtime

log = logging.getLogger("mattermail.milter")


def _nodelay_on_listener(address: tuple[str, int]) -> None:
    """Set TCP_NODELAY on libmilter's listening socket (accepted sockets inherit it on Linux).

    At end of message a milter sends several small replies in a row (add
    recipient, replace body, insert header, accept). With Nagle's algorithm
    each waits for the ACK of the one before, which Postfix delays by ~40 ms:
    measured +86 ms per message over TCP (for OpenDKIM too), +2 ms over a
    unix socket. libmilter creates the socket without a hook, so we wrap the
    call that starts serving and set the option on the bound socket first.
    """
    import milter as libmilter  # pymilter's C extension

    original_main = libmilter.main

    def main_with_nodelay() -> None:
        for name in os.listdir("/proc/self/fd"):
            try:
                s = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                continue
            try:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and s.getsockname()[1] == address[1]:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    log.info("TCP_NODELAY set on the milter listener")
            except OSError:
                pass  # not a TCP socket
            finally:
                s.close()
        original_main()

    libmilter.main = main_with_nodelay


PROG = "mattermail-milter"


class RuntimeLoadError(Exception):
    """The config's keys or capture secret cannot be used; the message says which."""


def load_runtime(cfg: configmod.Config) -> Runtime:
    """A Runtime for ``cfg`` whose DKIM key table and capture secret are loaded."""
    rt = Runtime(cfg)
    try:
        rt.load_keys()
    except Exception as e:
        raise RuntimeLoadError(f"dkim.keys_dir: cannot load DKIM keys from {cfg.dkim.keys_dir}: {e}") from None
    if cfg.capture.address:
        try:
            rt.capture_secret()
        except capture.CaptureError as e:
            raise RuntimeLoadError(f"capture.secret_file: {e}") from None
    return rt


class Sessions:
    """Hands each new SMTP session the current runtime; SIGHUP swaps it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        MatterMilter.runtime = runtime

    def new(self) -> MatterMilter:
        m = MatterMilter()
        m.runtime = self.runtime  # the whole session sees one config, even across a reload
        return m

    def reload(self, path) -> bool:
        running = self.runtime.config
        cfg = daemon.reload_config(path, running)
        if cfg is None:
            return False
        if (cfg.milter.socket, cfg.milter.timeout, cfg.milter.workers) != (
                running.milter.socket, running.milter.timeout, running.milter.workers):
            log.warning("reload: milter.socket/timeout/workers changed; that takes a restart (still %s)",
                        running.milter.socket)
        try:
            runtime = load_runtime(cfg)
        except RuntimeLoadError as e:
            log.error("reload refused, still running with the previous configuration: %s", e)
            return False
        if not daemon.apply_logging(PROG, cfg, running):
            return False
        self.runtime = runtime
        MatterMilter.runtime = runtime
        log.info("reloaded %s: %d DKIM signing domain(s)", cfg.source, len(runtime.signing_keys()))
        return True


def _wake_listener(kind: str, where) -> None:
    """Connect once to our own socket, which ends libmilter's select() at once."""
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(str(where))
        else:
            host, port = where
            socket.create_connection((host or "127.0.0.1", port), timeout=1).close()
    except OSError:
        pass  # already gone: nothing to wake


def libmilter_stop() -> None:
    import milter as libmilter  # pymilter's C extension

    libmilter.stop()


def _listener(cfg: configmod.Config) -> tuple[str, str, Any]:
    """libmilter's connection spec for ``milter.socket``, with its kind and address."""
    sock = cfg.milter.socket
    kind, where = daemon.parse_listen(sock)
    if kind == "unix":
        os.makedirs(os.path.dirname(str(where)), exist_ok=True)
        return sock, kind, where
    host, port = where  # type: ignore[misc]
    return f"inet:{port}@{host}", kind, where  # libmilter writes port@host; Postfix host:port


def _serve(cfg: configmod.Config, sessions: Sessions, kind: str, where: Any, start: Callable[[], None]) -> int:
    """Run ``start`` (libmilter's accept loop) in a thread; the calling thread handles SIGHUP
    (reload) and SIGTERM/SIGINT (stop). The exit status."""
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            start()
        except BaseException as e:  # reported by the main thread
            failure.append(e)

    # The handlers only set a flag, which takes no lock: a handler that took one (Event.set) would
    # deadlock when the next signal of a burst interrupted it, holding that lock, in the same thread.
    got = {"hup": False, "stop": False}
    signal.signal(signal.SIGHUP, lambda *_: got.__setitem__("hup", True))
    signal.signal(signal.SIGTERM, lambda *_: got.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: got.__setitem__("stop", True))
    server = threading.Thread(target=serve, name="libmilter")
    server.start()
    stopping = False
    while server.is_alive():
        server.join(0.2)
        if got["hup"]:
            got["hup"] = False  # a SIGHUP from now on asks for one more reload
            sessions.reload(cfg.source)
        if got["stop"] and not stopping:
            stopping = True
            log.info("stopping")
            # smfi_stop() waits for the listener's lock, which libmilter holds through its select()
            # (timeout ~5 s): stop from a helper thread and wake the select with connections meanwhile.
            stopper = threading.Thread(target=libmilter_stop, name="stop", daemon=True)
            stopper.start()
            while stopper.is_alive():
                _wake_listener(kind, where)
                stopper.join(0.05)
    if failure:
        log.error("libmilter failed: %s", failure[0])
        return 1
    if not stopping:
        log.error("libmilter stopped by itself (signal not handled by the main thread?)")
        return 1
    log.info("stopped")
    return 0


def signal_main_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to the main thread of process ``pid`` (thread-directed, glibc's tgkill).

    A worker's libmilter runs a thread of its own that sigwait()s on SIGHUP, SIGTERM and SIGINT
    and takes any of them as "stop". A process-directed signal (kill) goes to whichever thread
    the kernel picks: the main thread as a rule, but libmilter's thread when the main thread
    already has a signal pending (a burst), and a SIGHUP meant as "reload" then stopped the
    worker. A thread-directed signal can only be taken by the thread it names.
    """
    import ctypes

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)  # glibc >= 2.30
    if tgkill is None:
        os.kill(pid, sig)
        return
    if tgkill(pid, pid, sig) != 0:  # a process's main thread has the process's id
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def worker_count(cfg: configmod.Config) -> int:
    """How many processes serve: ``milter.workers``, or with 0 one per CPU this process may run on
    (its affinity, as systemd's CPUAffinity= or a container's cpuset leave it), at most
    ``MAX_MILTER_WORKERS``."""
    return cfg.milter.workers or max(1, min(len(os.sched_getaffinity(0)), configmod.MAX_MILTER_WORKERS))


def worker_cpu(cfg: configmod.Config, number: int) -> int | None:
    """The one CPU worker ``number`` (from 1) keeps to with ``milter.workers = 0`` (one per CPU): the
    ``number``-th CPU this process may run on. A worker runs Python under its own interpreter lock, so it
    uses about one CPU at most; kept to one, its session threads hand the lock to each other on that
    CPU, with their caches, instead of being woken across CPUs (bench/outbound end to end: 1.04-1.05 ms
    of milter CPU per message against 1.10-1.16). None with a count set by hand (fewer workers than CPUs:
    the scheduler places them) or a single CPU."""
    if cfg.milter.workers:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[(number - 1) % len(cpus)] if len(cpus) > 1 else None


def _keep_to(cpu: int | None, number: int) -> int | None:
    """Keep this process (its one thread now; the threads it starts inherit it) to ``cpu``; the CPU, or None
    when there is none or the kernel refuses (said in the log: the scheduler places the worker)."""
    if cpu is None:
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        log.warning("worker %d: cannot keep to CPU %d (%s); the scheduler places it", number, cpu, e)
        return None
    return cpu


def _die_with_parent(parent: int) -> None:
    """A worker gets SIGTERM (and stops as on any SIGTERM) when the parent dies, even by SIGKILL.
    A parent already gone before this ran (the signal would never come) ends the worker here."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit("the parent process ended before this worker started")


def _worker(cfg: configmod.Config, kind: str, where: Any, number: int, count: int, parent: int,
            accept_loop: Callable[[], None]) -> typing.NoReturn:
    """One forked worker: a runtime of its own (store connections, DNS cache, keys), libmilter's
    accept loop on the socket the parent opened. Never returns."""
    status = 1
    try:
        _die_with_parent(parent)
        cpu = _keep_to(worker_cpu(cfg, number), number)  # before any thread starts
        for h in logging.getLogger().handlers:  # syslog lines carry the worker's own pid
            if isinstance(h, logging.handlers.SysLogHandler):
                h.ident = f"{PROG}[{os.getpid()}]: "
        sessions = Sessions(load_runtime(cfg))
        Milter.factory = sessions.new
        log.info("worker %d of %d serving%s", number, count, "" if cpu is None else f" on CPU {cpu}")
        status = _serve(cfg, sessions, kind, where, accept_loop)
    except BaseException:  # noqa: BLE001 - logged; the parent sees the status
        log.exception("worker %d failed", number)
    finally:
        logging.shutdown()
        os._exit(status)


def _prefork(cfg: configmod.Config, conn: str, kind: str, where: Any, count: int) -> int:
    """``count`` processes accepting on one listening socket, each with its own Python
    interpreter lock: ``Milter.runmilter`` sets libmilter up and opens the socket as for one
    process, and where it would enter libmilter's accept loop, the workers are forked instead."""
    import milter as libmilter  # pymilter's C extension

    accept_loop = libmilter.main  # (with TCP_NODELAY first on inet: _nodelay_on_listener)
    status = [1]

    def fork_workers() -> None:
        status[0] = _supervise(cfg, kind, where, count, accept_loop)

    libmilter.main = fork_workers
    Milter.runmilter("mattermail", conn, timeout=cfg.milter.timeout)
    return status[0]


def _pass_on(pid: int, sig: int) -> None:
    """``sig`` to a worker's main thread; a worker already gone is reaped by the loop."""
    try:
        signal_main_thread(pid, sig)
    except ProcessLookupError:
        pass


def _supervise(cfg: configmod.Config, kind: str, where: Any, count: int,
               accept_loop: Callable[[], None]) -> int:
    """Fork the workers, then forward SIGHUP and SIGTERM/SIGINT to their main threads; a worker that exits on its
    own ends the group (status 1, for systemd to restart), as a crashed milter would."""
    workers: dict[int, int] = {}
    parent = os.getpid()
    for number in range(1, count + 1):
        pid = os.fork()
        if pid == 0:
            _worker(cfg, kind, where, number, count, parent, accept_loop)
        workers[pid] = number
    pending: list[int] = []
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: pending.append(s))
    status, stopping = 0, False
    while workers:
        for sig in pending[:]:
            pending.remove(sig)
            if sig == signal.SIGHUP:
                log.info("reload: passing SIGHUP to %d worker(s)", len(workers))
            elif not stopping:
                stopping = True
                log.info("stopping %d worker(s)", len(workers))
            for pid in workers:
                _pass_on(pid, signal.SIGHUP if sig == signal.SIGHUP else signal.SIGTERM)
        try:
            pid, wstatus = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
            continue
        number = workers.pop(pid)
        code = os.waitstatus_to_exitcode(wstatus)
        if not stopping:
            log.error("worker %d (pid %d) ended with status %d; stopping the others", number, pid, code)
            status, stopping = 1, True
            for other in workers:
                _pass_on(other, signal.SIGTERM)
        elif code != 0:
            status = 1
    log.info("stopped")
    return status


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start(PROG, "Postfix milter: capture, disclaimers, DKIM, SPF/DKIM/DMARC", argv)
    try:
        runtime = load_runtime(cfg)
    except RuntimeLoadError as e:
        daemon.fatal(PROG, str(e))
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.ADDRCPT_PAR
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    conn, kind, where = _listener(cfg)
    if kind == "inet":
        _nodelay_on_listener(where)  # type: ignore[arg-type]
    count = worker_count(cfg)
    how = "milter.workers" if cfg.milter.workers else "one per CPU, each kept to its own" if count > 1 else "one per CPU"
    log.info("listening on %s with %d process%s (%s)", cfg.milter.socket, count, "" if count == 1 else "es", how)
    if count > 1:  # each worker loads its own runtime; this one only checked the config
        sys.exit(_prefork(cfg, conn, kind, where, count))
    sessions = Sessions(runtime)
    Milter.factory = sessions.new
    sys.exit(_serve(cfg, sessions, kind, where,
                    lambda: Milter.runmilter("mattermail", conn, timeout=cfg.milter.timeout)))


if __name__ == "__main__":
    main()
