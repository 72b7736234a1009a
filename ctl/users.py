"""mattermailctl user: SMTP users for port 587 and the addresses each may send as."""

from __future__ import annotations

import sys

import click

from mattermail import passwords
from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail import store as storemod

def _read_password(confirm: bool = True) -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    line = sys.stdin.readline()
    if not line:
        raise UserFacingError("password: nothing on standard input")
    return line.rstrip("\r\n")


def _login(value: str, field: str = "address") -> str:
    """A login: an email address without ':' (Dovecot's passwd-file separates its fields with ':')."""
    login = valid_address(value, field)
    if ":" in login:
        raise UserFacingError(f"{field}: {value!r} cannot be a login: Dovecot's passwd-file does not allow ':' "
                              "(an IPv6 address literal)")
    return login


def _sync_passwd(ctx: Context) -> None:
    """Rewrite what Dovecot and Postfix read: the passwd-file and the sender login map."""
    passwords.write_passwd_file(
        ctx.config.auth.passwd_file, storemod.password_hashes(ctx.store),
        group=ctx.config.auth.passwd_group or None
    )
    warning = passwords.write_sender_login_map(ctx.config.auth.sender_login_map, storemod.login_addresses(ctx.store),
                                               ctx.config.postfix.config_dir)
    if warning:
        echo(f"mattermailctl: warning: {safe(warning)}", err=True)




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
    login = _login(address)
    extra = [valid_address(a, "--send-as") for a in send_as]
    pw_hash = passwords.hash_password(_read_password())
    u = storemod.add_user(ctx.store, login, pw_hash, extra)
    _sync_passwd(ctx)
    echo(f"added user {u.login} (may send as: {', '.join(u.addresses)})")


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
    login = _login(address)
    if login not in {u.login for u in storemod.list_users(ctx.store)}:
        raise UserFacingError(f"address: no such user: {login}")
    storemod.set_password(ctx.store, login, passwords.hash_password(_read_password()))
    _sync_passwd(ctx)
    echo(f"password changed for {login}")


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
    try:
        login = valid_address(address, "address")
    except UserFacingError:
        # A login stored before addresses were checked this strictly can still be removed.
        login = storemod.normalise_address(address)
        if login not in {u.login for u in storemod.list_users(ctx.store)}:
            raise
    storemod.remove_user(ctx.store, login)
    _sync_passwd(ctx)
    echo(f"removed user {safe(login)}")


@user.command("sync")
@pass_ctx
@user_errors
def user_sync(ctx: Context) -> None:
    """Rewrite this host's Dovecot passwd-file and Postfix sender login map from the store.

    On an edge host (several Postfix hosts, one shared database) users are
    added on one host; run this on every other edge afterwards, e.g. from cron.
    Idempotent: unchanged users give the same files.

    \b
    Example:
      mattermailctl user sync
    """
    _sync_passwd(ctx)
    echo(f"wrote {ctx.config.auth.passwd_file} and {ctx.config.auth.sender_login_map} "
         f"({len(storemod.list_users(ctx.store))} user(s))")


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
        echo_json([{"login": u.login, "send_as": list(u.addresses)} for u in users])
        return
    if not users:
        echo("no users")
    for u in users:
        echo(f"{safe(u.login)}\t{', '.join(safe(a) for a in u.addresses)}")
