"""mattermail-router: the LMTP daemon that files catch-all and captured mail."""

from __future__ import annotations

import asyncio
import logging
import signal

from mattermail import daemon
from mattermail.milter.capture import CaptureError, load_secret
from mattermail.router.lmtp import DeliveryHandler, serve
from mattermail.router.store import Store

log = logging.getLogger("mattermail.router")


async def _run(cfg) -> None:
    store = Store(cfg.store.path, cfg.store.messages_dir)
    secret = None
    if cfg.capture.address:
        try:
            secret = load_secret(cfg.capture.secret_file)
        except CaptureError as e:
            log.error("%s: capture copies will be stored but not linked to their envelopes", e)
    handler = DeliveryHandler(store, cfg.capture.address, secret)
    servers = await serve(cfg.router.listen, store, handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: store %s", cfg.store.path)
    await stop.wait()
    for s in servers:
        s.close()
        await s.wait_closed()
    store.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start("mattermail-router", "LMTP server that files mail into the mattermail store", argv)
    asyncio.run(_run(cfg))


if __name__ == "__main__":
    main()
