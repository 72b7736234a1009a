"""mattermailctl's shared parts: the click group, the context, error handling.

Exit status: 0 on success, 1 on a user error (one line naming the field),
2 on usage errors (click's own), 78 when the config file cannot be loaded.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from mattermail import config as configmod
from mattermail import passwords, privileges
from mattermail.router import store as storemod


class UserFacingError(click.ClickException):
    exit_code = 1


class Context:
    """What a command needs: the config (loaded on first use) and the store.

    Run as root, the first use of the config switches to ``general.user`` (when
    that user exists), so the store, keys and tables written here stay readable
    and writable by the daemons. ``keep_root`` is set by commands that edit
    Postfix's own files.
    """

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.keep_root = False
        self._config: configmod.Config | None = None
        self._store: storemod.Store | None = None

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            try:
                self._config = configmod.load(self.config_path)
            except configmod.ConfigError as e:
                click.echo(f"mattermailctl: {e}", err=True)
                sys.exit(configmod.EX_CONFIG)
            if not self.keep_root:
                self._become_daemon_user(self._config.general.user)
        return self._config

    @staticmethod
    def _become_daemon_user(user: str) -> None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return  # no daemon user on this machine (a dev checkout): nothing to keep usable for it
        try:
            if privileges.drop(user):
                os.umask(0o007)  # as the daemons: nothing we create is world-readable
        except (privileges.PrivilegeError, OSError) as e:
            raise UserFacingError(f"cannot switch to the daemon user: {e}") from None

    @property
    def store(self) -> storemod.Store:
        if self._store is None:
            cfg = self.config.store
            self._store = storemod.Store(cfg.path, cfg.messages_dir)
        return self._store


pass_ctx = click.make_pass_decorator(Context)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line CLI errors with exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (storemod.UserError, passwords.PasswordError) as e:
            raise UserFacingError(str(e)) from None

    return wrapper


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar=configmod.ENV_VAR,
    type=click.Path(dir_okay=False),
    help=f"Config file (default ${configmod.ENV_VAR} or {configmod.DEFAULT_PATH}).",
)
@click.version_option(package_name="mattermail")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Manage mattermail: users, disclaimers, DKIM keys, DNS checks, persons, matters, aliases, Postfix.

    \b
    Example:
      export MATTERMAIL_CONFIG=var/mattermail.toml
      mattermailctl user add alice@lawfirm.test --send-as partners@lawfirm.test
    """
    ctx.obj = Context(config_path)


def valid_address(value: str, field: str) -> str:
    v = storemod.normalise_address(value)
    local, at, domain = v.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in v) or ":" in v:
        raise UserFacingError(f"{field}: {value!r} is not an email address")
    return v
