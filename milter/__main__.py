"""mattermail-milter: the daemon Postfix calls for every message."""

from __future__ import annotations

import logging
import os

import Milter

from mattermail import daemon
from mattermail.milter.app import MatterMilter
from mattermail.milter.runtime import Runtime

log = logging.getLogger("mattermail.milter")


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start("mattermail-milter", "Postfix milter: capture, disclaimers, DKIM, SPF/DKIM/DMARC", argv)
    MatterMilter.runtime = Runtime(cfg)
    Milter.factory = MatterMilter
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
    log.info("listening on %s", sock)
    Milter.runmilter("mattermail", conn, timeout=cfg.milter.timeout)
    log.info("stopped")


if __name__ == "__main__":
    main()
