"""mattermailctl store verify: is the record intact? (the records chain and every raw message file)

Exit status 0: every chain entry follows the one before and hashes to what it says, the messages,
filings and legal holds are exactly what the chain records, and every raw file hashes to its SHA-256.
Exit status 1: the first problem is named (chain entry, message id, file, event), then the others.
``--head`` prints the chain's current length and digest, for an admin to keep outside the server.
The checks and the queries are mattermail.store.verify's.
"""

from __future__ import annotations

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx, user_errors
from mattermail.ctl.terminal import echo, echo_json, progressbar, safe, stderr_is_terminal
from mattermail.store import chain
from mattermail.store.verify import verify


@cli.group("store")
def store_group() -> None:
    """The store as a record: verify it, print the chain's head."""


@store_group.command("verify")
@click.option("--head", "head_only", is_flag=True,
              help="Only print the chain's length and current digest (keep them outside the server).")
@json_option
@pass_ctx
@user_errors
def store_verify(ctx: Context, head_only: bool, as_json: bool) -> None:
    """Walk the records chain and re-hash every raw message; exit 1 naming the first problem.

    Runs while mail flows (it reads one consistent snapshot). A progress bar
    is shown on standard error when that is a terminal.

    \b
    Example:
      mattermailctl store verify
      mattermailctl store verify --head >> /media/offsite/mattermail-heads.txt
    """
    store = ctx.store
    if head_only:
        length, digest = chain.head(store)
        if as_json:
            echo_json({"length": length, "head": digest})
        else:
            echo(f"chain length {length} head {digest}")
        return

    def wrap(items):
        if not stderr_is_terminal():
            return items
        bar = progressbar(items, "re-hashing raw messages", lambda i: f"message {i[0]}")
        return _bar_iter(bar)

    rep = verify(store, wrap)
    if as_json:
        echo_json({"ok": rep.ok, "length": rep.length, "head": rep.head, "messages": rep.messages,
                   "files": rep.files, "filings": rep.filings,
                   "problems": [{"seq": p.seq, "message": p.message, "file": p.file, "event": p.event,
                                 "what": p.what} for p in rep.problems]})
    else:
        for p in rep.problems:
            echo(f"PROBLEM: {safe(p.line())}")
        echo(f"chain length {rep.length} head {rep.head}; {rep.messages} messages, {rep.filings} filings, "
             f"{rep.files} raw files re-hashed")
    if not rep.ok:
        first = rep.problems[0]
        raise UserFacingError(f"store verify: {len(rep.problems)} problem{'s' if len(rep.problems) > 1 else ''}; "
                              f"first: {first.line()}")
    if not as_json:
        echo("store verify: OK")


def _bar_iter(bar):
    with bar as it:
        yield from it
