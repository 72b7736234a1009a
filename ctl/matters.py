"""mattermailctl matter: matters (cases, jobs) that mail is filed against.

CSV import uses the columns ``id,title,persons`` (a header line first;
``persons`` are primary addresses of existing persons, separated by spaces,
semicolons or commas). Every line is checked before anything is written, then
all matters are added in one transaction: a bad line imports nothing.
"""

from __future__ import annotations


import click

from mattermail.ctl.base import (
    Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address, valid_matter_id, valid_name,
)
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.ctl.persons import BadLine, check_address, check_name, csv_label, raise_first, read_csv, split_list
from mattermail.store import directory

MATTER_COLUMNS = ("id", "title", "persons")


def _matter_or_fail(ctx: Context, matter_id: str) -> directory.Matter:
    matter_id = valid_matter_id(matter_id, "id")
    m = directory.get_matter(ctx.store, matter_id)
    if m is None:
        raise UserFacingError(f"id: no matter {matter_id}")
    return m


def _matter_dict(m: directory.Matter) -> dict[str, object]:
    return {"id": m.id, "title": m.title, "status": m.status, "persons": list(m.persons)}


@cli.group()
def matter() -> None:
    """Matters (cases, jobs) that mail is filed against, and the persons on each."""


@matter.command("add")
@click.argument("matter_id", metavar="ID")
@click.option("--title", required=True, help="The matter's title.")
@click.option("--person", "persons", multiple=True, metavar="EMAIL",
              help="A person on this matter, by address (repeatable; the person must exist).")
@pass_ctx
@user_errors
def matter_add(ctx: Context, matter_id: str, title: str, persons: tuple[str, ...]) -> None:
    """Add an open matter. Mail to ID@<catch-all domain> is filed against it.

    \b
    Example:
      mattermailctl matter add 1234 --title "Smith v Jones" --person jane@client.example
    """
    matter_id = valid_matter_id(matter_id, "id")
    title = valid_name(title, "--title", "a title")
    emails = [valid_address(p, "--person") for p in persons]
    m = directory.add_matter(ctx.store, matter_id, title, emails)
    echo(f"added matter {m.id} ({safe(m.title)})" + (f" with {', '.join(m.persons)}" if m.persons else ""))


@matter.command("list")
@json_option
@click.option("--status", type=click.Choice(["open", "closed"]), default=None, help="Only matters with this status.")
@pass_ctx
def matter_list(ctx: Context, as_json: bool, status: str | None) -> None:
    """List matters: id, status, title and persons.

    \b
    Example:
      mattermailctl matter list --status open --json
    """
    matters = directory.list_matters(ctx.store, status)
    if as_json:
        echo_json([_matter_dict(m) for m in matters])
        return
    if not matters:
        echo("no matters" if status is None else f"no {status} matters")
    for m in matters:
        echo("\t".join([safe(m.id), m.status, safe(m.title), ", ".join(safe(p) for p in m.persons)]).rstrip("\t"))


@matter.command("show")
@click.argument("matter_id", metavar="ID")
@json_option
@pass_ctx
@user_errors
def matter_show(ctx: Context, matter_id: str, as_json: bool) -> None:
    """Show a matter: title, status, persons, aliases and how many messages are filed.

    \b
    Example:
      mattermailctl matter show 1234
    """
    m = _matter_or_fail(ctx, matter_id)
    aliases = [a.address for a in directory.list_aliases(ctx.store) if a.matter == m.id]
    filed = directory.filed_message_count(ctx.store, m.id)
    if as_json:
        echo_json({**_matter_dict(m), "aliases": aliases, "filed_messages": filed})
        return
    echo(f"matter:  {safe(m.id)}")
    echo(f"title:   {safe(m.title)}")
    echo(f"status:  {m.status}")
    echo("persons: " + (", ".join(safe(p) for p in m.persons) or "(none)"))
    echo("aliases: " + (", ".join(safe(a) for a in aliases) or "(none)"))
    echo(f"filed:   {'(unknown)' if filed is None else filed} message{'' if filed == 1 else 's'}")


def _set_status(ctx: Context, matter_id: str, status: str, verb: str) -> None:
    m = _matter_or_fail(ctx, matter_id)
    if m.status == status:
        echo(f"matter {m.id} is already {status}")
        return
    directory.set_matter_status(ctx.store, m.id, status)
    echo(f"{verb} matter {m.id}")


