"""mattermailctl postfix: wire mattermail into an existing Postfix (main.cf, master.cf)."""

from __future__ import annotations

from pathlib import Path

import click

from mattermail.ctl import postfixconf
from mattermail.ctl.base import Context, UserFacingError, cli, pass_ctx
from mattermail.ctl.terminal import echo


@cli.group("postfix")
@pass_ctx
def postfix(ctx: Context) -> None:
    """Postfix wiring: milters, submission service, catch-all transport, SRS maps, SASL."""
    ctx.keep_root = True  # edits /etc/postfix, which only root may


@postfix.command("configure")
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Postfix config directory (default: [postfix] config_dir, /etc/postfix).",
)
@click.option("--dry-run", is_flag=True, help="Print the diff of main.cf, master.cf and tables; write nothing.")
@click.option("--edge", is_flag=True,
              help="This host is an edge: catch-all mail and capture copies go to the router on another host "
                   "(--router) over LMTP/TCP; the milter stays local.")
@click.option("--router", "router", metavar="HOST:PORT", default=None,
              help="With --edge: the router host's LMTP address (its router.listen), e.g. router.lawfirm.example:2424.")
@pass_ctx
def configure(ctx: Context, config_dir: Path | None, dry_run: bool, edge: bool, router: str | None) -> None:
    """Write the main.cf / master.cf settings mattermail needs into an existing Postfix.

    Idempotent: a second run changes nothing. Existing relay_domains,
    transport_maps, milters and restrictions are kept and ours added. main.cf
    and master.cf are backed up to FILE.mattermail-TIMESTAMP.bak; `postfix
    check` runs afterwards and the originals are restored if it fails.

    With Debian's chrooted smtpd a unix milter socket must be under the spool,
    e.g. socket = "unix:/var/spool/postfix/mattermail/milter.sock" in [milter].

    An edge (--edge --router HOST:PORT) is one of several MX/submission hosts:
    its own milter, its catch-all domains delivered to the central router over
    LMTP/TCP. It needs [store] url (the shared database) and the router's
    capture secret; see docs/deployment.md.

    \b
    Example:
      mattermailctl postfix configure --dry-run
      mattermailctl postfix configure && postfix reload
      mattermailctl postfix configure --edge --router router.lawfirm.example:2424
    """
    cfg = ctx.config
    if edge and router is None:
        raise UserFacingError("--edge: needs --router HOST:PORT, the router host's LMTP address")
    if router is not None and not edge:
        raise UserFacingError("--router: only with --edge (a host running its own router is wired from "
                              "router.listen)")
    target = config_dir if config_dir is not None else cfg.postfix.config_dir
    try:
        change = postfixconf.configure(cfg, target, dry_run=dry_run, edge_router=router)
    except postfixconf.PostfixConfError as e:
        raise UserFacingError(str(e)) from None
    for w in change.warnings:
        echo(f"mattermailctl: warning: {w}", err=True)
    if not change.changed:
        echo(f"no change: {target} already has everything mattermail needs")
        return
    if dry_run:
        echo(change.diff, nl=False)
        echo(f"dry run: {len(change.changes)} setting(s) would change; nothing written")
        return
    for line in change.changes:
        echo(line)
    for b in change.backups:
        echo(f"backup: {b}")
    echo("postfix check: ok")
    reload = "postfix reload" if target == Path("/etc/postfix") else f"postfix -c {target} reload"
    echo(f"now run `{reload}` (or `systemctl reload postfix`) to apply")
