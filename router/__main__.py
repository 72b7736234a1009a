"""mattermail-router: the LMTP daemon that files catch-all and captured mail.

SIGHUP loads the config again (rules, capture secret, SRS secret, failed-mail
address) without closing a connection: deliveries in flight finish, the next
ones use the new settings. A config or secret that does not load is logged and
the old settings stay. Listening sockets and the store path take a restart.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mattermail import daemon, secretfile
from mattermail.milter.capture import CaptureError, load_secret
from mattermail.router import socketmap
from mattermail.router.lmtp import DeliveryHandler, serve
from mattermail.router.rules import RouterRules
from mattermail.router.srs import SRSCodec
from mattermail.router.store import Store, recover_stale_tmp

log = logging.getLogger("mattermail.router")
PROG = "mattermail-router"


class SRSConfigError(Exception):
    """SRS is switched on but cannot work; the message names the key."""


def load_srs(cfg) -> SRSCodec | None:
    if not cfg.srs.listen:
        return None
    if not cfg.srs.domain:
        raise SRSConfigError(f"{cfg.source}: srs.domain is required when srs.listen is set")
    try:
        secret = secretfile.load(cfg.srs.secret_file, "SRS secret")
    except secretfile.SecretError as e:
        raise SRSConfigError(f"srs.secret_file: {e}") from None
    local = [*cfg.general.sending_domains, *cfg.general.catchall_domains]
    return SRSCodec(secret, cfg.srs.domain, local, cfg.srs.validity_days)


_SOCKETMAP_TABLES = {"srs_forward": "forward", "srs_reverse": "reverse", "srs_check": "check"}


async def serve_socketmap(spec: str, handler: DeliveryHandler) -> asyncio.base_events.Server:
    """Postfix's socketmap for SRS, answering with the handler's current codec (SIGHUP may swap it)."""

    def lookup(name: str, key: str) -> tuple[str, str]:
        method = _SOCKETMAP_TABLES.get(name)
        fn = getattr(handler.srs, method) if method and handler.srs else None
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
    log.info("SRS socketmap on %s for %s", spec, handler.srs.domain if handler.srs else "-")
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
    try:
        srs = load_srs(cfg)
    except SRSConfigError as e:
        daemon.fatal(PROG, str(e))
    handler = DeliveryHandler(store, cfg.capture.address, secret, srs, cfg)
    servers = await serve(cfg.router.listen, store, handler)
    if srs is not None:
        servers.append(await serve_socketmap(cfg.srs.listen, handler))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, handler)
    log.info("ready: store %s", cfg.store.path)
    await stop.wait()
    for s in servers:
        s.close()
        await s.wait_closed()
    await handler.aclose()
    store.close()
    log.info("stopped")


def reload(handler: DeliveryHandler) -> bool:
    """SIGHUP: new rules, secrets and failed-mail address for the next deliveries; or keep the old ones."""
    running = handler.config
    cfg = daemon.reload_config(running.source, running)
    if cfg is None:
        return False
    for key in ("router.listen", "srs.listen", "store.path", "store.messages_dir"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) != getattr(getattr(running, section), name):
            log.warning("reload: %s changed; that takes a restart (the old value stays in use)", key)
    secret = None
    try:
        if cfg.capture.address:
            secret = load_secret(cfg.capture.secret_file)
        # SRS switched on or off takes a restart (warned above): until then the running codec stays.
        srs = load_srs(cfg) if running.srs.listen and cfg.srs.listen else handler.srs
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
    asyncio.run(_run(cfg))


if __name__ == "__main__":
    main()
