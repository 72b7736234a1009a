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
@click.option("--expect", "expect", multiple=True, metavar="LENGTH:DIGEST",
              help="A head recorded earlier (from --head): entry LENGTH must still have that digest. Repeatable.")
@json_option
@pass_ctx
@user_errors
def store_verify(ctx: Context, head_only: bool, expect: tuple[str, ...], as_json: bool) -> None:
    """Walk the records chain and re-hash every raw message; exit 1 naming the first problem.

    Runs while mail flows (it reads one consistent snapshot). A progress bar
    is shown on standard error when that is a terminal.

    The chain proves nothing against someone who rewrites all of it: keep
    the --head output outside the server (mail it off, print it, a
    write-once medium) and give it back with --expect to check that the
    chain still runs through it.

    \b
    Example:
      mattermailctl store verify
      mattermailctl store verify --head | mail -s "mattermail chain head" records@lawfirm.test
      mattermailctl store verify --expect 1822:3f1c...e09a
    """
    heads = [_expected(v) for v in expect]
    store = ctx.store
    if head_only:
        length, digest = chain.head(store)
        if as_json:
            echo_json({"length": length, "head": digest})
        else:
            echo(f"chain length {length} head {digest}")
            echo(f"(check later with: mattermailctl store verify --expect {length}:{digest})")
        return

    def wrap(items):
        if not stderr_is_terminal():
            return items
        bar = progressbar(items, "re-hashing raw messages", lambda i: f"message {i[0]}")
        return _bar_iter(bar)

    rep = verify(store, wrap, heads)
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


@store_group.command("log")
@click.option("--message", "message_id", type=int, metavar="ID", help="Only entries about this message "
              "(also a deleted one).")
@click.option("--kind", type=click.Choice(chain.KINDS), help="Only entries of this kind.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="The last N entries (0: all).")
@json_option
@pass_ctx
@user_errors
def store_log(ctx: Context, message_id: int | None, kind: str | None, limit: int, as_json: bool) -> None:
    """Show the records chain: seq, time (UTC), event, actor, message, details; oldest first.

    \b
    Example:
      mattermailctl store log --kind deleted
      mattermailctl store log --message 42 --json
    """
    from datetime import UTC, datetime

    rows = chain.recent(ctx.store, message_id, kind, limit)
    out = [{"seq": e.seq, "time": datetime.fromtimestamp(e.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "kind": e.kind, "actor": e.actor, "message": e.message, "sha256": e.sha256, "detail": e.details,
            "hash": e.hash} for e in rows]
    if as_json:
        echo_json(out)
        return
    if not out:
        echo("no entries")
    for d in out:
        det = " ".join(f"{safe(k)}={safe(v)}" for k, v in d["detail"].items()
                       if v not in (None, "", []) and not isinstance(v, list))
        msg = f"message {d['message']}" if d["message"] is not None else "-"
        echo(f"{d['seq']}\t{d['time']}\t{d['kind']}\t{safe(d['actor'])}\t{msg}\t{det}".rstrip())


def _expected(value: str) -> tuple[int, str]:
    length, _, digest = value.strip().replace(" ", ":").partition(":")
    digest = digest.strip().lower()
    if not length.isdigit() or int(length) < 1 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UserFacingError(f"--expect: {value!r} is not LENGTH:DIGEST (a length and a 64-digit hex digest, "
                              "as `store verify --head` prints them)")
    return int(length), digest


def _bar_iter(bar):
    with bar as it:
        yield from it


# -- backup and restore (mattermail.store.backup) ----------------------------------------------------


def _files_bar(label: str):
    def wrap(items):
        if not stderr_is_terminal():
            return items
        return _bar_iter(progressbar(items, label, lambda i: str(i[1])[:16]))
    return wrap


@cli.command("backup")
@click.argument("dest", metavar="DIR")
@click.option("--since", "previous", metavar="PREVIOUS_DIR", type=click.Path(file_okay=False, exists=True),
              help="An earlier backup: raw files already in it are hard-linked, not copied (incremental).")
@pass_ctx
@user_errors
def backup_cmd(ctx: Context, dest: str, previous: str | None) -> None:
    """Back the store up into DIR (new or empty) while mail flows.

    DIR gets store.sqlite (SQLite's online backup: one consistent snapshot),
    every raw message that snapshot names (re-hashed as copied) and
    manifest.json (chain length and head at the snapshot, counts, the
    SHA-256 of every file). Keep the printed head with your records.

    With --since, raw files already in an earlier backup are hard-linked
    from it (each still re-hashed): DIR is complete by itself, and costs
    only the new messages' space.

    \b
    Example:
      mattermailctl backup /srv/backup/mattermail-$(date +%F)
      mattermailctl backup --since /srv/backup/mattermail-2024-03-01 /srv/backup/mattermail-2024-03-02
    """
    from pathlib import Path

    from mattermail.store import backup

    res = backup.backup(ctx.store, Path(dest), _files_bar("copying raw messages"),
                        Path(previous) if previous else None)
    linked = f", {res.linked} linked from {safe(previous)}" if previous else ""
    echo(f"backup in {safe(res.directory)}: {res.messages} messages, {res.filings} filings, {res.files} raw files "
         f"({res.bytes} bytes{linked}); chain length {res.length} head {res.head}")


@cli.command("restore")
@click.argument("src", metavar="DIR", type=click.Path(file_okay=False, exists=True))
@pass_ctx
@user_errors
def restore_cmd(ctx: Context, src: str) -> None:
    """Restore a backup made by `mattermailctl backup` onto an empty store, then verify it.

    Every file is checked against the manifest first; a store that holds any
    message or chain entry is refused. The backup's users, persons, matters
    and aliases replace the empty store's. Exit 1 when the verification
    afterwards finds a problem (named as by `store verify`).

    \b
    Example:
      mattermailctl restore /srv/backup/mattermail-2024-03-01
    """
    from pathlib import Path

    from mattermail.store import backup

    store = ctx.store
    manifest = backup.restore(store, Path(src), _files_bar("checking the backup"))
    echo(f"restored {manifest['messages']} messages, {manifest['filings']} filings, {len(manifest['files'])} raw "
         f"files from {safe(src)}")
    rep = verify(store)
    for p in rep.problems:
        echo(f"PROBLEM: {safe(p.line())}")
    want = manifest["chain"]
    if (rep.length, rep.head) != (want["length"], want["head"]):
        raise UserFacingError(f"restore: the restored chain (length {rep.length}, head {rep.head}) is not the "
                              f"backup's (length {want['length']}, head {want['head']})")
    if not rep.ok:
        raise UserFacingError(f"restore: store verify found {len(rep.problems)} problem(s); first: "
                              f"{rep.problems[0].line()}")
    echo(f"store verify: OK (chain length {rep.length} head {rep.head}, as at the backup)")
