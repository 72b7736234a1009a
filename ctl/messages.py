"""mattermailctl messages: list, show, search and export the stored (filed) messages.

A message's *status*: ``filed`` (it has filings), ``personal`` (a capture copy
with no known correspondent: event ``personal``, no filings) or ``unfiled``
(neither). ``system`` (bounces, auto-replies) is a separate flag: system mail
is filed by the same rules. ``messages list --unfiled`` lists the unfiled
messages that are not system mail.

A message's date is its ``Date`` header, read as UTC when it names no zone;
when it has none (or an unreadable one), the time it was stored.

Message JSON (list, show, search): id, sha256, size, message_id, date,
stored, from, subject, direction, capture ("verified" for a capture copy of
outbound mail, "unverified" for mail that reached the capture address any
other way — never outbound —, null otherwise), system (+ system_reason), status,
envelope_from and envelope_recipients (the LMTP envelope; empty for imports),
captured_envelope (for a capture copy: the sender's original envelope as the
milter recorded it — mail_from, recipients including Bcc'd ones, login,
queue_id, verified; null for other mail), recipients (the addresses it was filed for, from its events) and filings
(matter, person, rule, recipient, detail).

The queries are mattermail.store.listing's; this module parses options and renders.

Size: over 400 lines for four click commands with their help texts and examples; the queries
live in mattermail/store/listing.py, the rendering helpers here are shared by all four.
"""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import click

from mattermail.ctl import csvcells
from mattermail.ctl.base import (
    Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address, valid_matter_id,
)
from mattermail.ctl.terminal import echo, echo_json, safe, write_raw
from mattermail.store import directory, indexer, listing
from mattermail.store import FilingView, MessageDetail, MessageSummary, Names, Store, inline_raw

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]


# -- shared helpers (also used by ctl/routecmd.py) -----------------------------------------------


def filing_dict(f: FilingView) -> dict[str, Any]:
    return {"matter": f.matter, "matter_title": f.matter_title, "person": f.person, "person_id": f.person_id,
            "rule": f.rule, "recipient": f.recipient, "detail": f.detail}


def filing_line(f: dict[str, Any]) -> str:
    parts = []
    if f["matter"]:
        title = f" ({safe(f['matter_title'])})" if f["matter_title"] else " (no such matter)"
        parts.append(f"matter {safe(f['matter'])}{title}")
    if f["person"]:
        parts.append(f"person {safe(f['person'])}")
    where = f" for {safe(f['recipient'])}" if f["recipient"] else ""
    detail = f" [{safe(f['detail'])}]" if f["detail"] else ""
    return f"{', '.join(parts)}: rule {safe(f['rule'])}{where}{detail}"


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(t: float) -> str:
    return _iso(datetime.fromtimestamp(t, UTC))


def message_dict(detail: MessageDetail) -> dict[str, Any]:
    m = detail.message
    ce = detail.captured_envelope
    return {
        "id": m.id, "sha256": m.sha256, "size": m.size, "message_id": m.message_id,
        "date": _iso(m.when), "stored": _stamp(m.received),
        "from": m.header_from, "subject": m.subject, "direction": m.direction,
        "capture": m.capture or None,
        "system": m.system, "system_reason": detail.system_reason, "status": detail.status,
        "envelope_from": detail.deliveries[0].envelope_from if detail.deliveries else None,
        "envelope_recipients": [d.recipient for d in detail.deliveries],
        "captured_envelope": None if ce is None else {
            "mail_from": ce.mail_from, "recipients": list(ce.recipients), "login": ce.login,
            "queue_id": ce.queue_id, "verified": ce.verified},
        "recipients": list(detail.recipients), "filings": [filing_dict(f) for f in detail.filings],
    }


def _dicts(store: Store, rows: list[MessageSummary]) -> list[dict[str, Any]]:
    names = Names(store)
    return [message_dict(listing.message_detail(store, r, names)) for r in rows]


def _status_text(d: dict[str, Any]) -> str:
    if d["filings"]:
        parts = []
        for f in d["filings"]:
            for label in ([f"matter {f['matter']}"] if f["matter"] else []) + ([f["person"]] if f["person"] else []):
                if label not in parts:
                    parts.append(label)
        text = "filed: " + ", ".join(parts)
    else:
        text = d["status"]
    return text + (" (system)" if d["system"] else "") + (f" {UNVERIFIED_MARK}" if d["capture"] == "unverified" else "")


UNVERIFIED_MARK = "[UNVERIFIED capture copy]"
UNVERIFIED_HELP = ("came to the capture address, but not as a copy made by this server's milter "
                   "(forged or missing reference, or no recorded envelope): filed as inbound mail")


