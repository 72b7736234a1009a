"""DKIM keys: generation, key files, the key table and DNS TXT records.

Shared by the milter (which loads the key table and signs) and by
``mattermailctl`` (which generates keys, prints the DNS records to publish and
checks what DNS actually serves).  Everything here is a plain function over
``cryptography`` key objects, files and strings; nothing touches the network.

Key files are PEM, PKCS#8, unencrypted, and never world-readable.  The key
table lives in one folder, one sub-folder per signing domain::

    <keys_dir>/<domain>/<selector>.<rsa|ed25519>.pem

for example ``keys/lawfirm.test/mm2024.rsa.pem`` and
``keys/lawfirm.test/mm2024e.ed25519.pem``.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mattermail.atomicfile import write_atomic

__all__ = [
    "Algorithm",
    "PrivateKey",
    "SigningKey",
    "dns_record",
    "generate",
    "key_algorithm",
    "load_keytable",
    "load_private_key",
    "public_key_matches",
    "txt_strings",
    "write_private_key",
    "zone_line",
]

#: DKIM signing algorithms (RFC 6376 ``a=`` tag values) that we produce.
Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
#: The private key types we sign with.
PrivateKey = Union[rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ed25519.Ed25519PublicKey]

#: RFC 8301: signers MUST use at least 1024 bits and SHOULD use 2048.
MIN_RSA_BITS = 1024
#: Key-file suffix in the key table -> DKIM ``a=`` algorithm.
_SUFFIX_ALGORITHM: dict[str, Algorithm] = {
    "rsa": "rsa-sha256",
    "ed25519": "ed25519-sha256",
}
_SELECTOR_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
#: The largest character-string in a TXT record (RFC 1035 §3.3).
TXT_STRING_MAX = 255


@dataclass(frozen=True)
class SigningKey:
    """One key the milter signs with: ``d=domain``, ``s=selector``, ``a=algorithm``."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if key_algorithm(self.private_key) != self.algorithm:
            raise ValueError(
                f"DKIM key {self.selector}._domainkey.{self.domain}: "
                f"algorithm {self.algorithm} does not match the key type"
            )


def key_algorithm(key: PrivateKey | PublicKey) -> Algorithm:
    """The DKIM ``a=`` value for a key; ValueError for unsupported key types."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-sha256"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519-sha256"
    raise ValueError(f"unsupported DKIM key type {type(key).__name__}")


def generate(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> PrivateKey:
    """Generate a new private key (``bits`` applies to RSA only, at least 1024)."""
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA DKIM keys need at least {MIN_RSA_BITS} bits (RFC 8301)")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown DKIM key algorithm {algorithm!r} (rsa or ed25519)")


def write_private_key(path: str | os.PathLike[str], key: PrivateKey, mode: int = 0o600) -> None:
    """Write ``key`` to ``path`` as unencrypted PEM PKCS#8, atomically.

    The file is created with ``mode`` from the start (never briefly readable
    by others), written to a temporary name in the same folder, fsync'd and
    renamed over ``path``; the folder is fsync'd too.  Missing parent folders
    are created with mode 0750.  A mode that grants any access to "other" is
    refused.
    """
    if mode & 0o007:
        raise ValueError(f"refusing to write a private key with world access (mode {mode:o})")
    target = Path(path)
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    write_atomic(target, pem, mode=mode)


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8 or PKCS#1) of RSA or Ed25519."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"{path}: unsupported DKIM key type {type(key).__name__}")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"{path}: RSA key of {key.key_size} bits is too short (RFC 8301)")
    return key


def _public_key_bytes(key: PrivateKey | PublicKey) -> tuple[str, bytes]:
    """``(k= value, p= bytes)`` for a key: SPKI DER for RSA, the raw 32 bytes for Ed25519."""
    pub = key.public_key() if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)) else key
    if isinstance(pub, rsa.RSAPublicKey):
        return "rsa", pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "ed25519", pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise ValueError(f"unsupported DKIM key type {type(key).__name__}")


def dns_record(key: PrivateKey | PublicKey, selector: str, domain: str) -> tuple[str, str]:
    """The DNS owner name and TXT text to publish for ``key``.

    Returns ``("selector._domainkey.domain", "v=DKIM1; k=rsa; p=...")``; the
    owner name has no trailing dot.
    """
    k, p = _public_key_bytes(key)
    owner = f"{selector}._domainkey.{domain.rstrip('.').lower()}"
    return owner, f"v=DKIM1; k={k}; p={base64.b64encode(p).decode('ascii')}"


def txt_strings(record: str) -> list[str]:
    """Split a TXT record's text into character-strings of at most 255 bytes.

    The tags before ``p=`` form the first string(s), the key data the rest, so
    the strings read naturally; joined, they equal ``record``.  DKIM records
    are ASCII; anything else is refused.
    """
    record.encode("ascii")  # raises UnicodeEncodeError for non-ASCII text
    cut = record.find("p=")
    parts = [record[:cut], record[cut:]] if cut > 0 else [record]
    strings: list[str] = []
    for part in parts:
        strings.extend(part[i:i + TXT_STRING_MAX] for i in range(0, len(part), TXT_STRING_MAX))
    return strings or [""]


def zone_line(owner: str, record: str, ttl: int = 3600) -> str:
    """One BIND zone-file line publishing ``record`` at ``owner``.

    ``zone_line(*dns_record(key, "sel", "example.com"))`` gives
    ``sel._domainkey.example.com. 3600 IN TXT ( "v=DKIM1; k=rsa; " "p=..." )``.
    """
    name = owner if owner.endswith(".") else owner + "."
    quoted = " ".join(
        '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in txt_strings(record)
    )
    return f"{name} {ttl} IN TXT ( {quoted} )"


def _parse_tags(txt_record: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM key record; accepts zone-style quoted strings too."""
    text = txt_record.strip()
    if text.startswith("("):
        text = text.strip("()").strip()
    if text.startswith('"'):
        text = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', text))
    tags: dict[str, str] = {}
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    return tags


