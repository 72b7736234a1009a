"""mattermailctl import: file existing mail (an .eml, a directory, an mbox, a Maildir) like the router does.

Each message goes through :func:`mattermail.router.filing.file_message` with no
envelope (the recipients come from the catch-all headers), ``source="import"``
and no forwarding of unfiled mail. A message whose SHA-256 is already stored is
skipped before filing, so a re-run stores, files and logs nothing new.

What is read:

* a file: an mbox when its first line starts with ``From ``, else one message;
* a Maildir (a directory with ``cur/`` and ``new/``): every file in ``cur/``
  and ``new/`` (``tmp/`` holds unfinished deliveries and is skipped), and
  Maildir++ sub-folders;
* any other directory, recursively: ``*.eml`` files, ``*.mbox`` files, and
  files without an extension whose first line is a header field (a message)
  or ``From `` (an mbox); everything else, and hidden files, are skipped.

mbox: a message starts at a ``From `` line at the top of the file or after an
empty line; that line is not part of the message, nor is the empty line
before the next one. ``>From`` quoting is left as it is.

A message is an error (counted, its path listed, the import goes on) when it
cannot be read, is empty, does not start with a header field, or filing it
fails.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx
from mattermail.ctl.terminal import echo, echo_json, progressbar, safe, stderr_is_terminal
from mattermail.router import filing
from mattermail.router.rules import RouterRules
from mattermail.store import find_message

_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
_SNIFF = 4096


@dataclass(frozen=True)
class Item:
    """One message to import: a whole file, or bytes [start, end) of an mbox."""

    label: str
    path: Path
    start: int | None = None
    end: int | None = None

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.start is None:
                return f.read()
            f.seek(self.start)
            return f.read(self.end - self.start)


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while listing
    skipped: list[str] = field(default_factory=list)


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_SNIFF).split(b"\n", 1)[0]


def mbox_items(path: Path) -> list[Item]:
    """The messages of an mbox, as byte ranges (the From_ line and the separating empty line excluded)."""
    items: list[Item] = []
    start: int | None = None
    pos = 0
    prev_blank = True
    blank_at: int | None = None  # offset of the empty line just before ``pos``, if any
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"From ") and prev_blank:
                if start is not None:
                    items.append((start, blank_at if blank_at is not None else pos))
                start = pos + len(line)
            stripped = line.rstrip(b"\r\n")
            blank_at = pos if not stripped else None
            prev_blank = not stripped
            pos += len(line)
    if start is not None:
        items.append((start, blank_at if blank_at is not None else pos))
    return [Item(f"{path} (message {i} at byte {s})", path, s, max(s, e)) for i, (s, e) in enumerate(items, 1)]


def _add_mbox(plan: Plan, path: Path) -> None:
    try:
        items = mbox_items(path)
    except OSError as e:
        plan.errors.append((str(path), f"cannot read: {e.strerror or e}"))
        return
    if not items:
        plan.errors.append((str(path), "an mbox without any message (no 'From ' line)"))
    plan.items.extend(items)


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _add_file(plan: Plan, path: Path, explicit: bool, in_maildir: bool) -> None:
    if not explicit and path.name.startswith("."):
        plan.skipped.append(str(path))
        return
    suffix = path.suffix.lower()
    try:
        first = _first_line(path)
    except OSError as e:
        plan.errors.append((str(path), f"cannot read: {e.strerror or e}"))
        return
    is_mbox = first.startswith(b"From ")
    if explicit or in_maildir or suffix == ".eml":
        if suffix == ".mbox" or (is_mbox and not in_maildir and suffix != ".eml"):
            _add_mbox(plan, path)
        else:
            plan.items.append(Item(str(path), path))
        return
    if suffix == ".mbox":
        _add_mbox(plan, path)
    elif _EXTENSION.match(suffix):
        plan.skipped.append(str(path))  # some other kind of file
    elif is_mbox:
        _add_mbox(plan, path)
    elif _HEADER_LINE.match(first):
        plan.items.append(Item(str(path), path))
    else:
        plan.skipped.append(str(path))


def _walk(plan: Plan, root: Path) -> None:
    def onerror(e: OSError) -> None:
        plan.errors.append((str(e.filename or root), f"cannot read directory: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        here = Path(dirpath)
        dirnames.sort()
        if _is_maildir(here) and "tmp" in dirnames:
            dirnames.remove("tmp")  # deliveries in progress, never finished messages
        in_maildir = here.name in ("cur", "new") and _is_maildir(here.parent)
        for name in sorted(filenames):
            _add_file(plan, here / name, explicit=False, in_maildir=in_maildir)


def plan_import(path: Path) -> Plan:
    plan = Plan()
    if path.is_dir():
        _walk(plan, path)
    else:
        _add_file(plan, path, explicit=True, in_maildir=False)
    return plan


def check_message(raw: bytes) -> str | None:
    """Why ``raw`` is not a message we import, or None."""
    if not raw.strip():
        return "empty file"
    first = raw.split(b"\n", 1)[0]
    if first.startswith(b"From "):  # an .eml with its mbox From_ line
        first = raw.split(b"\n", 2)[1] if raw.count(b"\n") >= 1 else b""
    if not _HEADER_LINE.match(first):
        return "not an email message (it does not start with a header field)"
    return None


@dataclass
class Summary:
    filed: int = 0
    unfiled: int = 0
    personal: int = 0
    system: int = 0
    already: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.filed + self.unfiled + self.personal + self.system

    def line(self) -> str:
        return (f"imported {self.imported}: filed {self.filed}, unfiled {self.unfiled}, personal {self.personal}, "
                f"system {self.system}, already present {self.already}, errors {len(self.errors)}")

    def as_dict(self) -> dict:
        return {"imported": self.imported, "filed": self.filed, "unfiled": self.unfiled, "personal": self.personal,
                "system": self.system, "already_present": self.already, "errors": len(self.errors),
                "error_files": [{"path": p, "error": e} for p, e in self.errors], "skipped": self.skipped}


def import_one(ctx: Context, item: Item, rules: RouterRules, summary: Summary) -> None:
    try:
        raw = item.read()
    except OSError as e:
        summary.errors.append((item.label, f"cannot read: {e.strerror or e}"))
        return
    problem = check_message(raw)
    if problem:
        summary.errors.append((item.label, problem))
        return
    store = ctx.store
    if find_message(store, hashlib.sha256(raw).hexdigest()) is not None:
        summary.already += 1
        return
    try:
        res = filing.file_message(raw, None, [], store, ctx.config, rules=rules, forward=False, source="import")
    except Exception as e:  # one bad message never stops the import
        summary.errors.append((item.label, f"not filed: {type(e).__name__}: {e}"))
        return
    kinds = {o.kind for o in res.outcomes}
    if not res.new:
        summary.already += 1
    elif res.system:
        summary.system += 1
    elif "filed" in kinds:
        summary.filed += 1
    elif "unfiled" in kinds:
        summary.unfiled += 1
    elif "personal" in kinds:
        summary.personal += 1
    else:  # only a duplicate capture copy
        summary.already += 1


@cli.command("import")
@click.argument("path", metavar="PATH")
@json_option
@pass_ctx
def import_cmd(ctx: Context, path: str, as_json: bool) -> None:
    """Import and file existing mail: an .eml file, an mbox, a Maildir or a directory tree of them.

    Recipients come from the catch-all headers (router.catchall_headers), the
    rules are the router's, and unfiled mail is kept but not forwarded. Safe to
    re-run: messages already stored (same SHA-256) count as "already present"
    and nothing is filed twice. A file that is not a message counts as an error
    and is listed; the import goes on.

    The last line: imported N: filed X, unfiled Y, personal Z, system S, already
    present D, errors E (N = X+Y+Z+S new messages; system mail is counted as
    system whatever its filings). A progress bar is shown on a terminal.

    Exit status: 0 when every message was imported or already present, 1 when
    any message was an error (or PATH cannot be read).

    \b
    Example:
      mattermailctl import ~/Maildir
      mattermailctl import archive.mbox --json
    """
    p = Path(path)
    if not p.exists():
        raise UserFacingError(f"PATH: {path!r} does not exist")
    if not p.is_dir() and not os.access(p, os.R_OK):
        raise UserFacingError(f"PATH: cannot read {path}")
    _ = ctx.config, ctx.store  # config and store problems stop here, before any message
    rules = RouterRules.from_config(ctx.config)
    plan = plan_import(p)
    summary = Summary(errors=list(plan.errors), skipped=plan.skipped)
    if stderr_is_terminal() and plan.items:
        with progressbar(plan.items, "importing", lambda i: Path(i.label).name[:30]) as bar:
            for item in bar:
                import_one(ctx, item, rules, summary)
    else:
        for item in plan.items:
            import_one(ctx, item, rules, summary)
    if as_json:
        echo_json(summary.as_dict())
    else:
        for where, why in summary.errors:
            echo(f"error: {safe(where)}: {safe(why)}", err=True)
        if summary.skipped:
            echo(f"skipped {len(summary.skipped)} file{'s' if len(summary.skipped) > 1 else ''} that are "
                 f"not messages (e.g. {safe(summary.skipped[0])})", err=True)
        echo(summary.line())
    if summary.errors:
        sys.exit(1)
