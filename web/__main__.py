"""mattermail-web: the web view and JSON API of the store (issue 18), served by uvicorn on uvloop.

Listens on ``web.listen`` (loopback by default: a TLS reverse proxy serves people on other machines).
Started as root, it drops to ``general.user`` before it opens the store (mattermail.daemon).
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from mattermail import daemon
from mattermail.store import Store, StoreError, describe_error
from mattermail.web.app import create_app

PROG = "mattermail-web"
log = logging.getLogger("mattermail.web")


def main(argv: list[str] | None = None) -> None:
    cfg = daemon.start(PROG, __doc__.splitlines()[0], argv)
    try:
        store = Store(cfg.store.location, cfg.store.messages_dir)
    except StoreError as e:
        kind, text = describe_error(e)
        print(f"{PROG}: fatal: cannot open the store {cfg.store.where} ({kind}: {text})", file=sys.stderr)
        sys.exit(75)
    store.actor = "web"
    from mattermail.store import webview

    log.info("%d messages in the store (sort keys ready)", webview.warm_sort_keys(store))
    _, (host, port) = daemon.parse_listen(cfg.web.listen)
    log.info("ready: http://%s:%d/ store %s", host, port, cfg.store.where)
    uvicorn.run(create_app(store, cfg, deliver_webhooks=True), host=host, port=port, loop="uvloop", http="h11",
                lifespan="on",
                access_log=False, server_header=False, log_config=None, proxy_headers=False)
    store.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