def _matter_or_fail(store: Store, matter: str, field: str = "--matter") -> str:
    matter = valid_matter_id(matter, field)
    if directory.get_matter(store, matter) is None:
        raise UserFacingError(f"{field}: no matter {matter}")
    return matter


def _person_or_fail(store: Store, email: str, field: str = "--person") -> directory.Person:
    p = directory.person_by_email(store, valid_address(email, field))
    if p is None:
        raise UserFacingError(f"{field}: no person with address {email.strip().lower()}")
    return p


def _one_line(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table_line(d: dict[str, Any]) -> str:
    return "\t".join([str(d["id"]), d["date"][:16].replace("T", " "), d["direction"], _one_line(d["from"], 40),
                      _one_line(d["subject"]) or "(no subject)", _status_text(d)])


# -- commands --------------------------------------------------------------------------------------


@cli.group("messages")
def messages() -> None:
    """The stored messages: list, show, search and export them."""


@messages.command("list")
@click.option("--matter", metavar="ID", help="Only messages filed to this matter.")
@click.option("--person", metavar="EMAIL", help="Only messages filed to this person (any of their addresses).")
@click.option("--since", type=click.DateTime(DATE_FORMATS), metavar="DATE",
              help="Dated on or after DATE (YYYY-MM-DD[ HH:MM[:SS]], UTC).")
@click.option("--until", type=click.DateTime(DATE_FORMATS), metavar="DATE",
              help="Dated on or before DATE (a day without a time includes the whole day; UTC).")
@click.option("--unfiled", is_flag=True,
              help="Only messages with no filing that are neither personal nor system mail.")
@click.option("--direction", type=click.Choice(["inbound", "outbound"]), help="Only inbound mail or capture copies.")
@click.option("--unverified", is_flag=True,
              help="Only mail that reached the capture address without verifying (marked [UNVERIFIED capture copy]).")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, metavar="N",
              help="At most N messages (0: all).")
@json_option
@pass_ctx
@user_errors
def messages_list(ctx: Context, matter: str | None, person: str | None, since: datetime | None,
                  until: datetime | None, unfiled: bool, direction: str | None, unverified: bool, limit: int,
                  as_json: bool) -> None:
    """List messages, newest first: id, date (UTC), direction, from, subject, where filed.

    Mail that reached the capture address without being a verified copy
    made by this server is inbound and ends with [UNVERIFIED capture copy].

    \b
    Example:
      mattermailctl messages list --matter 1234 --since 2024-01-01
      mattermailctl messages list --unfiled --json
    """
    store = ctx.store
    lo = since.replace(tzinfo=UTC) if since else None
    hi = None
    if until:
        hi = until.replace(tzinfo=UTC)
        if (until.hour, until.minute, until.second) == (0, 0, 0):
            hi += timedelta(days=1) - timedelta(microseconds=1)  # a day: the whole day
    rows = listing.list_messages(
        store, matter=_matter_or_fail(store, matter) if matter is not None else None,
        person=_person_or_fail(store, person).id if person is not None else None,
        since=lo, until=hi, direction=direction, unfiled=unfiled, unverified=unverified, limit=limit)
    dicts = _dicts(store, rows)
    if as_json:
        echo_json(dicts)
        return
    if not dicts:
        echo("no messages")
    for d in dicts:
        echo(_table_line(d))


def _find(store: Store, ident: str) -> MessageSummary:
    ident = ident.strip()
    if ident.isdigit():
        found = listing.get_message(store, int(ident))
        rows = [found] if found else []
    elif len(ident) >= 8 and all(c in "0123456789abcdef" for c in ident.lower()):
        rows = listing.messages_by_sha256_prefix(store, ident, limit=0)
        if len(rows) > 1:
            raise UserFacingError(f"ID: sha256 prefix {ident} matches {len(rows)} messages; give more digits")
    else:
        raise UserFacingError(f"ID: {ident!r} is neither a message id nor a sha256 prefix (8+ hex digits)")
    if not rows:
        raise UserFacingError(f"ID: no message {ident}")
    return rows[0]


def _header_summary(raw: bytes) -> list[tuple[str, str]]:
    hdr = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    out = []
    for name in ("Date", "From", "To", "Cc", "Subject", "Message-ID"):
        for value in hdr.get_all(name, []):
            text = str(value)
            try:
                text = str(make_header(decode_header(text)))
            except Exception:
                pass
            out.append((name, _one_line(text, 200)))
    return out


