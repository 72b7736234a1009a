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
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import click

from mattermail.ctl import csvcells
from mattermail.ctl.base import (
    Context, UserFacingError, cli, json_option, pass_ctx, user_errors, valid_address, valid_matter_id,
)
from mattermail.ctl.terminal import echo, echo_json, safe, write_raw
from mattermail.store import directory
from mattermail.store import Store

_COLUMNS = "id, sha256, size, message_id, subject, header_from, date, received, direction, system, capture"
DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]


# -- shared helpers (also used by ctl/routecmd.py) -----------------------------------------------


class Names:
    """Person ids → primary addresses, matter ids → titles; cached per command."""

    def __init__(self, store: Store) -> None:
        self.db = store.db
        self._persons: dict[int, str] = {}
        self._matters: dict[str, str | None] = {}

    def person(self, pid: int | None) -> str | None:
        if pid is None:
            return None
        if pid not in self._persons:
            row = self.db.execute("SELECT address FROM person_addresses WHERE person = ? ORDER BY position, address "
                                  "LIMIT 1", [pid]).fetchone()
            self._persons[pid] = row[0] if row else f"person #{pid} (removed)"
        return self._persons[pid]

    def matter_title(self, matter: str | None) -> str | None:
        if matter is None:
            return None
        if matter not in self._matters:
            row = self.db.execute("SELECT title FROM matters WHERE id = ?", [matter]).fetchone()
            self._matters[matter] = row[0] if row else None
        return self._matters[matter]


def filing_dict(names: Names, matter: str | None, person: int | None, rule: str, recipient: str,
                detail: str) -> dict[str, Any]:
    return {"matter": matter, "matter_title": names.matter_title(matter), "person": names.person(person),
            "person_id": person, "rule": rule, "recipient": recipient, "detail": detail}


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


