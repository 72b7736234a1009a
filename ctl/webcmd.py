"""mattermailctl api token / user role / matter access: who may use mattermail-web, and see what.

* ``api token create --user ADDRESS [--scope read|write]`` prints the token alone on its last line (the
  store keeps only its SHA-256); ``api token list`` shows each with its last use; ``api token revoke ID``.
* ``user role ADDRESS admin|user``: admins see every matter (views of walled ones are logged) and the
  unfiled queue, and may refile.
* ``matter access ID [--deny ADDRESS]… [--only ADDRESS]… [--clear]``: the matter's ethical wall; with no
  option, shows the wall and the latest admin views of the matter.
"""

from __future__ import annotations

import time

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address
from mattermail.ctl.matters import _matter_or_fail, matter
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.ctl.users import user
from mattermail.store import access, tokens


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


@cli.group("api")
def api() -> None:
    """The JSON API of mattermail-web: tokens for the systems that read it."""


@api.group("token")
def token() -> None:
    """API tokens (Authorization: Bearer TOKEN), each for one user."""


@token.command("create")
@click.option("--user", "login", required=True, metavar="ADDRESS", help="The user the token acts as.")
@click.option("--scope", type=click.Choice(tokens.SCOPES), default="read", show_default=True,
              help="read: every GET; write: also refile (an admin's token).")
@pass_ctx
@user_errors
def token_create(ctx: Context, login: str, scope: str) -> None:
    """Make a token; it is printed once, alone on the last line (keep it: only its hash is stored).

    \b
    Example:
      mattermailctl api token create --user alice@lawfirm.test --scope read | tail -n 1
    """
    t, secret = tokens.create_token(ctx.store, valid_address(login, "--user"), scope)
    echo(f"token {t.id} for {safe(t.login)} (scope {t.scope}); it is shown only now:")
    echo(secret)


@token.command("list")
@json_option
@pass_ctx
def token_list(ctx: Context, as_json: bool) -> None:
    """List tokens: id, user, scope, created, last used, revoked.

    \b
    Example:
      mattermailctl api token list
    """
    rows = tokens.list_tokens(ctx.store)
    if as_json:
        echo_json([{"id": t.id, "user": t.login, "scope": t.scope, "created": t.created, "last_used": t.last_used,
                    "revoked": t.revoked} for t in rows])
        return
    if not rows:
        echo("no tokens")
    for t in rows:
        echo("\t".join([str(t.id), safe(t.login), t.scope, f"created {_when(t.created)}",
                        f"last used {_when(t.last_used)}", f"revoked {_when(t.revoked)}" if t.revoked else "live"]))


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@pass_ctx
@user_errors
def token_revoke(ctx: Context, token_id: int) -> None:
    """Revoke a token: it stops working at once.

    \b
    Example:
      mattermailctl api token revoke 3
    """
    t = tokens.revoke_token(ctx.store, token_id)
    echo(f"revoked token {t.id} of {safe(t.login)}")


@user.command("role")
@click.argument("address")
@click.argument("role", type=click.Choice(access.ROLES), required=False)
@pass_ctx
@user_errors
def user_role(ctx: Context, address: str, role: str | None) -> None:
    """Show or set a user's role in mattermail-web: admin (sees every matter, logged) or user.

    \b
    Example:
      mattermailctl user role alice@lawfirm.test admin
    """
    login = valid_address(address, "address")
    if role is not None:
        access.set_role(ctx.store, login, role)
    echo(f"{safe(login)}\t{access.role_of(ctx.store, login)}")


@matter.command("access")
@click.argument("matter_id", metavar="ID")
@click.option("--deny", multiple=True, metavar="ADDRESS", help="Screen this user off the matter (repeatable).")
@click.option("--only", multiple=True, metavar="ADDRESS",
              help="Only these users (and admins) may see the matter (repeatable; replaces the list).")
@click.option("--clear", is_flag=True, help="Remove the matter's wall.")
@json_option
@pass_ctx
@user_errors
def matter_access(ctx: Context, matter_id: str, deny: tuple[str, ...], only: tuple[str, ...], clear: bool,
                  as_json: bool) -> None:
    """Show or set the matter's ethical wall in the web view and the API.

    A screened user sees neither the matter nor any message filed to it (not in counts, not in search), even
    a message also filed to a matter they may see. Admins see it; each of their views is logged and listed here.

    \b
    Example:
      mattermailctl matter access 1234 --deny bob@lawfirm.test
      mattermailctl matter access 1234 --only alice@lawfirm.test --only carol@lawfirm.test
      mattermailctl matter access 1234 --clear
    """
    m = _matter_or_fail(ctx, matter_id)
    if clear and (deny or only):
        raise UserFacingError("--clear: give it alone (not with --deny or --only)")
    if clear:
        access.clear(ctx.store, m.id)
    if only:
        access.only(ctx.store, m.id, [valid_address(a, "--only") for a in only])
    if deny:
        access.deny(ctx.store, m.id, [valid_address(a, "--deny") for a in deny])
    wall = access.get_wall(ctx.store, m.id)
    views = access.admin_views(ctx.store, m.id)
    if as_json:
        echo_json({"matter": m.id, "deny": list(wall.denied), "only": list(wall.only),
                   "admin_views": [{"time": v.time, "login": v.login, "message": v.message, "what": v.what}
                                   for v in views]})
        return
    if not wall.walled:
        echo(f"matter {m.id}: no wall (every user may see it)")
    else:
        echo(f"matter {m.id}: " + "; ".join(
            ([f"only {', '.join(safe(a) for a in wall.only)}"] if wall.only else [])
            + ([f"denied {', '.join(safe(a) for a in wall.denied)}"] if wall.denied else [])))
    for v in views:
        echo("\t".join([_when(v.time), safe(v.login), safe(v.what)] + ([f"message {v.message}"] if v.message else [])))