@messages.command("show")
@click.argument("ident", metavar="ID")
@click.option("--raw", is_flag=True,
              help="Write the stored message, byte for byte, to standard output (escaped when it is a terminal).")
@json_option
@pass_ctx
@user_errors
def messages_show(ctx: Context, ident: str, raw: bool, as_json: bool) -> None:
    """Show one message (ID: its number, or a sha256 prefix): headers, filings with their rule, deliveries, events.

    \b
    Example:
      mattermailctl messages show 42
      mattermailctl messages show 42 --raw > message.eml
    """
    if raw and as_json:
        raise click.UsageError("give --raw or --json, not both")
    store = ctx.store
    row = _find(store, ident)
    path = store.blob_path(row.sha256)
    inline = inline_raw(store, row.sha256)  # a small message is kept in its row, not a file
    if raw:
        try:
            data = inline if inline is not None else path.read_bytes()
        except OSError as e:
            raise UserFacingError(
                f"ID: the stored file of message {row.id} cannot be read: {e.strerror or e}") from None
        write_raw(data)
        return
    detail = listing.message_detail(store, row)
    d = message_dict(detail)
    d["inline"] = inline is not None
    try:
        headers = _header_summary(inline if inline is not None else path.read_bytes())
        d["file"] = None if inline is not None else str(path)
    except OSError as e:
        headers = []
        d["file"] = None
        d["file_error"] = f"{path}: {e.strerror or e}"
    d["headers"] = [{"name": n, "value": v} for n, v in headers]
    d["deliveries"] = [{"recipient": dl.recipient, "envelope_from": dl.envelope_from, "queue_id": dl.queue_id,
                        "delivered": _stamp(dl.delivered)} for dl in detail.deliveries]
    d["events"] = [{"time": _stamp(e.time), "kind": e.kind, "queue_id": e.queue_id,
                    "detail": dict(e.detail) if isinstance(e.detail, Mapping) else e.detail}
                   for e in detail.events]
    d["history"] = [history_dict(h) for h in detail.history]
    if as_json:
        echo_json(d)
        return
    echo(f"message {d['id']}  sha256 {d['sha256']}  {d['size']} bytes")
    echo("  file:       in the database (messages.raw)" if d["inline"]
         else f"  file:       {d['file'] or d['file_error'] + ' (missing)'}")
    echo(f"  stored:     {d['stored']}")
    echo(f"  direction:  {d['direction']}")
    if d["capture"] == "unverified":
        echo(f"  capture:    UNVERIFIED: {UNVERIFIED_HELP}")
    elif d["capture"]:
        echo("  capture:    verified copy of outbound mail")
    if d["system"]:
        echo(f"  system:     {d['system_reason'] or 'yes'} (never answered or forwarded)")
    for n, v in headers:
        echo(f"  {(n + ':').ljust(11)} {v}")
    echo(f"status: {d['status']}")
    echo("filings:" + ("" if d["filings"] else " (none)"))
    for f in d["filings"]:
        echo(f"  {filing_line(f)}")
    echo("deliveries:" + ("" if d["deliveries"] else " (none: not delivered over LMTP)"))
    for dl in d["deliveries"]:
        echo(f"  {dl['delivered']}  from <{dl['envelope_from']}> to <{dl['recipient']}>"
             + (f"  queue {dl['queue_id']}" if dl["queue_id"] else ""))
    ce = d["captured_envelope"]
    if ce:
        echo(f"captured envelope: from <{ce['mail_from']}> to "
             + ", ".join(f"<{r}>" for r in ce["recipients"])
             + f"  login {ce['login']}  queue {ce['queue_id']}" + ("" if ce["verified"] else "  (unverified)"))
    echo("events:" + ("" if d["events"] else " (none)"))
    for e in d["events"]:
        det = e["detail"]
        if isinstance(det, dict):
            bits = [f"{safe(k)}={json.dumps(v) if not isinstance(v, str) else safe(v)}" for k, v in det.items()
                    if k not in ("filings",) and v not in ("", [], None)]
            det = " ".join(bits)
        echo(f"  {e['time']}  {safe(e['kind'])}  {safe(det)}".rstrip())
    echo("history (records chain):" + ("" if d["history"] else " (none)"))
    for h in d["history"]:
        echo(f"  #{h['seq']}  {h['time']}  {safe(h['kind'])}  by {safe(h['actor'])}  {_history_text(h['detail'])}"
             .rstrip())