def message_datetime(date_header: str, received: float) -> datetime:
    """The Date header in UTC (naive = UTC); the store time when it is missing or unreadable."""
    try:
        dt = parsedate_to_datetime(date_header) if date_header else None
    except (TypeError, ValueError, IndexError, OverflowError):
        dt = None
    if dt is None:
        return datetime.fromtimestamp(received, UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return datetime.fromtimestamp(received, UTC)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Row:
    id: int
    sha256: str
    size: int
    message_id: str
    subject: str
    header_from: str
    date: str
    received: float
    direction: str
    system: int
    capture: str  # "verified", "unverified" (a copy to the capture address that did not verify) or ""

    @property
    def when(self) -> datetime:
        return message_datetime(self.date, self.received)


def _rows(store: Store, where: str = "", params: list[Any] | None = None) -> list[Row]:
    q = f"SELECT {_COLUMNS} FROM messages m" + (f" WHERE {where}" if where else "")
    return [Row(*r) for r in store.db.execute(q, params or [])]


def _events(store: Store, mid: int) -> list[tuple[float, str, str, dict[str, Any] | str]]:
    out = []
    for t, kind, qid, detail in store.db.execute(
            "SELECT time, kind, queue_id, detail FROM events WHERE message = ? ORDER BY id", [mid]):
        try:
            parsed: dict[str, Any] | str = json.loads(detail)
        except (TypeError, ValueError):
            parsed = detail or ""
        out.append((t, kind, qid or "", parsed))
    return out


def message_dict(store: Store, names: Names, row: Row) -> dict[str, Any]:
    filings = [filing_dict(names, f.matter, f.person, f.rule, f.recipient, f.detail)
               for f in directory.filings_for(store, row.id)]
    deliveries = store.db.execute("SELECT recipient, envelope_from FROM deliveries WHERE message = ? ORDER BY id",
                                  [row.id]).fetchall()
    events = _events(store, row.id)
    kinds = {e[1] for e in events}
    recipients: list[str] = []
    system_reason = ""
    for _t, _k, _q, detail in events:
        if isinstance(detail, dict):
            if detail.get("recipient") and detail["recipient"] not in recipients:
                recipients.append(detail["recipient"])
            system_reason = system_reason or detail.get("system", "")
    status = "filed" if filings else "personal" if "personal" in kinds else "unfiled"
    captured = store.db.execute(
        "SELECT e.mail_from, e.recipients, e.login, e.queue_id, c.verified FROM captures c "
        "JOIN envelopes e ON e.ref = c.ref WHERE c.message = ? ORDER BY c.recorded LIMIT 1", [row.id]).fetchone()
    return {
        "id": row.id, "sha256": row.sha256, "size": row.size, "message_id": row.message_id,
        "date": _iso(row.when), "stored": _iso(datetime.fromtimestamp(row.received, UTC)),
        "from": row.header_from, "subject": row.subject, "direction": row.direction,
        "capture": row.capture or None,
        "system": bool(row.system), "system_reason": system_reason if row.system else "", "status": status,
        "envelope_from": deliveries[0][1] if deliveries else None,
        "envelope_recipients": [d[0] for d in deliveries],
        "captured_envelope": None if captured is None else {
            "mail_from": captured[0], "recipients": json.loads(captured[1]), "login": captured[2],
            "queue_id": captured[3], "verified": bool(captured[4])},
        "recipients": recipients, "filings": filings,
    }


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


def _filter_sql(store: Store, matter: str | None, person: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if matter is not None:
        where.append("EXISTS (SELECT 1 FROM filings f WHERE f.message = m.id AND f.matter = ?)")
        params.append(_matter_or_fail(store, matter))
    if person is not None:
        where.append("EXISTS (SELECT 1 FROM filings f WHERE f.message = m.id AND f.person = ?)")
        params.append(_person_or_fail(store, person).id)
    return where, params


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
    where, params = _filter_sql(store, matter, person)
    if unfiled:
        where += ["NOT EXISTS (SELECT 1 FROM filings f WHERE f.message = m.id)", "m.system = 0",
                  "NOT EXISTS (SELECT 1 FROM events e WHERE e.message = m.id AND e.kind = 'personal')"]
    if direction:
        where.append("m.direction = ?")
        params.append(direction)
    if unverified:
        where.append("m.capture = 'unverified'")
    lo = since.replace(tzinfo=UTC) if since else None
    hi = None
    if until:
        hi = until.replace(tzinfo=UTC)
        if (until.hour, until.minute, until.second) == (0, 0, 0):
            hi += timedelta(days=1) - timedelta(microseconds=1)  # a day: the whole day
    rows = [r for r in _rows(store, " AND ".join(where), params)
            if (lo is None or r.when >= lo) and (hi is None or r.when <= hi)]
    rows.sort(key=lambda r: (r.when, r.id), reverse=True)
    if limit:
        rows = rows[:limit]
    names = Names(store)
    dicts = [message_dict(store, names, r) for r in rows]
    if as_json:
        echo_json(dicts)
        return
    if not dicts:
        echo("no messages")
    for d in dicts:
        echo(_table_line(d))


def _find(store: Store, ident: str) -> Row:
    ident = ident.strip()
    if ident.isdigit():
        rows = _rows(store, "m.id = ?", [int(ident)])
    elif len(ident) >= 8 and all(c in "0123456789abcdef" for c in ident.lower()):
        rows = _rows(store, "m.sha256 LIKE ?", [ident.lower() + "%"])
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
    if raw:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserFacingError(
                f"ID: the stored file of message {row.id} cannot be read: {e.strerror or e}") from None
        write_raw(data)
        return
    d = message_dict(store, Names(store), row)
    try:
        headers = _header_summary(path.read_bytes())
        d["file"] = str(path)
    except OSError as e:
        headers = []
        d["file"] = None
        d["file_error"] = f"{path}: {e.strerror or e}"
    d["headers"] = [{"name": n, "value": v} for n, v in headers]
    d["deliveries"] = [
        {"recipient": r, "envelope_from": ef, "queue_id": q,
         "delivered": _iso(datetime.fromtimestamp(t, UTC))}
        for r, ef, q, t in store.db.execute(
            "SELECT recipient, envelope_from, queue_id, delivered FROM deliveries WHERE message = ? ORDER BY id",
            [row.id])]
    d["events"] = [{"time": _iso(datetime.fromtimestamp(t, UTC)), "kind": k, "queue_id": q, "detail": det}
                   for t, k, q, det in _events(store, row.id)]
    if as_json:
        echo_json(d)
        return
    echo(f"message {d['id']}  sha256 {d['sha256']}  {d['size']} bytes")
    echo(f"  file:       {d['file'] or d['file_error'] + ' (missing)'}")
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


@messages.command("search")
@click.argument("query")
@click.option("--matter", metavar="ID", help="Only messages filed to this matter.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="At most N hits (0: all).")
@json_option
@pass_ctx
@user_errors
def messages_search(ctx: Context, query: str, matter: str | None, limit: int, as_json: bool) -> None:
    """Full-text search of subjects and body text (SQLite FTS5 syntax), best match first.

    Words are matched by stem (porter): "report" also finds "reports". FTS5
    syntax: AND, OR, NOT, "an exact phrase", prefix*, subject:word. Quote
    words that contain punctuation ("smith-jones").

    \b
    Example:
      mattermailctl messages search 'settlement AND "draft agreement"' --matter 1234
    """
    if not query.strip():
        raise UserFacingError("QUERY: empty; give one or more words")
    store = ctx.store
    where, params = _filter_sql(store, matter, None)
    sql = ("SELECT m.id, snippet(messages_fts, -1, '[', ']', '…', 12) FROM messages_fts "
           "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ?"
           + "".join(f" AND {w}" for w in where) + " ORDER BY rank" + (" LIMIT ?" if limit else ""))
    try:
        hits = store.db.execute(sql, [query, *params, *([limit] if limit else [])]).fetchall()
    except sqlite3.OperationalError as e:
        reason = str(e).removeprefix("fts5: ")
        raise UserFacingError(f"QUERY: {query!r} is not a valid full-text query ({reason}); "
                              f"put words with punctuation in double quotes") from None
    names = Names(store)
    out = []
    for mid, snip in hits:
        d = message_dict(store, names, _rows(store, "m.id = ?", [mid])[0])
        d["snippet"] = " ".join((snip or "").split())
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
    where, params = _filter_sql(store, matter, person)
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
    rows = sorted(_rows(store, " AND ".join(where), params), key=lambda r: (r.when, r.id))
    names = Names(store)
    buf = io.StringIO()
    w = csvcells.writer(buf)  # a cell starting with = + - @ TAB CR gets a ' in front (formula injection)
    w.writerow(INDEX_COLUMNS)
    missing: list[str] = []
    for r in rows:
        fname = f"{r.when.strftime('%Y%m%d-%H%M%S')}-{r.sha256[:12]}.eml"
        try:
            shutil.copyfile(store.blob_path(r.sha256), out_dir / fname)
        except OSError as e:
            missing.append(f"message {r.id}: {e.strerror or e}")
            fname = ""
        fs = directory.filings_for(store, r.id)
        mine = [f for f in fs if (matter is not None and f.matter == matter) or (pid is not None and f.person == pid)]
        w.writerow([fname, r.id, _iso(r.when), r.header_from, r.subject, r.message_id, r.sha256, r.size, r.direction,
                    r.system, " ".join(dict.fromkeys(f.rule for f in mine)),
                    "; ".join(" ".join(filter(None, [f"matter:{f.matter}" if f.matter else "",
                                                      f"person:{names.person(f.person)}" if f.person else "",
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
