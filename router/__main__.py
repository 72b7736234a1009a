"""mattermail-router: the LMTP daemon that files catch-all and captured mail."""

from __future__ import annotations

import asyncio
import logging
import signal

from mattermail import daemon
from mattermail.milter.capture import CaptureError, load_secret
from mattermail.router import socketmap
from mattermail.router.lmtp import DeliveryHandler, serve
from mattermail.router.srs import SRSCodec
from mattermail.router.store import Store, recover_stale_tmp

log = logging.getLogger("mattermail.router")


def load_srs(cfg) -> SRSCodec | None:
    if not cfg.srs.listen:
        return None
    if not cfg.srs.domain:
        raise SystemExit(f"mattermail-router: fatal: {cfg.source}: srs.domain is required when srs.listen is set")
    try:
        secret = load_secret(cfg.srs.secret_file)
    except CaptureError as e:
        raise SystemExit(f"mattermail-router: fatal: SRS: {e}") from None
    local = [*cfg.general.sending_domains, *cfg.general.catchall_domains]
    return SRSCodec(secret, cfg.srs.domain, local, cfg.srs.validity_days)


async def serve_socketmap(spec: str, srs: SRSCodec) -> asyncio.base_events.Server:
    tables = {"srs_forward": srs.forward, "srs_reverse": srs.reverse, "srs_check": srs.check}

    def lookup(name: str, key: str) -> tuple[str, str]:
        fn = tables.get(name)
        if fn is None:
            return "PERM", f"no such map {name}"
        v = fn(key)
        return v.status, v.value

    kind, where = daemon.parse_listen(spec)
    if kind == "unix":
        srv = await asyncio.start_unix_server(socketmap.handler(lookup), path=str(where))
    else:
        host, port = where  # type: ignore[misc]
        srv = await asyncio.start_server(socketmap.handler(lookup), host=host, port=port, reuse_address=True)
    log.info("SRS socketmap on %s for %s", spec, srs.domain)
    return srv


async def _run(cfg) -> None:
    store = Store(cfg.store.path, cfg.store.messages_dir)
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
    srs = load_srs(cfg)
    handler = DeliveryHandler(store, cfg.capture.address, secret, srs, cfg)
    servers = await serve(cfg.router.listen, store, handler)
    if srs is not None:
        servers.append(await serve_socketmap(cfg.srs.listen, srs))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: store %s", cfg.store.path)
    await stop.wait()
    for s in servers:
        s.close()
        await s.wait_closed()
    await handler.aclose()
    store.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start("mattermail-router", "LMTP server that files mail into the mattermail store", argv)
    asyncio.run(_run(cfg))


if __name__ == "__main__":
    main()
