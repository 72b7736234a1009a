"""One ARC set (RFC 8617 §5.1) signed in OpenSSL, on the DKIM signer's canonicalization.

dkimpy's ``arc_sign`` signs with its own pure-Python RSA: 35 ms per seal, the
GIL held throughout, so every other SMTP session of the milter stalls behind
each forwarded message. The set is small enough to build here, the way
:mod:`mattermail.milter.dkim_sign` builds a DKIM-Signature:

* ``ARC-Authentication-Results: i=N; <our Authentication-Results value>``;
* ``ARC-Message-Signature``: a DKIM signature with ``i=N`` in place of ``v=``
  (relaxed/relaxed, the same header list and body hash as our DKIM signer);
* ``ARC-Seal``: ``i=N; cv=…`` signed over every set's three fields in
  instance order (AAR, AMS, AS), the new seal last with an empty ``b=``; over
  the new set alone when the chain it arrived with failed (§5.1.2).

dkimpy's ``arc_verify`` checks the result in the tests, and is still what
checks the chain a message arrives with (verifying costs little in pure Python).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence

from mattermail.dkimkeys import SigningKey
from mattermail.milter.dkim_sign import (_fold, _fold_b64, _header_list, _relaxed_header, _sign_digest_input,
                                         _signed_header_block, body_hash)

AAR, AMS, SEAL = "ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"
_ORDER = (AAR.lower(), AMS.lower(), SEAL.lower())
_INSTANCE = re.compile(r"(?:^|[\s;])i\s*=\s*(\d+)", re.I)
INSTANCE_LIMIT = 50  # RFC 8617 §4.2.1


def prior_sets(headers: Sequence[tuple[str, str]]) -> dict[int, dict[str, tuple[str, str]]]:
    """The ARC fields a message arrived with, by instance and lower-case name (fields without ``i=`` left out)."""
    sets: dict[int, dict[str, tuple[str, str]]] = {}
    for name, value in headers:
        lname = name.strip().lower()
        if lname in _ORDER:
            m = _INSTANCE.search(value)
            if m:
                sets.setdefault(int(m.group(1)), {})[lname] = (name, value)
    return sets


def arc_set(headers: Sequence[tuple[str, str]], body: bytes, ar_value: str, cv: str, key: SigningKey,
            now: int | None = None, *, linesep: str = "\n") -> list[tuple[str, str]]:
    """The ARC set for a message, in prepend order (AAR, AMS, Seal: the seal ends up on top).

    ``headers`` are the message's fields as it arrived (our Authentication-Results is not among the fields
    an AMS signs, so it need not be there), ``body`` the body with CRLF line ends, ``ar_value`` our
    Authentication-Results value (with ``arc=``), ``cv`` the chain's result (``none``, ``pass``, ``fail``).
    Values come without a leading space, folded with ``linesep`` + TAB as :func:`dkim_sign.sign`'s.
    Raises ValueError when the chain and ``cv`` disagree, or it is too long to extend.
    """
    if key.algorithm != "rsa-sha256":
        raise ValueError(f"ARC seals with rsa-sha256 only, not {key.algorithm}")
    sets = prior_sets(headers)
    instance = max(sets, default=0) + 1
    if instance > INSTANCE_LIMIT:
        raise ValueError(f"the chain already has {instance - 1} sets (at most {INSTANCE_LIMIT})")
    if (instance == 1) != (cv == "none"):
        raise ValueError(f"cv={cv} with {instance - 1} prior set(s)")
    t = str(int(time.time()) if now is None else int(now))
    i = str(instance)
    aar = f"i={i}; {ar_value}"

    names = _header_list(headers)
    ams_tags = [("i", i), ("a", "rsa-sha256"), ("c", "relaxed/relaxed"), ("d", key.domain), ("s", key.selector),
                ("t", t), ("h", ":".join(names)), ("bh", body_hash(body)), ("b", "")]
    unsigned = _fold(ams_tags, linesep)
    data = _signed_header_block(headers, names) + _relaxed_header(AMS, unsigned)[:-2]
    ams = _fold_b64(unsigned, base64.b64encode(_sign_digest_input(key, data)).decode("ascii"), linesep)

    chain = [] if cv == "fail" else [sets[n] for n in sorted(sets)]
    block = b"".join(_relaxed_header(*s[name]) for s in chain for name in _ORDER if name in s)
    block += _relaxed_header(AAR, aar) + _relaxed_header(AMS, ams)
    seal_tags = [("i", i), ("cv", cv), ("a", "rsa-sha256"), ("d", key.domain), ("s", key.selector), ("t", t),
                 ("b", "")]
    unsigned = _fold(seal_tags, linesep)
    data = block + _relaxed_header(SEAL, unsigned)[:-2]
    seal = _fold_b64(unsigned, base64.b64encode(_sign_digest_input(key, data)).decode("ascii"), linesep)
    return [(AAR, aar), (AMS, ams), (SEAL, seal)]