@matter.command("close")
@click.argument("matter_id", metavar="ID")
@pass_ctx
@user_errors
def matter_close(ctx: Context, matter_id: str) -> None:
    """Mark a matter closed.

    \b
    Example:
      mattermailctl matter close 1234
    """
    _set_status(ctx, matter_id, "closed", "closed")


@matter.command("reopen")
@click.argument("matter_id", metavar="ID")
@pass_ctx
@user_errors
def matter_reopen(ctx: Context, matter_id: str) -> None:
    """Mark a closed matter open again.

    \b
    Example:
      mattermailctl matter reopen 1234
    """
    _set_status(ctx, matter_id, "open", "reopened")


@matter.command("import")
@click.argument("csv_file", metavar="CSV")
@pass_ctx
@user_errors
def matter_import(ctx: Context, csv_file: str) -> None:
    """Add matters from a CSV file (- for standard input): all of them, or none.

    The header line names the columns id and title (both required) and persons
    (addresses of existing persons, separated by spaces or semicolons). Every
    line is checked before anything is written; the first problem is reported
    with its line and column.

    \b
    Example:
      printf 'id,title,persons\\n1234,Smith v Jones,jane@client.example\\n' > matters.csv
      mattermailctl matter import matters.csv
    """
    label = csv_label(csv_file)
    rows = read_csv(csv_file, MATTER_COLUMNS, required=("id", "title"))
    errors: list[str] = []
    seen: dict[str, int] = {}
    good: list[tuple[str, str, list[str]]] = []
    for line, cells in rows:
        where = f"{label} line {line}, column"
        try:
            if not cells["id"]:
                raise BadLine(f"{where} id: empty (every matter needs an id)")
            try:
                matter_id = valid_matter_id(cells["id"], f"{where} id")
            except UserFacingError as e:
                raise BadLine(e.message) from None
            if matter_id in seen:
                raise BadLine(f"{where} id: {matter_id} already appears on line {seen[matter_id]}")
            if directory.get_matter(ctx.store, matter_id) is not None:
                raise BadLine(f"{where} id: matter {matter_id} already exists")
            title = check_name(cells["title"], f"{where} title", "a title")
            if not title:
                raise BadLine(f"{where} title: empty (every matter needs a title)")
            persons = []
            for value in split_list(cells.get("persons", "")):
                email = check_address(value, f"{where} persons")
                if directory.person_by_email(ctx.store, email) is None:
                    raise BadLine(f"{where} persons: no person with address {email}")
                persons.append(email)
        except BadLine as e:
            errors.append(str(e))
            continue
        seen[matter_id] = line
        good.append((matter_id, title, persons))
    raise_first(errors)
    n = directory.import_matters(ctx.store, good)
    echo(f"imported {n} matter{'' if n == 1 else 's'} from {label}")


# -- legal hold (mattermail.store.records) -------------------------------------------------------------


@matter.command("hold")
@click.argument("matter_id", metavar="ID")
@click.option("--reason", required=True, help="Why (kept in the records chain).")
@pass_ctx
@user_errors
def matter_hold(ctx: Context, matter_id: str, reason: str) -> None:
    """Put a matter under legal hold: its messages cannot be deleted or refiled away.

    \b
    Example:
      mattermailctl matter hold 1234 --reason "litigation hold, letter of 2024-03-01"
    """
    from mattermail.store import records

    h = records.hold_matter(ctx.store, valid_matter_id(matter_id, "ID"), reason)
    echo(f"matter {safe(h.matter)} is under legal hold ({safe(h.reason)})")


@matter.command("release")
@click.argument("matter_id", metavar="ID")
@click.option("--reason", required=True, help="Why (kept in the records chain).")
@pass_ctx
@user_errors
def matter_release(ctx: Context, matter_id: str, reason: str) -> None:
    """Lift a matter's legal hold.

    \b
    Example:
      mattermailctl matter release 1234 --reason "case settled, hold lifted by the GC"
    """
    from mattermail.store import records

    h = records.release_matter(ctx.store, valid_matter_id(matter_id, "ID"), reason)
    echo(f"matter {safe(h.matter)}: legal hold released (it was: {safe(h.reason)})")
