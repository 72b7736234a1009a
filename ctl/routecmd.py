"""mattermailctl route explain: what the router would make of a message, without storing anything.

Runs :func:`mattermail.router.filing.route` (the same resolution and rules as
the LMTP router and ``mattermailctl import``) and prints the resolved
addresses with where each was found, every rule tried (the trace) and the
filings, or why the message would be unfiled, personal or system mail.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.ctl.messages import filing_dict, filing_line
from mattermail.router import filing
from mattermail.store import Names


@cli.group("route")
def route_group() -> None:
    """How the router files a message (nothing is stored)."""


def _resolved(entry: str) -> dict[str, str]:
    """"addr (source)" (as RoutingResult.resolved holds it) → {"address", "source"}."""
    addr, sep, source = entry.rpartition(" (")
    if not sep:
        return {"address": entry, "source": ""}
    return {"address": addr, "source": source.removesuffix(")")}


@route_group.command("explain")
@click.argument("file", metavar="FILE.eml")
@click.option("--recipient", metavar="ADDR",
              help="Route for this envelope recipient (as over LMTP) instead of the catch-all headers.")
@click.option("--envelope-from", metavar="ADDR",
              help="The envelope sender (MAIL FROM), for the sender rule; '<>' is a bounce.")
@json_option
@pass_ctx
@user_errors
def route_explain(ctx: Context, file: str, recipient: str | None, envelope_from: str | None, as_json: bool) -> None:
    """Explain how FILE.eml (- for standard input) would be filed: resolved addresses, every rule tried, the result.

    Without --recipient the addresses come from the configured catch-all
    headers (router.catchall_headers), as for an import. Nothing is stored.

    \b
    Example:
      mattermailctl route explain message.eml
      mattermailctl route explain message.eml --recipient 1234@matters.lawfirm.test --json
    """
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        raise UserFacingError(f"FILE: cannot read {file}: {e.strerror or e}") from None
    rcpt = valid_address(recipient, "--recipient") if recipient is not None else None
    if envelope_from is not None and envelope_from.strip("<> ") != "":
        envelope_from = valid_address(envelope_from, "--envelope-from")
    store = ctx.store
    res = filing.route(raw, rcpt, store, ctx.config, envelope_from=envelope_from)
    names = Names(store)
    filings = [filing_dict(names.filing(f.matter, f.person_id, f.rule, f.recipient, f.detail)) for f in res.filings]
    result = "filed" if res.filings else "personal" if res.personal and not res.unfiled_reason else "unfiled"
    out: dict[str, Any] = {
        "file": file, "result": result, "resolved": [_resolved(r) for r in res.resolved], "trace": res.trace,
        "filings": filings, "unfiled_reason": res.unfiled_reason, "personal": res.personal,
        "system": res.system, "system_reason": res.system_reason, "warnings": res.warnings,
    }
    if as_json:
        echo_json(out)
        return
    echo(f"message: {safe(file)} ({len(raw)} bytes); nothing is stored")
    echo("resolved:" + ("" if out["resolved"] else " (no catch-all address)"))
    for r in out["resolved"]:
        echo(f"  {safe(r['address'])} (from {safe(r['source'])})")
    echo("rules tried:")
    for line in res.trace:
        echo(f"  {safe(line)}")
    if res.system:
        echo(f"system mail: {safe(res.system_reason)} (filed, never answered or forwarded)")
    if filings:
        echo("result: filed")
        for f in filings:
            echo(f"  {filing_line(f)}")
    elif result == "personal":
        echo("result: personal (capture copy with no known correspondent: kept, not filed)")
    else:
        echo(f"result: unfiled: {safe(res.unfiled_reason or 'no rule matched')}")
    for w in res.warnings:
        echo(f"warning: {safe(w)}")
