"""Switching a process started as root to the unprivileged mattermail user.

Daemons and ``mattermailctl`` call :func:`drop` right after loading the
config, before they open the store, keys or sockets, so every file they create
belongs to that user (a store file created by root would lock the daemons out
of it). Nothing they do needs root: their sockets live in a directory the user
owns (``/var/spool/postfix/mattermail``, set-group-id ``postfix`` so Postfix's
chrooted daemons can connect).
"""

from __future__ import annotations

import os
import pwd


class PrivilegeError(Exception):
    """The configured user cannot be switched to; the message names ``general.user``."""


def drop(user: str) -> bool:
    """Become ``user`` (its uid, primary gid and supplementary groups) when running as root.

    Returns True when the identity changed. ``user == ""`` or not running as
    root: nothing to do. Raises PrivilegeError when the user does not exist or
    root cannot be given up.
    """
    if not user or os.geteuid() != 0:
        return False
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"general.user: no such user {user!r}; create it (the Debian package does) "
            f"or set general.user = \"\" to keep running as root"
        ) from None
    if pw.pw_uid == 0:
        return False
    os.initgroups(pw.pw_name, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would be a kernel/libc bug
        raise PrivilegeError(f"general.user: still able to regain root after switching to {user!r}")
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = pw.pw_name
    return True
