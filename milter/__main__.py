"""mattermail-milter: the daemon Postfix calls for every message.

libmilter runs in its own thread; the main thread only handles signals.
(libmilter's own signal thread would treat SIGHUP as "stop"; started from a
non-main thread it blocks the signals in its threads only, and the kernel
hands a process signal to the main thread, which does not block them.)

* SIGHUP: load the config again, with keys and the capture secret. New SMTP
  sessions get the new runtime; sessions in flight finish on the one they
  started with. A config, key table or secret that does not load is logged
  and the old runtime stays.
* SIGTERM / SIGINT: libmilter stops accepting and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

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
        if cfg.milter.socket != running.milter.socket or cfg.milter.timeout != running.milter.timeout:
            log.warning("reload: milter.socket/timeout changed; that takes a restart (still %s)",
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


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start(PROG, "Postfix milter: capture, disclaimers, DKIM, SPF/DKIM/DMARC", argv)
    try:
        runtime = load_runtime(cfg)
    except RuntimeLoadError as e:
        daemon.fatal(PROG, str(e))
    sessions = Sessions(runtime)
    Milter.factory = sessions.new
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.ADDRCPT_PAR
                     | Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    sock = cfg.milter.socket
    kind, where = daemon.parse_listen(sock)
    if kind == "unix":
        os.makedirs(os.path.dirname(str(where)), exist_ok=True)
        conn = sock
    else:
        host, port = where  # type: ignore[misc]
        conn = f"inet:{port}@{host}"  # libmilter writes port@host; Postfix host:port
    if kind == "inet":
        _nodelay_on_listener(where)  # type: ignore[arg-type]

    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter("mattermail", conn, timeout=cfg.milter.timeout)
        except BaseException as e:  # reported by the main thread
            failure.append(e)

    hup, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = threading.Thread(target=serve, name="libmilter")
    log.info("listening on %s", sock)
    server.start()
    stopping = False
    while server.is_alive():
        server.join(0.2)
        if hup.is_set():
            hup.clear()
            sessions.reload(cfg.source)
        if stop.is_set() and not stopping:
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
        sys.exit(1)
    if not stopping:
        log.error("libmilter stopped by itself (signal not handled by the main thread?)")
        sys.exit(1)
    log.info("stopped")


if __name__ == "__main__":
    main()
