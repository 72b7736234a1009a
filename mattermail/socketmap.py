"""Postfix socketmap protocol (socketmap_table(5)) over asyncio.

Requests and replies are netstrings: ``<len>:<name> <key>,`` answered with
``OK <value>``, ``NOTFOUND ``, ``TEMP <reason>`` or ``PERM <reason>``. Postfix
keeps a connection open and sends many requests on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("mattermail.socketmap")

MAX_REQUEST = 10000  # Postfix's own limit on socketmap netstrings
Lookup = Callable[[str, str], tuple[str, str]]  # (map name, key) -> (status, value)


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


async def read_netstring(reader: asyncio.StreamReader) -> bytes | None:
    try:
        length = await reader.readuntil(b":")
    except asyncio.IncompleteReadError:
        return None
    digits = length[:-1]
    if not digits.isdigit() or int(digits) > MAX_REQUEST:
        raise ValueError("bad netstring length")
    data = await reader.readexactly(int(digits) + 1)
    if data[-1:] != b",":
        raise ValueError("netstring without its comma")
    return data[:-1]


def handler(lookup: Lookup) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_netstring(reader)
                if request is None:
                    break
                name, _, key = request.decode("utf-8", "surrogateescape").partition(" ")
                try:
                    status, value = lookup(name, key)
                except Exception:
                    log.exception("socketmap %s lookup of %r failed", name, key)
                    status, value = "TEMP", "internal error"
                writer.write(netstring(f"{status} {value}".encode("utf-8", "surrogateescape")))
                await writer.drain()
        except (ValueError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.warning("socketmap client dropped: %s", e)
        finally:
            writer.close()

    return serve
