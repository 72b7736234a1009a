"""Micro-benchmark: mattermail's DKIM signer against dkimpy's ``dkim.sign``.

Signs a 4 KB and a 100 KB message N times with RSA-2048 (and, for
reference, Ed25519 with our signer only) and prints the median microseconds
per signature and the ratio dkimpy / ours.

    .venv/bin/python bench/dkim_sign.py [-n 200]

Run it with the ``python`` of the venv where mattermail is installed, from any
folder (the repo root on ``sys.path`` is harmless here: pymilter is not used).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization

from mattermail import dkimkeys
from mattermail.dkimkeys import SigningKey
from mattermail.milter.dkim_sign import sign

HEADERS = [
    ("From", "Alice Lawyer <alice@lawfirm.test>"),
    ("To", "Bob Client <bob@example.net>, Carol <carol@example.net>"),
    ("Cc", "Dave <dave@example.net>"),
    ("Subject", "Matter 1234: draft contract and schedule"),
    ("Date", "Mon, 01 Jan 2024 10:00:00 +0000"),
    ("Message-ID", "<20240101100000.1234@lawfirm.test>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Transfer-Encoding", "8bit"),
]


def make_body(size: int) -> bytes:
    """A plain-text body of about ``size`` bytes, 72-character lines, CRLF."""
    line = b"The quick brown fox jumps over the lazy dog, again and  again and again.\r\n"
    return (line * (size // len(line) + 1))[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"


def median_us(fn: Callable[[], object], n: int) -> float:
    """Median wall time of ``fn()`` over ``n`` runs, in microseconds (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="signatures per case (default 100)")
    args = parser.parse_args()

    rsa_key = dkimkeys.generate("rsa", 2048)
    ed_key = dkimkeys.generate("ed25519")
    ours_rsa = [SigningKey("lawfirm.test", "bench", "rsa-sha256", rsa_key)]
    ours_ed = [SigningKey("lawfirm.test", "bench", "ed25519-sha256", ed_key)]
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    include = [name.encode() for name, _ in HEADERS]

    print(f"RSA-2048, relaxed/relaxed, median of {args.n} signatures")
    print(f"{'message':>8} {'ours µs':>10} {'dkimpy µs':>10} {'ratio':>7} {'ours ed25519 µs':>16}")
    for label, size in (("4 KB", 4 * 1024), ("100 KB", 100 * 1024)):
        body = make_body(size)
        raw = b"".join(f"{n}: {v}\r\n".encode() for n, v in HEADERS) + b"\r\n" + body
        ours = median_us(lambda: sign(HEADERS, body, ours_rsa), args.n)
        ref = median_us(
            lambda: dkim.sign(raw, b"bench", b"lawfirm.test", pem,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=include),
            args.n,
        )
        ed = median_us(lambda: sign(HEADERS, body, ours_ed), args.n)
        print(f"{label:>8} {ours:>10.0f} {ref:>10.0f} {ref / ours:>6.1f}x {ed:>16.0f}")


if __name__ == "__main__":
    main()
