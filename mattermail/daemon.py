"""What every mattermail daemon does on start: parse --config, load it, set up logs.

A config that fails to load prints one line naming the file and key, and the
process exits with status 78 (EX_CONFIG), which systemd and supervisors treat
as "do not restart until fixed". Started as root, a daemon then becomes
``general.user`` before it opens anything (see mattermail.privileges), with
umask 007: nothing it creates is world-readable.

:func:`reload_config` is the SIGHUP half: a config that does not load is
logged and ``None`` returned, so the daemon keeps running on the old one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from pathlib import Path

from mattermail import config as configmod
from mattermail import logs, privileges

log = logging.getLogger("mattermail.daemon")


def start(progname: str, description: str, argv: list[str] | None = None) -> configmod.Config:
    parser = argparse.ArgumentParser(prog=progname, description=description)
    parser.add_argument("--config", help=f"config file (default ${configmod.ENV_VAR} or {configmod.DEFAULT_PATH})")
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        fatal(progname, str(e))
    os.umask(0o007)
    try:
        privileges.drop(cfg.general.user)
    except privileges.PrivilegeError as e:
        fatal(progname, f"{cfg.source}: {e}")
    try:
        logs.setup(progname, cfg.log.level, syslog=cfg.log.syslog, syslog_socket=cfg.log.syslog_socket)
    except OSError as e:
        fatal(progname, f"{cfg.source}: log.syslog: cannot reach {cfg.log.syslog_socket}: {e.strerror or e}")
    return cfg


def fatal(progname: str, text: str) -> typing.NoReturn:
    print(f"{progname}: fatal: {text}", file=sys.stderr)
    sys.exit(configmod.EX_CONFIG)


def reload_config(path: Path | None, running: configmod.Config) -> configmod.Config | None:
    """Load the config again for SIGHUP; on any problem log why and return None (keep the old one).

    Settings that only take effect at start (the user, listening sockets) are
    reported when they changed. The caller checks what else it needs (keys,
    secrets), then calls :func:`apply_logging`.
    """
    try:
        cfg = configmod.load(path)
    except configmod.ConfigError as e:
        log.error("reload refused, still running with the previous configuration: %s", e)
        return None
    if cfg.general.user != running.general.user:
        log.warning("reload: general.user changed to %r; that takes a restart (still %r)",
                    cfg.general.user, running.general.user)
    return cfg


def apply_logging(progname: str, cfg: configmod.Config, running: configmod.Config) -> bool:
    """Switch to ``cfg``'s log settings; False (old settings kept, reason logged) when syslog is unreachable."""
    try:
        logs.setup(progname, cfg.log.level, syslog=cfg.log.syslog, syslog_socket=cfg.log.syslog_socket)
        return True
    except OSError as e:
        logs.setup(progname, running.log.level, syslog=running.log.syslog, syslog_socket=running.log.syslog_socket)
        log.error("reload refused, still running with the previous configuration: %s: log.syslog: "
                  "cannot reach %s: %s", cfg.source, cfg.log.syslog_socket, e.strerror or e)
        return False


def parse_listen(spec: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:/path`` → ("unix", path); ``[inet:]host:port`` → ("inet", (host, port))."""
    if spec.startswith("unix:"):
        return "unix", spec[5:]
    rest = spec[5:] if spec.startswith("inet:") else spec
    host, _, port = rest.rpartition(":")
    return "inet", (host.strip("[]"), int(port))
