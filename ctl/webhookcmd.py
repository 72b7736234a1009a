"""mattermailctl webhook: practice-management systems told of every filing, without polling.

mattermail-web POSTs each filing and refiling to every matching webhook (signed, retried, in order per
matter); ``webhook list`` shows each one's backlog and last error.
"""

from __future__ import annotations

import os
import time

import click

from mattermail.ctl.base import (Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address,
                                 valid_matter_id)
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.store import webhooks


@cli.group()
def webhook() -> None:
    """Webhooks: each filing POSTed as signed JSON to a URL (by mattermail-web)."""


@webhook.command("add")
@click.argument("url")
@click.option("--secret-file", required=True, type=click.Path(dir_okay=False),
              help="File holding the shared secret for the HMAC-SHA256 signature (read at each delivery).")
@click.option("--matter", "matter_id", metavar="ID", help="Only filings to this matter.")
@click.option("--user", "login", metavar="ADDRESS",
              help="Only messages this user may see (the user's ethical walls apply).")
@pass_ctx
@user_errors
def webhook_add(ctx: Context, url: str, secret_file: str, matter_id: str | None, login: str | None) -> None:
    """Add a webhook: every later filing (and refiling) is POSTed to URL.

    \b
    Example:
      head -c 32 /dev/urandom | base64 > /etc/mattermail/pms-webhook.key
      mattermailctl webhook add https://pms.example/hooks/mail --secret-file /etc/mattermail/pms-webhook.key
    """
    path = os.path.abspath(secret_file)
    try:
        with open(path, "rb") as f:
            if not f.read().strip():
                raise UserFacingError(f"--secret-file: {path} is empty")
    except OSError as e:
        raise UserFacingError(f"--secret-file: cannot read {path}: {e.strerror or e}") from None
    w = webhooks.add_webhook(ctx.store, url, path, valid_matter_id(matter_id, "--matter") if matter_id else None,
                             valid_address(login, "--user") if login else None)
    echo(f"added webhook {w.id}: {safe(w.url)}" + (f" (matter {w.matter})" if w.matter else "")
         + (f" (as seen by {safe(w.login)})" if w.login else ""))


@webhook.command("list")
@json_option
@pass_ctx
def webhook_list(ctx: Context, as_json: bool) -> None:
    """List webhooks with their backlog (events not yet delivered), deliveries and last error.

    \b
    Example:
      mattermailctl webhook list
    """
    rows = webhooks.list_webhooks(ctx.store)
    if as_json:
        echo_json([{"id": s.webhook.id, "url": s.webhook.url, "matter": s.webhook.matter, "user": s.webhook.login,
                    "backlog": s.backlog, "delivered": s.delivered, "last_delivered": s.last_delivered,
                    "last_error": s.last_error} for s in rows])
        return
    if not rows:
        echo("no webhooks")
    for s in rows:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.last_delivered)) if s.last_delivered else "never"
        echo("\t".join([str(s.webhook.id), safe(s.webhook.url), f"matter {s.webhook.matter or '*'}",
                        f"backlog {s.backlog}", f"delivered {s.delivered} (last {last})",
                        f"last error: {safe(s.last_error)}" if s.last_error else "no errors"]))


@webhook.command("remove")
@click.argument("webhook_id", metavar="ID", type=int)
@pass_ctx
@user_errors
def webhook_remove(ctx: Context, webhook_id: int) -> None:
    """Remove a webhook: its undelivered events are dropped.

    \b
    Example:
      mattermailctl webhook remove 2
    """
    w = webhooks.remove_webhook(ctx.store, webhook_id)
    echo(f"removed webhook {w.id}: {safe(w.url)}")
