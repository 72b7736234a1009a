"""mattermail-srs: the SRS socketmap daemon Postfix asks about foreign senders and SRS recipients.

Postfix asks it through a regexp filter in a pipemap (ctl/postfixconf.py
``srs_map``): ``srs_forward`` for every sender outside the firm's domains,
``srs_reverse`` (cleanup) and ``srs_check`` (smtpd, at RCPT) for every
recipient in ``srs.domain``. While nobody answers, Postfix defers that mail
(4xx); the firm's own outbound mail and mail to its users from its own domains
never wait on it. So SRS has this small process of its own, apart from the
router: a router outage defers only catch-all mail.

It listens on ``srs.listen`` and answers with the codec of mattermail.srs.
SIGHUP loads the config and the SRS secret again; one that does not load is
logged and the old codec stays. ``srs.listen`` changing takes a restart.
SIGTERM stops it at once (lookups are instant). ``srs.listen = ""`` (SRS
off): it says so and exits 0, so an enabled unit does not fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from mattermail import config as configmod
from mattermail import daemon, socketmap
from mattermail.srs import SRSCodec, SRSConfigError, load_codec

log = logging.getLogger("mattermail.srs")
PROG = "mattermail-srs"
TABLES = ("srs_forward", "srs_reverse", "srs_check")


class SRSService:
    """The running codec and config; :meth:`lookup` answers one socketmap request."""

    def __init__(self, codec: SRSCodec, cfg: configmod.Config) -> None:
        self.codec = codec
        self.config = cfg

    def lookup(self, name: str, key: str) -> tuple[str, str]:
        codec = self.codec  # one codec per answer, even if SIGHUP swaps it meanwhile
        if name == "srs_forward":
            v = codec.forward(key)
        elif name == "srs_reverse":
            v = codec.reverse(key)
        elif name == "srs_check":
            v = codec.check(key)
            if v.status == "OK":
                log.info("srs_check: refused %r: %s", key, v.value)
        else:
            log.warning("socketmap lookup in unknown table %r (known: %s)", name, ", ".join(TABLES))
            return "PERM", f"no such map {name}"
        return v.status, v.value

    def reload(self) -> bool:
        """SIGHUP: the new config's codec for the next lookups; or keep the old one (reason logged)."""
        running = self.config
        cfg = daemon.reload_config(running.source, running)
        if cfg is None:
            return False
        if cfg.srs.listen != running.srs.listen:
            log.warning("reload: srs.listen changed to %r; that takes a restart (still serving %s)",
                        cfg.srs.listen, running.srs.listen)
            if not cfg.srs.listen:  # SRS switched off: Postfix may still ask until it is rewired
                log.warning("reload: SRS switched off; still answering with the previous configuration")
                return False
        try:
            codec = load_codec(cfg)
        except SRSConfigError as e:
            log.error("reload refused, still running with the previous configuration: %s", e)
            return False
        if not daemon.apply_logging(PROG, cfg, running):
            return False
        assert codec is not None  # srs.listen is set
        self.codec, self.config = codec, cfg
        log.info("reloaded %s: SRS for %s", cfg.source, codec.domain)
        return True


async def listen(spec: str, service: SRSService) -> asyncio.base_events.Server:
    """Serve the socketmap on ``spec`` (a unix socket is made 0660, for Postfix's group)."""
    kind, where = daemon.parse_listen(spec)
    serve = socketmap.handler(service.lookup)
    if kind == "unix":
        path = Path(str(where))
        path.unlink(missing_ok=True)
        srv = await asyncio.start_unix_server(serve, path=str(path))
        os.chmod(path, 0o660)
        return srv
    host, port = where  # type: ignore[misc]
    return await asyncio.start_server(serve, host=host, port=port, reuse_address=True)


async def _run(service: SRSService) -> None:
    spec = service.config.srs.listen
    try:
        srv = await listen(spec, service)
    except OSError as e:
        log.critical("srs.listen %s: cannot listen: %s", spec, e.strerror or e)
        sys.exit(1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    log.info("ready: SRS socketmap on %s for %s (tables %s)", spec, service.codec.domain, ", ".join(TABLES))
    await stop.wait()
    srv.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start(PROG, "SRS socketmap for Postfix (srs_forward, srs_reverse, srs_check)", argv)
    try:
        codec = load_codec(cfg)
    except SRSConfigError as e:
        daemon.fatal(PROG, str(e))
    if codec is None:
        log.warning("SRS is off (srs.listen is empty in %s): nothing to serve, exiting", cfg.source)
        return
    asyncio.run(_run(SRSService(codec, cfg)))


if __name__ == "__main__":
    main()
