"""The router with the records chain switched off, for ``bench/router --configs mattermail,mattermail-nochain``
(the chain's cost in router throughput, issue 15). Not a product mode: the product has no way to turn
the chain off; this wrapper replaces ``mattermail.store.chain.append`` with a no-op in this process only
and then runs ``mattermail-router`` unchanged (same arguments)."""

from __future__ import annotations

import sys

from mattermail.store import chain

chain.append = lambda *a, **k: None  # type: ignore[assignment]

from mattermail.router.__main__ import main  # noqa: E402 - after the patch

if __name__ == "__main__":
    sys.exit(main())