@messages.command("search")
@click.argument("query")
@click.option("--matter", metavar="ID", help="Only messages filed to this matter.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="At most N hits (0: all).")
@json_option
@pass_ctx
@user_errors
def messages_search(ctx: Context, query: str, matter: str | None, limit: int, as_json: bool) -> None:
    """Full-text search of subjects and body text, best match first.

    QUERY is plain words; every word must appear, matched by stem (porter):
    "report" also finds "reports". No prefix matching unless asked for:

    \b
      "an exact phrase"    those words in that order
      settle*              any word starting with "settle"
      draft OR agreement   either word (OR joins the two words beside it)
      -word, NOT word      leave out messages containing it
      subject:word         only in the subject (also subject:"a phrase")

    Anything else (punctuation, brackets, AND, NEAR, a lone * or ") is part
    of a word: it never makes the query fail. A query with nothing to look
    for (only punctuation, only -words) finds no messages. Put -- before a
    QUERY that starts with -:  mattermailctl messages search -- -draft report

    \b
    Example:
      mattermailctl messages search 'settlement "draft agreement"' --matter 1234
    """
    if not query.strip():
        raise UserFacingError("QUERY: empty; give one or more words")
    store = ctx.store
    hits = listing.search(store, query, matter=_matter_or_fail(store, matter) if matter is not None else None,
                          limit=limit)
    waiting = indexer.pending_count(store)
    if waiting:  # indexing follows the delivery; a message just stored may not be found yet
        echo(f"note: {waiting} message{'s are' if waiting != 1 else ' is'} not indexed yet; "
             "the router indexes them in the background", err=True)
    names = Names(store)
    out = []
    for hit in hits:
        d = message_dict(listing.message_detail(store, hit.message, names))
        d["snippet"] = hit.snippet
        out.append(d)
    if as_json:
        echo_json(out)
        return
    if not out:
        echo("no messages match")
    for d in out:
        echo(_table_line(d))
        if d["snippet"]:
            echo(f"\t{d['snippet']}")


INDEX_COLUMNS = ("file", "id", "date", "from", "subject", "message_id", "sha256", "size", "direction", "system",
                 "rules", "filings", "capture")


@messages.command("export")
@click.option("--matter", metavar="ID", help="Export the messages filed to this matter.")
@click.option("--person", metavar="EMAIL", help="Export the messages filed to this person.")
@click.option("--force", is_flag=True, help="Write into DIR even when it is not empty (same names are overwritten).")
@click.argument("dest", metavar="DIR")
@pass_ctx
@user_errors
def messages_export(ctx: Context, matter: str | None, person: str | None, force: bool, dest: str) -> None:
    """Copy the messages of a matter or a person into DIR as .eml files, with an index.csv.

    Files are named DATE-SHA.eml (the message's date in UTC, the first 12
    hex digits of its SHA-256) and are the stored bytes, unchanged. index.csv
    has one line per message: file, id, date, from, subject, message_id,
    sha256, size, direction, system, the rules that filed it here, all its
    filings and capture ("verified", "unverified" or empty, as in list --json).
    DIR is created if needed; a non-empty DIR is refused unless --force.
    A cell a spreadsheet would run as a formula (starting with = + - @, TAB or
    CR) is written with a ' in front; `messages list --json` has the exact values.

    \b
    Example:
      mattermailctl messages export --matter 1234 /tmp/matter-1234
    """
    if (matter is None) == (person is None):
        raise click.UsageError("give exactly one of --matter or --person")
    store = ctx.store
    matter = _matter_or_fail(store, matter) if matter is not None else None
    pid = _person_or_fail(store, person).id if person is not None else None
    out_dir = Path(dest)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"DIR: {dest} is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserFacingError(f"DIR: {dest} is not empty (use --force to write into it anyway)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserFacingError(f"DIR: cannot create {dest}: {e.strerror or e}") from None
    rows = listing.list_messages(store, matter=matter, person=pid, newest_first=False)
    names = Names(store)
    buf = io.StringIO()
    w = csvcells.writer(buf)  # a cell starting with = + - @ TAB CR gets a ' in front (formula injection)
    w.writerow(INDEX_COLUMNS)
    missing: list[str] = []
    for r in rows:
        fname = f"{r.when.strftime('%Y%m%d-%H%M%S')}-{r.sha256[:12]}.eml"
        try:
            inline = inline_raw(store, r.sha256)
            if inline is not None:
                (out_dir / fname).write_bytes(inline)
            else:
                shutil.copyfile(store.blob_path(r.sha256), out_dir / fname)
        except OSError as e:
            missing.append(f"message {r.id}: {e.strerror or e}")
            fname = ""
        fs = listing.filings_of(store, r.id, names)
        mine = [f for f in fs if (matter is not None and f.matter == matter)
                or (pid is not None and f.person_id == pid)]
        w.writerow([fname, r.id, _iso(r.when), r.header_from, r.subject, r.message_id, r.sha256, r.size, r.direction,
                    int(r.system), " ".join(dict.fromkeys(f.rule for f in mine)),
                    "; ".join(" ".join(filter(None, [f"matter:{f.matter}" if f.matter else "",
                                                      f"person:{f.person}" if f.person_id is not None else "",
                                                      f"rule:{f.rule}", f"recipient:{f.recipient}" if f.recipient
                                                      else ""])) for f in fs), r.capture])
    try:
        (out_dir / "index.csv").write_text(buf.getvalue(), encoding="utf-8")
    except OSError as e:
        raise UserFacingError(f"DIR: cannot write {out_dir / 'index.csv'}: {e.strerror or e}") from None
    n = len(rows) - len(missing)
    echo(f"exported {n} message{'' if n == 1 else 's'} to {dest} (index.csv lists {len(rows)})")
    if missing:
        raise UserFacingError(f"DIR: {len(missing)} stored file{'s' if len(missing) > 1 else ''} could not be "
                              f"copied ({missing[0]})")


# -- the record: history, refile, delete (queries and checks in mattermail.store.records) --------------


def history_dict(h: Any) -> dict[str, Any]:
    return {"seq": h.seq, "time": _stamp(h.time), "kind": h.kind, "actor": h.actor, "sha256": h.sha256,
            "detail": h.details, "hash": h.hash}


def _history_text(det: dict[str, Any]) -> str:
    bits = []
    for k in ("matter", "person", "rule", "recipient", "reason"):
        if det.get(k) not in (None, "", []):
            bits.append(f"{k}={safe(det[k])}")
    for k in ("from", "to", "filings"):
        if det.get(k):
            bits.append(f"{k}=" + ",".join(safe(f.get("matter") or f"person #{f.get('person')}") for f in det[k]))
    return " ".join(bits)


def _message_or_fail(store: Store, message_id: int) -> MessageSummary:
    row = listing.get_message(store, message_id)
    if row is None:
        raise UserFacingError(f"ID: no message {message_id}")
    return row


@messages.command("refile")
@click.argument("message_id", metavar="ID", type=int)
@click.option("--matter", required=True, metavar="ID", help="The matter it belongs to.")
@click.option("--person", metavar="EMAIL", help="Also file it to this person.")
@click.option("--reason", required=True, help="Why (kept in the records chain).")
@pass_ctx
@user_errors
def messages_refile(ctx: Context, message_id: int, matter: str, person: str | None, reason: str) -> None:
    """Move a misfiled message: its filings are replaced by one to --matter (and --person).

    The change, who made it ($SUDO_USER or the login name) and the reason
    are appended to the records chain. A message filed to a matter under
    legal hold cannot be refiled to another matter.

    \b
    Example:
      mattermailctl messages refile 42 --matter 1234 --reason "sent to the wrong alias"
    """
    from mattermail.store import records

    store = ctx.store
    _message_or_fail(store, message_id)
    m = _matter_or_fail(store, matter)
    pid = _person_or_fail(store, person).id if person is not None else None
    entry = records.refile_message(store, message_id, m, pid, reason)
    echo(f"message {message_id} refiled to matter {safe(m)}" + (f" and {safe(person)}" if person else "")
         + f" (chain entry {entry.seq})")


@messages.command("delete")
@click.argument("message_id", metavar="ID", type=int)
@click.option("--reason", required=True, help="Why (kept in the records chain).")
@pass_ctx
@user_errors
def messages_delete(ctx: Context, message_id: int, reason: str) -> None:
    """Delete a message and its filings; its raw file is removed after the chain records it.

    The chain keeps the message's SHA-256, who deleted it and why. A
    message kept in its row (store.inline_max) goes with the row (on
    SQLite its bytes are overwritten in the database file). A message
    filed to a matter under legal hold cannot be deleted.

    \b
    Example:
      mattermailctl messages delete 42 --reason "personal mail, not a record"
    """
    from mattermail.store import records

    store = ctx.store
    _message_or_fail(store, message_id)
    entry, path, error = records.delete_message(store, message_id, reason)
    echo(f"message {message_id} deleted (chain entry {entry.seq}, sha256 {entry.sha256})")
    if error:
        raise UserFacingError(f"ID: message {message_id} is deleted from the record, but its raw file could not "
                              f"be removed: {error}")
