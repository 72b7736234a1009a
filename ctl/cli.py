"""mattermailctl: the admin's command line.

Exit status: 0 on success, 1 on a user error (one line naming the field),
2 on usage errors (click's own), 78 when the config file cannot be loaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from mattermail import config as configmod
from mattermail import passwords
from mattermail.router import store as storemod


class UserFacingError(click.ClickException):
    exit_code = 1


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
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
        return self._config

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
    """Manage mattermail: users, and (soon) aliases, persons, matters, keys and Postfix wiring.

    \b
    Example:
      export MATTERMAIL_CONFIG=var/mattermail.toml
      mattermailctl user add alice@lawfirm.test --send-as partners@lawfirm.test
    """
    ctx.obj = Context(config_path)


def _valid_address(value: str, field: str) -> str:
    v = storemod.normalise_address(value)
    local, at, domain = v.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in v) or ":" in v:
        raise UserFacingError(f"{field}: {value!r} is not an email address")
    return v


def _read_password(confirm: bool = True) -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    line = sys.stdin.readline()
    if not line:
        raise UserFacingError("password: nothing on standard input")
    return line.rstrip("\r\n")


def _sync_passwd(ctx: Context) -> None:
    passwords.write_passwd_file(
        ctx.config.auth.passwd_file, storemod.password_hashes(ctx.store), group="dovecot"
    )


@cli.group()
def user() -> None:
    """SMTP users who may submit mail on port 587, and the addresses each may send as."""


@user.command("add")
@click.argument("address")
@click.option("--send-as", multiple=True, metavar="ADDRESS", help="Another address this user may send as (repeatable).")
@pass_ctx
@user_errors
def user_add(ctx: Context, address: str, send_as: tuple[str, ...]) -> None:
    """Add a user; the password is prompted for, or read from standard input.

    \b
    Example:
      echo 's3cret-pass' | mattermailctl user add alice@lawfirm.test --send-as info@lawfirm.test
    """
    login = _valid_address(address, "address")
    extra = [_valid_address(a, "--send-as") for a in send_as]
    pw_hash = passwords.hash_password(_read_password())
    u = storemod.add_user(ctx.store, login, pw_hash, extra)
    _sync_passwd(ctx)
    click.echo(f"added user {u.login} (may send as: {', '.join(u.addresses)})")


@user.command("passwd")
@click.argument("address")
@pass_ctx
@user_errors
def user_passwd(ctx: Context, address: str) -> None:
    """Set a user's password (prompted, or read from standard input).

    \b
    Example:
      mattermailctl user passwd alice@lawfirm.test
    """
    login = _valid_address(address, "address")
    if login not in {u.login for u in storemod.list_users(ctx.store)}:
        raise UserFacingError(f"address: no such user: {login}")
    storemod.set_password(ctx.store, login, passwords.hash_password(_read_password()))
    _sync_passwd(ctx)
    click.echo(f"password changed for {login}")


@user.command("remove")
@click.argument("address")
@pass_ctx
@user_errors
def user_remove(ctx: Context, address: str) -> None:
    """Remove a user; they can no longer log in on port 587.

    \b
    Example:
      mattermailctl user remove alice@lawfirm.test
    """
    login = _valid_address(address, "address")
    storemod.remove_user(ctx.store, login)
    _sync_passwd(ctx)
    click.echo(f"removed user {login}")


@user.command("list")
@json_option
@pass_ctx
def user_list(ctx: Context, as_json: bool) -> None:
    """List users and the addresses each may send as.

    \b
    Example:
      mattermailctl user list --json
    """
    users = storemod.list_users(ctx.store)
    if as_json:
        click.echo(json.dumps([{"login": u.login, "send_as": list(u.addresses)} for u in users], indent=2))
        return
    if not users:
        click.echo("no users")
    for u in users:
        click.echo(f"{u.login}\t{', '.join(u.addresses)}")


def main() -> None:
    cli(prog_name="mattermailctl")


if __name__ == "__main__":
    main()
