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
@pass_ctx
def configure(ctx: Context, config_dir: Path | None, dry_run: bool) -> None:
    """Write the main.cf / master.cf settings mattermail needs into an existing Postfix.

    Idempotent: a second run changes nothing. Existing relay_domains,
    transport_maps, milters and restrictions are kept and ours added. main.cf
    and master.cf are backed up to FILE.mattermail-TIMESTAMP.bak; `postfix
    check` runs afterwards and the originals are restored if it fails.

    With Debian's chrooted smtpd a unix milter socket must be under the spool,
    e.g. socket = "unix:/var/spool/postfix/mattermail/milter.sock" in [milter].

    \b
    Example:
      mattermailctl postfix configure --dry-run
      mattermailctl postfix configure && postfix reload
    """
    cfg = ctx.config
    target = config_dir if config_dir is not None else cfg.postfix.config_dir
    try:
        change = postfixconf.configure(cfg, target, dry_run=dry_run)
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