def public_key_matches(private_key: PrivateKey, txt_record: str) -> bool:
    """True when the DKIM TXT record publishes the public half of ``private_key``.

    ``txt_record`` is the record's text (the strings already joined, or as
    quoted zone-file strings).  A revoked key (empty ``p=``), another key
    type, a wrong version or unreadable key data all give False.  RSA keys
    may be published as SubjectPublicKeyInfo or as a bare PKCS#1 key.
    """
    tags = _parse_tags(txt_record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return False
    try:
        want_k, want_p = _public_key_bytes(private_key)
        if tags.get("k", "rsa").lower() != want_k:
            return False
        p = base64.b64decode(re.sub(r"\s+", "", tags.get("p", "")), validate=True)
        if not p:
            return False
        if want_k == "ed25519":
            return p == want_p
        try:
            published = serialization.load_der_public_key(p)
        except ValueError:
            published = serialization.load_der_public_key(_pkcs1_to_spki(p))
    except (ValueError, TypeError):
        return False
    return (
        isinstance(published, rsa.RSAPublicKey)
        and published.public_numbers() == private_key.public_key().public_numbers()
    )


def _pkcs1_to_spki(der: bytes) -> bytes:
    """Wrap a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (as some old records publish)."""
    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        if n < 0x80:
            length = bytes([n])
        else:
            raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
            length = bytes([0x80 | len(raw)]) + raw
        return bytes([tag]) + length + body

    rsa_alg = bytes.fromhex("300d06092a864886f70d0101010500")
    return tlv(0x30, rsa_alg + tlv(0x03, b"\x00" + der))


def load_keytable(keys_dir: Path) -> dict[str, list[SigningKey]]:
    """Load every signing key under ``keys_dir``, keyed by lower-case domain.

    Layout (one folder per signing domain, one file per key)::

        <keys_dir>/<domain>/<selector>.rsa.pem
        <keys_dir>/<domain>/<selector>.ed25519.pem

    The selector may contain dots (``2024.mm.rsa.pem`` is selector
    ``2024.mm``).  Every matching file is signed with, so a domain with one
    RSA and one Ed25519 key is dual-signed; keep keys that are pending or
    retired out of the folder or under another suffix.  Hidden files and
    names that do not match (``README``, ``*.txt``, ``*.pem.old``) are
    ignored.  A matching file that does not load, or whose key type differs
    from its suffix, raises ValueError: a broken key must not silently stop
    signing.  A missing ``keys_dir`` gives an empty table.  Within a domain,
    Ed25519 keys come first, then RSA, each by selector.
    """
    table: dict[str, list[SigningKey]] = {}
    root = Path(keys_dir)
    if not root.is_dir():
        return table
    for domain_dir in sorted(root.iterdir()):
        if domain_dir.name.startswith(".") or not domain_dir.is_dir():
            continue
        domain = domain_dir.name.rstrip(".").lower()
        keys: list[SigningKey] = []
        for path in sorted(domain_dir.iterdir()):
            parts = path.name.rsplit(".", 2)
            if path.name.startswith(".") or len(parts) != 3 or parts[2] != "pem":
                continue
            selector, suffix = parts[0], parts[1].lower()
            if suffix not in _SUFFIX_ALGORITHM or not path.is_file():
                continue
            if not _SELECTOR_RE.match(selector):
                raise ValueError(f"{path}: {selector!r} is not a valid DKIM selector")
            key = load_private_key(path)
            try:
                keys.append(SigningKey(domain, selector, _SUFFIX_ALGORITHM[suffix], key))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        if keys:
            keys.sort(key=lambda k: (k.algorithm != "ed25519-sha256", k.selector))
            table[domain] = keys
    return table
