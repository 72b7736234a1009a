"""mattermailctl disclaimer: the legal disclaimers appended to outbound mail.

One default disclaimer, plus optional per-domain and per-sender ones; the most
specific applies (sender, then domain or parent domain, then default). Each has
a plain-text form and an optional HTML fragment (derived from the text when
absent).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import click

from mattermail.ctl.base import (
    Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address, valid_domain,
)
from mattermail.ctl.terminal import echo, echo_json, safe, write_raw
from mattermail.milter import disclaimer as disclaimermod
from mattermail import store as storemod
from mattermail.addresses import mailboxes

_FULL_DOCUMENT = re.compile(r"<(?:html|body)[\s>/]", re.IGNORECASE)


def _scope(domain: str | None, sender: str | None) -> tuple[str, str]:
    """(scope, key) from the mutually exclusive --domain / --sender options."""
    if domain is not None and sender is not None:
        raise click.UsageError("--domain and --sender are mutually exclusive")
    if domain is not None:
        return "domain", valid_domain(domain, "--domain")
    if sender is not None:
        return "sender", valid_address(sender, "--sender")
    return "default", ""


def _describe(scope: str, key: str) -> str:
    return f"{scope} disclaimer" + (f" for {safe(key)}" if key else "")


def _read_text(path: str, field: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserFacingError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM from a Windows editor is not part of the text
    except UnicodeDecodeError as e:
        raise UserFacingError(f"{field}: {path} is not UTF-8 (bad byte at offset {e.start})") from None
    if not text.strip():
        raise UserFacingError(f"{field}: {path} is empty")
    return text


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _row_dict(row: storemod.DisclaimerRow) -> dict[str, object]:
    return {"scope": row.scope, "key": row.key, "text": row.text, "html": row.html, "updated": _iso(row.updated)}


def _print_row(row: storemod.DisclaimerRow) -> None:
    echo(f"{_describe(row.scope, row.key)} (updated {_iso(row.updated)})")
    echo("  text:")
    for line in row.text.strip("\r\n").splitlines():
        echo(f"    {line}")
    if row.html is None:
        echo("  html: (derived from the text)")
    else:
        echo("  html:")
        for line in row.html.strip("\r\n").splitlines():
            echo(f"    {line}")


@cli.group()
def disclaimer() -> None:
    """Legal disclaimers appended to outbound mail: a default, per domain, per sender.

    The most specific one applies: per sender, then per domain (or parent
    domain), then the default.
    """


@disclaimer.command("set")
@click.option("--domain", metavar="DOMAIN", help="For senders in this domain and its subdomains.")
@click.option("--sender", metavar="ADDRESS", help="For this sender address only.")
@click.option("--text", "text_file", required=True, metavar="FILE", help="Plain-text disclaimer (UTF-8 file).")
@click.option("--html", "html_file", metavar="FILE",
              help="HTML fragment (UTF-8 file); derived from the text when omitted.")
@pass_ctx
@user_errors
def disclaimer_set(ctx: Context, domain: str | None, sender: str | None, text_file: str,
                   html_file: str | None) -> None:
    """Set (or replace) the default, a domain's or a sender's disclaimer.

    The HTML form is a fragment, inserted before </body> of HTML parts; do not
    give a whole document.

    \b
    Example:
      mattermailctl disclaimer set --text disclaimer.txt --html disclaimer.html
      mattermailctl disclaimer set --domain lawfirm.test --text lawfirm.txt
      mattermailctl disclaimer set --sender alice@lawfirm.test --text alice.txt
    """
    scope, key = _scope(domain, sender)
    text = _read_text(text_file, "--text")
    html = _read_text(html_file, "--html") if html_file is not None else None
    if html is not None and _FULL_DOCUMENT.search(html):
        echo("warning: --html: contains <html> or <body>; a fragment is expected "
             "(it is inserted before the message's </body>)", err=True)
    storemod.set_disclaimer(ctx.store, scope, key, text, html)
    lines = len(text.strip("\r\n").splitlines())
    html_note = "HTML from file" if html is not None else "HTML derived from the text"
    echo(f"set {_describe(scope, key)} ({lines} line(s) of text, {html_note})")


@disclaimer.command("show")
@json_option
@click.option("--for", "for_address", metavar="ADDRESS", help="Show only the disclaimer that applies to this sender.")
@pass_ctx
def disclaimer_show(ctx: Context, as_json: bool, for_address: str | None) -> None:
    """List the disclaimers, or show which one applies to a sender.

    \b
    Example:
      mattermailctl disclaimer show --json
      mattermailctl disclaimer show --for alice@lawfirm.test
    """
    rows = storemod.list_disclaimers(ctx.store)
    if for_address is not None:
        sender = valid_address(for_address, "--for")
        row = storemod.disclaimer_for(rows, sender)
        if as_json:
            echo_json({"for": sender, "disclaimer": _row_dict(row) if row else None})
        elif row is None:
            echo(f"no disclaimer applies to {sender}")
        else:
            echo(f"{sender} gets the ", nl=False)
            _print_row(row)
        return
    if as_json:
        echo_json([_row_dict(r) for r in rows])
        return
    if not rows:
        echo("no disclaimers")
    for r in rows:
        _print_row(r)


@disclaimer.command("remove")
@click.option("--domain", metavar="DOMAIN", help="Remove this domain's disclaimer.")
@click.option("--sender", metavar="ADDRESS", help="Remove this sender's disclaimer.")
@pass_ctx
@user_errors
def disclaimer_remove(ctx: Context, domain: str | None, sender: str | None) -> None:
    """Remove the default (neither option), a domain's or a sender's disclaimer.

    \b
    Example:
      mattermailctl disclaimer remove --sender alice@lawfirm.test
    """
    scope, key = _scope(domain, sender)
    storemod.remove_disclaimer(ctx.store, scope, key)
    echo(f"removed {_describe(scope, key)}")


def _from_address(raw: bytes) -> str | None:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return next((box.address for box in mailboxes(headers.get_all("From", [])) if box.valid), None)


@disclaimer.command("preview")
@click.argument("file", metavar="FILE.eml", type=click.Path(exists=True, dir_okay=False))
@click.option("--sender", metavar="ADDRESS", help="Pick the disclaimer for this sender (default: the From: address).")
@pass_ctx
def disclaimer_preview(ctx: Context, file: str, sender: str | None) -> None:
    """Write the message as it would leave, with its disclaimer, to standard output.

    The message bytes are written unchanged except for the decorated parts
    (on a terminal, control characters are shown escaped); a one-line
    summary (which disclaimer, what was done) goes to standard error.

    \b
    Example:
      mattermailctl disclaimer preview draft.eml --sender alice@lawfirm.test > out.eml
    """
    try:
        raw = Path(file).read_bytes()
    except OSError as e:
        raise UserFacingError(f"FILE: cannot read {file}: {e.strerror or e}") from None
    if sender is not None:
        who = valid_address(sender, "--sender")
    else:
        found = _from_address(raw)
        if found is None:
            raise UserFacingError(f"--sender: {file} has no From: address; give --sender")
        who = valid_address(found, "From:")
    row = storemod.disclaimer_for(storemod.list_disclaimers(ctx.store), who)
    if row is None:
        raise UserFacingError(f"no disclaimer configured for {who}")
    result = disclaimermod.decorate(raw, disclaimermod.Disclaimer(row.text, row.html))
    write_raw(result.message if result.message is not None else raw)  # the message for a file: as it would leave
    what = result.reason if result.message is not None else f"message unchanged: {result.reason}"
    echo(f"{who}: {_describe(row.scope, row.key)}; {safe(what)}", err=True)
