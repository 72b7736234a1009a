"""mattermailctl person: the persons (clients, contacts) mail is filed against, and their addresses.

CSV import/export uses the columns ``email,name,other_emails`` (a header line
first; ``other_emails`` separated by spaces, semicolons or commas). An import
checks every line before it writes anything, and then adds all persons in one
transaction: a bad line imports nothing, and the error names its line and column.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from mattermail.ctl import csvcells
from mattermail.ctl.base import (
    Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address, valid_name,
)
from mattermail.ctl.terminal import echo, echo_data, echo_json, safe
from mattermail.store import directory

PERSON_COLUMNS = ("email", "name", "other_emails")
_LIST_SEP = re.compile(r"[;,\s]+")


# -- CSV helpers (shared with ctl/matters.py) ------------------------------------------------------


def split_list(value: str) -> list[str]:
    """A CSV cell holding several addresses: separated by spaces, semicolons or commas."""
    return [v for v in _LIST_SEP.split(value.strip()) if v]


def csv_label(path: str) -> str:
    return "stdin" if path == "-" else Path(path).name


def read_csv(path: str, columns: Sequence[str], required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file (``-`` for standard input) as ``(line number, {column: stripped value})``.

    The first non-blank line is the header; it must name only ``columns`` and
    include every ``required`` one. Blank lines are skipped. Problems raise a
    one-line :class:`UserFacingError` naming the file, the line and the column.
    A leading ``'`` that our own exports put before a formula-like cell is
    dropped (:func:`mattermail.ctl.csvcells.restore`).
    """
    label = csv_label(path)
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UserFacingError(f"CSV: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's BOM is not part of the first column name
    except UnicodeDecodeError as e:
        raise UserFacingError(f"CSV: {label} is not UTF-8 (bad byte at offset {e.start})") from None

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    end = 0  # last physical line of the previous record
    try:
        for raw in reader:
            line, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in raw):
                continue
            if header is None:
                header = [c.strip().lower() for c in raw]
                for i, name in enumerate(header, 1):
                    if name not in columns:
                        raise UserFacingError(
                            f"{label} line {line}, column {i}: unknown column {name!r}; the first line must be "
                            f"the header {','.join(columns)}")
                    if header.index(name) != i - 1:
                        raise UserFacingError(f"{label} line {line}, column {name}: named twice in the header")
                for name in required:
                    if name not in header:
                        raise UserFacingError(
                            f"{label} line {line}, column {name}: missing from the header ({','.join(columns)})")
                continue
            if len(raw) > len(header):
                raise UserFacingError(
                    f"{label} line {line}, column {len(header) + 1}: extra field {raw[len(header)]!r} "
                    f"(the header has {len(header)} columns; quote values that contain commas)")
            cells = [csvcells.restore(c.strip()) for c in raw] + [""] * (len(header) - len(raw))
            rows.append((line, dict(zip(header, cells))))
    except csv.Error as e:
        raise UserFacingError(f"{label} line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise UserFacingError(f"CSV: {label} is empty (expected the header {','.join(columns)})")
    return rows


def raise_first(errors: list[str]) -> None:
    """One line for the first problem, and how many more there are."""
    if errors:
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UserFacingError(errors[0] + more)


class BadLine(Exception):
    """One CSV line's problem, already naming the file, line and column."""


def check_address(value: str, where: str) -> str:
    try:
        return valid_address(value, where)
    except UserFacingError as e:
        raise BadLine(e.message) from None


def check_name(value: str, where: str, what: str = "a name") -> str:
    try:
        return valid_name(value, where, what)
    except UserFacingError as e:
        raise BadLine(e.message) from None


# -- commands --------------------------------------------------------------------------------------


def _person_or_fail(ctx: Context, email: str) -> directory.Person:
    address = valid_address(email, "email")
    p = directory.person_by_email(ctx.store, address)
    if p is None:
        raise UserFacingError(f"email: no person with address {address}")
    return p


def _person_dict(p: directory.Person) -> dict[str, object]:
    return {"email": p.email, "name": p.name, "addresses": list(p.addresses)}


@cli.group()
def person() -> None:
    """Persons (clients, contacts) that mail is filed against, and their addresses."""


@person.command("add")
@click.argument("email")
@click.option("--name", default="", help="The person's name.")
@click.option("--email", "others", multiple=True, metavar="OTHER", help="Another address of this person (repeatable).")
@pass_ctx
@user_errors
def person_add(ctx: Context, email: str, name: str, others: tuple[str, ...]) -> None:
    """Add a person; EMAIL is their primary address.

    \b
    Example:
      mattermailctl person add jane@client.example --name "Jane Client" --email j.client@home.example
    """
    primary = valid_address(email, "email")
    extra = [valid_address(a, "--email") for a in others]
    p = directory.add_person(ctx.store, primary, valid_name(name, "--name"), extra)
    echo(f"added person {p.email}" + (f" ({safe(p.name)})" if p.name else "")
         + (f", also {', '.join(p.addresses[1:])}" if len(p.addresses) > 1 else ""))


@person.command("list")
@json_option
@pass_ctx
def person_list(ctx: Context, as_json: bool) -> None:
    """List persons: primary address, name and other addresses.

    \b
    Example:
      mattermailctl person list --json
    """
    persons = directory.list_persons(ctx.store)
    if as_json:
        echo_json([_person_dict(p) for p in persons])
        return
    if not persons:
        echo("no persons")
    for p in persons:
        echo("\t".join([safe(p.email), safe(p.name), " ".join(safe(a) for a in p.addresses[1:])]).rstrip("\t"))


@person.command("show")
@click.argument("email")
@json_option
@pass_ctx
@user_errors
def person_show(ctx: Context, email: str, as_json: bool) -> None:
    """Show a person: addresses, matters and the aliases that file mail to them.

    \b
    Example:
      mattermailctl person show jane@client.example
    """
    p = _person_or_fail(ctx, email)
    matters = [m for m in directory.list_matters(ctx.store) if p.email in m.persons]
    aliases = [a.address for a in directory.list_aliases(ctx.store) if a.person == p.email]
    if as_json:
        echo_json({**_person_dict(p),
                   "matters": [{"id": m.id, "title": m.title, "status": m.status} for m in matters],
                   "aliases": aliases})
        return
    echo(f"person:    {safe(p.email)}")
    echo(f"name:      {safe(p.name) or '(none)'}")
    echo(f"addresses: {', '.join(safe(a) for a in p.addresses)}")
    echo("matters:   " + (", ".join(f"{safe(m.id)} ({safe(m.title)}, {m.status})" for m in matters) or "(none)"))
    echo("aliases:   " + (", ".join(safe(a) for a in aliases) or "(none)"))


@person.command("edit")
@click.argument("email")
@click.option("--name", default=None, help="A new name.")
@click.option("--add-email", multiple=True, metavar="ADDRESS", help="Add an address (repeatable).")
@click.option("--remove-email", multiple=True, metavar="ADDRESS", help="Remove a non-primary address (repeatable).")
@pass_ctx
@user_errors
def person_edit(ctx: Context, email: str, name: str | None, add_email: tuple[str, ...],
                remove_email: tuple[str, ...]) -> None:
    """Change a person's name or addresses.

    \b
    Example:
      mattermailctl person edit jane@client.example --name "Jane Q. Client" \\
          --add-email jane@newjob.example --remove-email j.client@home.example
    """
    if name is None and not add_email and not remove_email:
        raise click.UsageError("nothing to change: give --name, --add-email or --remove-email")
    p = _person_or_fail(ctx, email)
    new_name = valid_name(name, "--name") if name is not None else None
    add = [valid_address(a, "--add-email") for a in add_email]
    remove = [valid_address(a, "--remove-email") for a in remove_email]
    for a in remove:
        if a not in p.addresses:
            raise UserFacingError(f"--remove-email: {a} is not an address of {p.email}")
    p = directory.edit_person(ctx.store, p.email, new_name, add, remove)
    echo(f"updated person {p.email}: name {safe(p.name) or '(none)'}; addresses {', '.join(p.addresses)}")


@person.command("remove")
@click.argument("email")
@pass_ctx
@user_errors
def person_remove(ctx: Context, email: str) -> None:
    """Remove a person (and their links to matters). Remove their aliases first.

    \b
    Example:
      mattermailctl person remove jane@client.example
    """
    p = _person_or_fail(ctx, email)
    directory.remove_person(ctx.store, p.email)
    echo(f"removed person {p.email}")


@person.command("import")
@click.argument("csv_file", metavar="CSV")
@pass_ctx
@user_errors
def person_import(ctx: Context, csv_file: str) -> None:
    """Add persons from a CSV file (- for standard input): all of them, or none.

    The header line names the columns email (required), name and other_emails
    (separated by spaces or semicolons). Every line is checked before anything
    is written; the first problem is reported with its line and column.

    \b
    Example:
      printf 'email,name,other_emails\\njane@client.example,Jane Client,j@home.example\\n' > people.csv
      mattermailctl person import people.csv
    """
    label = csv_label(csv_file)
    rows = read_csv(csv_file, PERSON_COLUMNS, required=("email",))
    errors: list[str] = []
    seen: dict[str, int] = {}
    good: list[tuple[str, str, list[str]]] = []
    for line, cells in rows:
        where = f"{label} line {line}, column"
        try:
            if not cells.get("email"):
                raise BadLine(f"{where} email: empty (every person needs a primary address)")
            primary = check_address(cells["email"], f"{where} email")
            if primary in seen:
                raise BadLine(f"{where} email: {primary} already appears on line {seen[primary]}")
            if any(p.email == primary for p in directory.persons_for_address(ctx.store, primary)):
                raise BadLine(f"{where} email: a person with primary address {primary} already exists")
            others = [check_address(a, f"{where} other_emails") for a in split_list(cells.get("other_emails", ""))]
            name = check_name(cells.get("name", ""), f"{where} name")
        except BadLine as e:
            errors.append(str(e))
            continue
        seen[primary] = line
        good.append((primary, name, others))
    raise_first(errors)
    n = directory.import_persons(ctx.store, good)
    echo(f"imported {n} person{'' if n == 1 else 's'} from {label}")


@person.command("export")
@click.argument("csv_file", metavar="CSV")
@pass_ctx
@user_errors
def person_export(ctx: Context, csv_file: str) -> None:
    """Write every person to a CSV file (- for standard output), in the format import reads.

    A cell a spreadsheet would run as a formula (starting with = + - @, TAB
    or CR) is written with a ' in front; import drops it again. For the exact
    values use `person list --json`.

    \b
    Example:
      mattermailctl person export people.csv
      mattermailctl person export - | head
    """
    buf = io.StringIO()
    w = csvcells.writer(buf)
    w.writerow(PERSON_COLUMNS)
    persons = directory.list_persons(ctx.store)
    for p in persons:
        w.writerow([p.email, p.name, " ".join(p.addresses[1:])])
    if csv_file == "-":
        echo_data(buf.getvalue())
        return
    try:
        Path(csv_file).write_text(buf.getvalue(), encoding="utf-8")
    except OSError as e:
        raise UserFacingError(f"CSV: cannot write {csv_file}: {e.strerror or e}") from None
    echo(f"exported {len(persons)} person{'' if len(persons) == 1 else 's'} to {csv_file}")
