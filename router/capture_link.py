"""Capture copies: which LMTP recipients are the capture address, and which envelope they carry.

Reads only (the ``captures`` rows are written by :func:`~mattermail.router.filing.file_message`
inside the message's one transaction). See docs/capture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from mattermail.capture import parse_capture_address
from mattermail.store import EnvelopeRecord, Store, get_envelope

__all__ = ["CaptureInfo", "inspect_captures"]


@dataclass(frozen=True)
class CaptureInfo:
    """One recipient that is the capture address."""

    ref: str | None  # the envelope reference the address carries (None: the bare address)
    verified: bool  # the HMAC checks out and the envelope was found
    envelope: EnvelopeRecord | None  # only when verified: every envelope recipient, Bcc'd ones too
    duplicate: bool = False  # a bare copy beside the milter's signed one: not filed twice
    note: str = ""  # for the router's log line


def inspect_captures(rcpts: Iterable[str], capture_address: str, secret: bytes | None, store: Store,
                     log: logging.Logger | logging.LoggerAdapter | None = None) -> dict[str, CaptureInfo]:
    """The capture recipients among ``rcpts`` (by recipient as given), with their trusted envelope.

    A forged or mangled reference, or one without a recorded envelope, is not
    trusted (``verified`` False, no envelope): the copy is filed from its
    headers only. A bare capture address beside a verified reference in the
    same delivery (a Postfix BCC map and the milter both captured) is a
    duplicate; alone it is filed from its headers, with a warning.
    """
    rcpts = list(rcpts)
    if not capture_address:
        return {}
    log = log or logging.getLogger("mattermail.router.capture")
    parsed = {r: parse_capture_address(r, capture_address, secret or b"") for r in rcpts}
    linked = secret is not None and any(p is not None and p.ref is not None and p.valid for p in parsed.values())
    out: dict[str, CaptureInfo] = {}
    for rcpt, p in parsed.items():
        if p is None:
            continue
        if p.ref is None:
            if linked:
                out[rcpt] = CaptureInfo(None, False, None, True, " capture=duplicate (also captured by the milter)")
            else:
                log.warning("to=<%s>: capture copy without an envelope reference (a BCC map?); stored unlinked", rcpt)
                out[rcpt] = CaptureInfo(None, False, None, False, " capture=unlinked")
            continue
        if not p.valid or secret is None:
            log.warning("to=<%s>: capture reference does not verify; stored, envelope not trusted", rcpt)
            out[rcpt] = CaptureInfo(p.ref, False, None, False, " capture=forged")
            continue
        env = get_envelope(store, p.ref)
        if env is None:
            log.warning("to=<%s>: no recorded envelope for capture reference %s", rcpt, p.ref)
            out[rcpt] = CaptureInfo(p.ref, False, None, False, " capture=missing-envelope")
        else:
            out[rcpt] = CaptureInfo(p.ref, True, env, False, f" capture={p.ref} envelope_rcpts={len(env.recipients)}")
    return out
