"""mattermailctl alias: extra catch-all addresses that file mail to a person or a matter.

Like the hosted systems' "Email Aliases": ``smith@matters.firm.example`` can
stand for matter 1234 or for a client. Only addresses in the configured
catch-all domains (``[general] catchall_domains``) are accepted, each once.
"""

from __future__ import annotations


import click

from mattermail.ctl.base import Context, cli, json_option, pass_ctx, user_errors, valid_address, valid_matter_id
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.store import directory


def _target(a: directory.Alias) -> str:
    return f"person {safe(a.person)}" if a.person is not None else f"matter {safe(a.matter)}"


@cli.group()
def alias() -> None:
    """Aliases: catch-all addresses that file mail to a person or a matter."""


@alias.command("add")
@click.argument("address")
@click.option("--person", metavar="EMAIL", default=None, help="File mail to this address against this person.")
@click.option("--matter", "matter_id", metavar="ID", default=None, help="File mail to this address against this matter.")
@pass_ctx
@user_errors
def alias_add(ctx: Context, address: str, person: str | None, matter_id: str | None) -> None:
    """Add an alias in a catch-all domain, for exactly one of --person or --matter.

    \b
    Example:
      mattermailctl alias add smith-v-jones@matters.lawfirm.test --matter 1234
      mattermailctl alias add jane@matters.lawfirm.test --person jane@client.example
    """
    if (person is None) == (matter_id is None):
        raise click.UsageError("give exactly one of --person or --matter")
    addr = valid_address(address, "address")
    email = valid_address(person, "--person") if person is not None else None
    matter_id = valid_matter_id(matter_id, "--matter") if matter_id is not None else None
    a = directory.add_alias(ctx.store, addr, ctx.config.general.catchall_domains, person=email, matter=matter_id)
    echo(f"added alias {a.address} for {_target(a)}")


@alias.command("list")
@json_option
@pass_ctx
def alias_list(ctx: Context, as_json: bool) -> None:
    """List aliases and what each files mail against.

    \b
    Example:
      mattermailctl alias list --json
    """
    aliases = directory.list_aliases(ctx.store)
    if as_json:
        echo_json([{"address": a.address, "person": a.person, "matter": a.matter} for a in aliases])
        return
    if not aliases:
        echo("no aliases")
    for a in aliases:
        echo(f"{safe(a.address)}\t{_target(a)}")


@alias.command("remove")
@click.argument("address")
@pass_ctx
@user_errors
def alias_remove(ctx: Context, address: str) -> None:
    """Remove an alias.

    \b
    Example:
      mattermailctl alias remove smith-v-jones@matters.lawfirm.test
    """
    addr = valid_address(address, "address")
    directory.remove_alias(ctx.store, addr)
    echo(f"removed alias {addr}")
