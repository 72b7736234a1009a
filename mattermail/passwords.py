"""Password hashing for SMTP users, in a scheme Dovecot verifies natively.

ARGON2ID through argon2-cffi, with parallelism 1: Dovecot checks ARGON2ID with
libsodium, which only accepts p=1. The hash goes into Dovecot's passwd-file as
``{ARGON2ID}$argon2id$...``. Clear-text passwords are never stored or logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from mattermail.atomicfile import write_atomic

SCHEME = "{ARGON2ID}"
_hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)
MIN_LENGTH = 8


class PasswordError(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"password: must be at least {MIN_LENGTH} characters")
    if "\n" in password or "\r" in password:
        raise PasswordError("password: must not contain line breaks")
    return SCHEME + _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    if not stored.startswith(SCHEME):
        return False
    try:
        return _hasher.verify(stored[len(SCHEME):], password)
    except VerificationError:
        return False


def write_sender_login_map(path: Path, pairs: Iterable[tuple[str, str]], postfix_dir: Path = Path("/etc/postfix")) -> str | None:
    """Rewrite Postfix's smtpd_sender_login_maps source (``address login,login``) and postmap it.

    Returns a warning when postmap is not available (the map then is not used
    by Postfix; the milter still enforces ownership).
    """
    import shutil
    import subprocess

    owners: dict[str, list[str]] = {}
    for login, address in pairs:
        owners.setdefault(address, []).append(login)
    text = "".join(f"{a}\t{','.join(sorted(ls))}\n" for a, ls in sorted(owners.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o644)
    postmap = shutil.which("postmap") or ("/usr/sbin/postmap" if os.path.exists("/usr/sbin/postmap") else None)
    if postmap is None:
        return f"postmap not found: {path} written but not compiled for Postfix"
    r = subprocess.run([postmap, "-c", str(postfix_dir), f"hash:{path}"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"postmap hash:{path} failed: {r.stderr.strip()}"
    return None


def write_passwd_file(path: Path, entries: Iterable[tuple[str, str]], group: str | None = None) -> None:
    """Atomically rewrite Dovecot's passwd-file (``login:{SCHEME}hash``), mode 0640."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for login, pw_hash in entries:
        if ":" in login:
            raise PasswordError(f"login: {login!r} must not contain ':'")
        lines.append(f"{login}:{pw_hash}\n")
    gid = None
    if group is not None:
        import grp

        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            pass  # group absent (dev machine without Dovecot): keep ours
        if gid is not None and os.geteuid() != 0 and gid not in os.getgroups():
            gid = None  # not ours to give (not root, not a member): keep ours
    write_atomic(path, "".join(lines), mode=0o640, gid=gid)
