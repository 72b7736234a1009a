"""mattermail-router: the LMTP daemon that files catch-all and captured mail.

SIGHUP loads the config again (rules, capture secret, SRS secret, failed-mail
address) without closing a connection: deliveries in flight finish, the next
ones use the new settings. A config or secret that does not load is logged and
the old settings stay. Listening sockets and the store path take a restart.

The router does not serve SRS (``mattermail-srs`` does, so that a router
outage defers only catch-all mail); it reads the SRS secret to record the
real sender behind an SRS-rewritten one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import sys

import uvloop

from mattermail import daemon
from mattermail.capture import CaptureError, load_secret
from mattermail.router.lmtp import DeliveryHandler, serve
from mattermail.router.rules import RouterRules
from mattermail.store import Store, StoreError, describe_error, recover_stale_tmp
from mattermail.srs import SRSConfigError, load_codec

log = logging.getLogger("mattermail.router")
PROG = "mattermail-router"


async def _run(cfg) -> None:
    try:
        store = Store(cfg.store.location, cfg.store.messages_dir, batches=True)
    except StoreError as e:  # one line, and exit 75: restarted by systemd; Postfix defers meanwhile
        kind, text = describe_error(e)
        log.error("cannot open the store %s (%s: %s): catch-all mail waits in Postfix's queue; run "
                  "'mattermailctl store verify', or restore a backup", cfg.store.where, kind, text)
        print(f"{PROG}: fatal: cannot open the store {cfg.store.where} ({kind}: {text})", file=sys.stderr)
        sys.exit(EX_STORE_REPLACED)
    stale = recover_stale_tmp(cfg.store.messages_dir)
    if stale:
        log.warning("removed %d half-written message file(s) (.tmp-*) left under %s by an interrupted delivery",
                    stale, cfg.store.messages_dir)
    secret = None
    if cfg.capture.address:
        try:
            secret = load_secret(cfg.capture.secret_file)
        except CaptureError as e:
            log.error("%s: capture copies will be stored but not linked to their envelopes", e)
    try:
        srs = load_codec(cfg)  # to record the real sender behind an SRS one
    except SRSConfigError as e:
        daemon.fatal(PROG, str(e))
    handler = DeliveryHandler(store, cfg.capture.address, secret, srs, cfg)
    servers = await serve(cfg.router.listen, store, handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, handler)
    log.info("ready: store %s", cfg.store.where)
    started = time.monotonic()
    watch = loop.create_task(_watch_store(store, stop))
    await stop.wait()
    watch.cancel()
    for s in servers:
        s.close()
        await s.wait_closed()
    await handler.aclose()
    store.close()
    log.info("%s", handler.statistics(time.monotonic() - started))
    log.info("stopped")
    if store.replaced():
        sys.exit(EX_STORE_REPLACED)


# EX_TEMPFAIL: systemd's Restart=on-failure starts the router again (on the new file; or once the store opens)
EX_STORE_REPLACED = 75
STORE_CHECK_SECONDS = 1.0


async def _watch_store(store: Store, stop: asyncio.Event) -> None:
    """Stop (exit 75, restarted by systemd) when the database file is replaced on disk, as by a restore into a
    new store: this process's connection would go on filing into the old file, answering 250 for mail the
    restored store never sees. Deliveries in flight are deferred (451) and Postfix retries them."""
    while not stop.is_set():
        await asyncio.sleep(STORE_CHECK_SECONDS)
        if store.replaced():
            log.error("store %s was replaced on disk: stopping, to be restarted on the new file", store.path)
            stop.set()


def reload(handler: DeliveryHandler) -> bool:
    """SIGHUP: new rules, secrets and failed-mail address for the next deliveries; or keep the old ones."""
    running = handler.config
    cfg = daemon.reload_config(running.source, running)
    if cfg is None:
        return False
    for key in ("router.listen", "store.path", "store.url", "store.messages_dir"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) != getattr(getattr(running, section), name):
            log.warning("reload: %s changed; that takes a restart (the old value stays in use)", key)
    secret = None
    try:
        if cfg.capture.address:
            secret = load_secret(cfg.capture.secret_file)
        srs = load_codec(cfg)
        rules = RouterRules.from_config(cfg)
    except (CaptureError, SRSConfigError, ValueError) as e:
        log.error("reload refused, still running with the previous configuration: %s", e)
        return False
    if not daemon.apply_logging(PROG, cfg, running):
        return False
    # Plain attribute swaps: a batch being filed now finishes with the settings it read.
    handler.config, handler.rules = cfg, rules
    handler.capture_address, handler.capture_secret, handler.srs = cfg.capture.address, secret, srs
    log.info("reloaded %s", cfg.source)
    return True


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start(PROG, "LMTP server that files mail into the mattermail store", argv)
    # uvloop (libuv) runs the LMTP sessions: the same asyncio API, less CPU per command than the
    # standard loop (bench/README.md, bench/router)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run(cfg))


if __name__ == "__main__":
    main()
