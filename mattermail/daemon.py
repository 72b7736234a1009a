"""What every mattermail daemon does on start: parse --config, load it, set up logs.

A config that fails to load prints one line naming the file and key, and the
process exits with status 78 (EX_CONFIG), which systemd and supervisors treat
as "do not restart until fixed".
"""

from __future__ import annotations

import argparse
import sys

from mattermail import config as configmod
from mattermail import logs


def start(progname: str, description: str, argv: list[str] | None = None) -> configmod.Config:
    parser = argparse.ArgumentParser(prog=progname, description=description)
    parser.add_argument("--config", help=f"config file (default ${configmod.ENV_VAR} or {configmod.DEFAULT_PATH})")
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"{progname}: fatal: {e}", file=sys.stderr)
        sys.exit(configmod.EX_CONFIG)
    logs.setup(progname, cfg.log.level)
    return cfg


def parse_listen(spec: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:/path`` → ("unix", path); ``[inet:]host:port`` → ("inet", (host, port))."""
    if spec.startswith("unix:"):
        return "unix", spec[5:]
    rest = spec[5:] if spec.startswith("inet:") else spec
    host, _, port = rest.rpartition(":")
    return "inet", (host.strip("[]"), int(port))
