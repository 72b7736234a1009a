"""mattermailctl store verify: is the record intact? (the records chain and every raw message, file or row)

Exit status 0: every chain entry follows the one before and hashes to what it says, the messages,
filings and legal holds are exactly what the chain records, and every raw message (its file, or its row
for one kept in the database) hashes to its SHA-256.
Exit status 1: the first problem is named (chain entry, message id, file, event), then the others.
``--head`` prints the chain's current length and digest, for an admin to keep outside the server.
The checks and the queries are mattermail.store.verify's.

Also here: ``store log``, ``backup`` / ``restore`` (mattermail.store.backup: SQLite's backup API or
pg_dump/pg_restore) and ``store migrate`` (mattermail.store.migrate: a SQLite store copied into PostgreSQL).
"""

from __future__ import annotations

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx, user_errors
from mattermail.ctl.terminal import counting_bar, echo, echo_json, progressbar, safe, stderr_is_terminal
from mattermail.store import chain
from mattermail.store.verify import verify


@cli.group("store")
def store_group() -> None:
    """The store as a record: verify it, print the chain's head; move it to PostgreSQL."""


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
             f"{rep.files} raw messages re-hashed")
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

    DIR gets the database as of one commit — store.sqlite (SQLite's online
    backup) or store.dump (a PostgreSQL store: pg_dump's custom format, so
    PostgreSQL's client tools must be installed) — every raw message that
    snapshot names (re-hashed as copied) and manifest.json (chain length and
    head at the snapshot, counts, the SHA-256 of every file). Keep the
    printed head with your records.

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
    message or chain entry, or is of the other engine, is refused. On
    PostgreSQL, pg_restore replaces the configured database's empty tables
    with the backup's in one transaction. The backup's users, persons, matters
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


# -- migrate to PostgreSQL (mattermail.store.migrate) ------------------------------------------------


def _bar_factory():
    """click's progress bar on standard error when that is a terminal, else none (mattermail.store.migrate)."""
    import contextlib

    from mattermail.store import migrate

    if not stderr_is_terminal():
        return migrate.no_progress

    @contextlib.contextmanager
    def bar(label: str, length: int):
        with counting_bar(length, label) as b:
            yield b
    return bar


@store_group.command("migrate")
@click.option("--to", "url", required=True, metavar="URL",
              help="The PostgreSQL database to copy into: postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE.")
@click.option("--from", "source", metavar="PATH", type=click.Path(dir_okay=False),
              help="The SQLite store to copy (default: the configured [store] path; its raw files are in "
                   "[store] messages_dir either way).")
@click.option("--messages-dir", "messages_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Also copy the raw message files into DIR (default: they stay in [store] messages_dir).")
@click.option("--dry-run", is_flag=True, help="Compare only: say what would be copied; write nothing.")
@json_option
@pass_ctx
@user_errors
def store_migrate(ctx: Context, url: str, source: str | None, messages_dir: str | None, dry_run: bool,
                  as_json: bool) -> None:
    """Copy the SQLite store into a PostgreSQL database, then verify the copy.

    Every table is copied with its ids (the search index is rebuilt from the
    rows), in batches of one transaction each: run it again after an
    interruption and it goes on from there; run it again after a complete
    copy and it copies only what changed since (nothing: it says so). The
    source is read as one consistent snapshot, so it may run while mail
    flows; for the switch, stop the router, milter and web service, run it
    once more, set [store] url, start them.

    A database holding another store's data (its records chain is not a
    prefix of this one's) is refused, naming the table and row, before
    anything is written. Afterwards every table's count, the chain's head
    and `store verify` (chain, tables, every raw message re-hashed) must agree,
    else exit 1. Raw files stay in messages_dir unless --messages-dir copies
    them (content-addressed: a file already there is kept and re-hashed).
    Progress bars go to standard error when that is a terminal. To keep the
    password off the command line, leave it out of URL: PostgreSQL's client
    library reads it from $PGPASSWORD or ~/.pgpass.

    \b
    Example:
      mattermailctl store migrate --to postgresql://mattermail:PASSWORD@db.lawfirm.test/mattermail --dry-run
      mattermailctl store migrate --to postgresql://mattermail:PASSWORD@db.lawfirm.test/mattermail
      PGPASSWORD=... mattermailctl store migrate --to postgresql://mattermail@db.lawfirm.test/mattermail
    """
    from pathlib import Path

    from mattermail.store import migrate
    from mattermail.store.connection import redact

    migrate.check_url(url)
    cfg = ctx.config.store
    src = migrate.open_source(Path(source) if source else cfg.path, cfg.messages_dir)
    try:
        res = migrate.migrate_store(src, url, Path(messages_dir) if messages_dir else None, dry_run, _bar_factory())
    finally:
        src.close()
    if as_json:
        echo_json({"target": res.target, "dry_run": res.dry_run, "resumed": res.resumed, "ok": res.ok,
                   "changed": res.changed, "files_copied": res.files_copied, "indexed": res.indexed,
                   "chain": {"length": res.chain_length, "head": res.chain_head}, "problems": res.problems,
                   "tables": [{"table": t.name, "source": t.source, "copied": t.copied, "updated": t.updated,
                               "removed": t.removed, "unchanged": t.unchanged} for t in res.tables]})
    else:
        verb = "would copy" if dry_run else "copied"
        for t in res.tables:
            if t.changed or t.source:
                extra = "".join(f", {n} {w}" for n, w in ((t.updated, "updated"), (t.removed, "removed")) if n)
                echo(f"{t.name:16} {t.source:8} rows: {verb} {t.copied}{extra}, {t.unchanged} already there")
        rows = sum(t.source for t in res.tables)
        if not res.changed:
            echo(f"nothing new to copy: the {rows} rows of the source are on {safe(res.target)} already")
        elif dry_run:
            echo(f"dry run: {res.changed} row(s) to copy, update or remove on {safe(res.target)}; nothing written")
        else:
            echo(f"{'resumed: ' if res.resumed else ''}{res.changed} row(s) copied, updated or removed on "
                 f"{safe(res.target)} in {res.seconds:.1f} s; {res.indexed} messages indexed for search")
        if not dry_run:
            where = "copied to" if messages_dir else "left in"
            echo(f"raw files: {res.files_copied} {where} {safe(res.files_dir)}" if messages_dir
                 else f"raw files: {where} {safe(res.files_dir)} (the router host keeps using them)")
            for p in res.problems:
                echo(f"PROBLEM: {safe(p)}")
    if not res.ok:
        raise UserFacingError(f"store migrate: the copy does not verify ({len(res.problems)} problem(s)); first: "
                              f"{res.problems[0]}")
    if dry_run or as_json:
        return
    echo(f"verified: every table's count, chain length {res.chain_length} head {res.chain_head}, and store verify")
    echo("next: stop the router, milter and web service, run this again (it copies what arrived since), then set")
    echo(f"  [store]\n  url = \"{safe(redact(url))}\"   (with the real password)")
    if messages_dir:
        echo(f"  messages_dir = \"{safe(messages_dir)}\"")
    echo("in mattermail.toml on every host that uses the store, and start them.")
