"""mattermailctl's shared parts: the click group, the context, error handling.

Exit status: 0 on success, 1 on a user error (one line naming the field),
2 on usage errors (click's own), 78 when the config file cannot be loaded.
A store that cannot be read (damaged, locked, unreadable) is one line naming the
file and what to do, exit status 1, for every command (:func:`store_failure`).
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
from mattermail import passwords, privileges, validate
from mattermail.ctl.terminal import echo, safe
from mattermail import store as storemod


class UserFacingError(click.ClickException):
    exit_code = 1


def _escaped(e: click.ClickException) -> None:
    """Make ``e`` print its message with control and bidi characters escaped (it may echo input)."""
    original = e.format_message
    e.format_message = lambda: safe(original())  # type: ignore[method-assign]


class SafeGroup(click.Group):
    """The root group: every error message, ours or click's, is escaped before it is shown."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as e:
            _escaped(e)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            _escaped(e)
            raise
        except storemod.StoreError as e:  # any command, any query: one line, never a traceback
            obj = ctx.obj if isinstance(ctx.obj, Context) else None
            echo(f"mattermailctl: {safe(store_failure(obj.store_path if obj else None, e))}", err=True)
            ctx.exit(1)


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
                echo(f"mattermailctl: {safe(e)}", err=True)
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
    def store_path(self) -> str | None:
        """The configured database file, when the config has been loaded (for error messages)."""
        return self._config.store.where if self._config is not None else None

    @property
    def store(self) -> storemod.Store:
        if self._store is None:
            cfg = self.config.store
            try:
                self._store = storemod.Store(cfg.location, cfg.messages_dir)
            except OSError as e:  # the store's directory cannot be made (permissions)
                raise UserFacingError(store_failure(str(cfg.path), e)) from None
            self._store.actor = admin_name()  # named in the records chain for what this command changes
        return self._store


def store_failure(path: str | None, e: BaseException) -> str:
    """The one line a command prints when the store fails under it: the file, what is wrong, the way out."""
    kind, text = storemod.describe_error(e)
    where = f"the store {path}" if path else "the store"
    if kind == "damaged":
        return (f"{where} is damaged ({text}): run 'mattermailctl store verify', or move it (with its -wal and "
                f"-shm files) aside and restore a backup with 'mattermailctl restore DIR'")
    if kind == "busy":
        return f"{where} is busy ({text}): another process holds it locked; try again in a moment"
    if kind == "unavailable" and path and path.startswith(("postgresql://", "postgres://")):
        return (f"{where} cannot be reached or written ({text}): check that the PostgreSQL server is up and that "
                f"store.url names the right host, port, database, user and password")
    if kind == "unavailable":
        return (f"{where} cannot be read or written ({text}): check that it and its directory exist, are "
                f"writable by the user running this command (uid {os.getuid()}) and that the disk is not full")
    return f"{where} failed ({text}): run 'mattermailctl store verify'"


pass_ctx = click.make_pass_decorator(Context)


def admin_name() -> str:
    """Who runs this command: ``$SUDO_USER`` under sudo, else the login name."""
    import getpass

    sudo = os.environ.get("SUDO_USER", "").strip()
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


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


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _invalid(field: str, value: str, what: str, e: validate.Invalid) -> UserFacingError:
    return UserFacingError(f"{field}: {value!r} is not {what}: {e}")


def valid_address(value: str, field: str) -> str:
    """An email address (:func:`mattermail.validate.mailbox`), lower-cased as the store keeps addresses.

    Surrounding blanks and one pair of angle brackets are dropped first.
    """
    v = value.strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1].strip()
    try:
        return storemod.normalise_address(validate.mailbox(v))
    except validate.Invalid as e:
        raise _invalid(field, value, "an email address", e) from None


def valid_domain(value: str, field: str) -> str:
    """A domain name (:func:`mattermail.validate.domain`), lower-case; blanks and one trailing dot dropped."""
    v = value.strip()
    try:
        return validate.domain(v[:-1] if v.endswith(".") else v)
    except validate.Invalid as e:
        raise _invalid(field, value, "a domain name", e) from None


def valid_matter_id(value: str, field: str) -> str:
    """A matter id (:func:`mattermail.validate.matter_id`); surrounding blanks dropped."""
    try:
        return validate.matter_id(value.strip())
    except validate.Invalid as e:
        raise _invalid(field, value, "a valid matter id", e) from None


def valid_name(value: str, field: str, what: str = "a name") -> str:
    """A person's name or a matter's title (:func:`mattermail.validate.display_name`)."""
    try:
        return validate.display_name(value)
    except validate.Invalid as e:
        raise _invalid(field, value, what, e) from None
