"""mattermailctl import: file existing mail (an .eml, a directory, an mbox, a Maildir) like the router does.

Each message goes through :func:`mattermail.router.filing.file_message` with no
envelope (the recipients come from the catch-all headers), ``source="import"``
and no forwarding of unfiled mail. A message whose SHA-256 is already stored is
skipped before filing, so a re-run stores, files and logs nothing new.

What is read:

* a file: an mbox when its first line starts with ``From ``, else one message;
* a Maildir (a directory with ``cur/`` and ``new/``), through the standard
  library's :class:`mailbox.Maildir`: every message in ``cur/`` and ``new/``
  (``tmp/`` holds unfinished deliveries and is skipped; hidden files are
  skipped); its other files and folders are walked like any directory's, and
  its Maildir++ sub-folders (``.Sent``, ``.Sent.2023``) are Maildirs themselves;
* any other directory, recursively: ``*.eml`` files, ``*.mbox`` files, and
  files without an extension whose first line is a header field (a message)
  or ``From `` (an mbox); everything else, and hidden files, are skipped.

mbox, through the standard library's :class:`mailbox.mbox`, which finds the
``From `` lines and reads one message at a time (a multi-GB mbox is never held
in memory, only its table of offsets). On top of it one rule is kept from
before, because mbox writers do not all quote ``From `` in bodies: a ``From ``
line starts a message only at the top of the file or after an empty line (LF
or CRLF); any other ``From `` line is part of the message it appears in. The
``From `` line is not part of the message, nor is the empty line before the
next one. ``>From`` quoting is left as it is (no mboxrd un-quoting: mboxo and
mboxrd files cannot be told apart, and the stored bytes stay those of the
file, so a message imported twice, or also delivered, keeps one SHA-256).

A message is an error (counted, named, the import goes on) when it cannot be
read (unreadable, or removed during the import), is empty, does not start with
a header field, or filing it fails.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import mailbox
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol

import click

from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx
from mattermail.ctl.terminal import echo, echo_json, progressbar, safe, stderr_is_terminal
from mattermail.router import filing
from mattermail.router.rules import RouterRules
from mattermail.store import StoreError, find_message, index_pending

_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
_SNIFF = 4096


class Item(Protocol):
    """One message to import."""

    @property
    def name(self) -> str: ...  # short, for the progress bar

    @property
    def label(self) -> str: ...  # names the file (and the message in it) in an error

    def read(self) -> bytes: ...  # OSError (its strerror says why) when it cannot be read


@dataclass(frozen=True)
class FileItem:
    """A whole file that is one message."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return str(self.path)

    def read(self) -> bytes:
        return self.path.read_bytes()


# -- mbox ------------------------------------------------------------------------------------


def _gone(what: str) -> OSError:
    return FileNotFoundError(errno.ENOENT, f"{what} was removed or changed during the import")


class MboxFile:
    """An mbox file, open through :class:`mailbox.mbox` only while it is listed or its messages read.

    Listing builds the stdlib's table of contents; in a directory tree it then
    closes the file and the first read opens it again (one more pass over the
    file to rebuild the table), so a tree of many mbox files never holds more
    than one open. The last read closes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pieces = 0  # how many messages mailbox.mbox found (one per From_ line)
        self.unread = 0
        self._box: mailbox.mbox | None = None

    def open(self) -> mailbox.mbox:
        if self._box is None:
            try:
                self._box = mailbox.mbox(self.path, factory=None, create=False)
            except mailbox.NoSuchMailboxError:
                raise _gone("the mbox") from None
        return self._box

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None

    def read(self, keys: tuple[int, ...], trim: int) -> bytes:
        try:
            box = self.open()
            if len(box) != self.pieces:
                raise _gone("the mbox")
            raw = b"".join(box.get_bytes(k, from_=i > 0) for i, k in enumerate(keys))
            return raw[:len(raw) - trim]
        finally:
            self.unread -= 1
            if self.unread <= 0:
                self.close()


@dataclass(frozen=True)
class MboxItem:
    """One message of an mbox: the stdlib's messages ``keys`` joined (a From_ line inside a body does not
    split it), less ``trim`` bytes (an empty CRLF line before the next From_ line)."""

    mbox: MboxFile
    number: int
    start: int  # byte offset of the message in the file, after its From_ line
    keys: tuple[int, ...]
    trim: int

    @property
    def name(self) -> str:
        return f"{self.mbox.path.name} #{self.number}"

    @property
    def label(self) -> str:
        return f"{self.mbox.path} (message {self.number} at byte {self.start})"

    def read(self) -> bytes:
        return self.mbox.read(self.keys, self.trim)


def _first_from_line(f: BinaryIO) -> int:
    """The offset of the first line starting with ``From `` (where mailbox.mbox starts its first message)."""
    pos = 0
    for line in f:
        if line.startswith(b"From "):
            return pos
        pos += len(line)
    return pos


def _lengths(box: mailbox.mbox) -> list[tuple[int, int]]:
    """Key and length (From_ line included) of each message mailbox.mbox found, in file order."""
    found = []
    for key in box.iterkeys():
        with box.get_file(key, from_=True) as f:
            f.seek(0, os.SEEK_END)
            found.append((key, f.tell()))
    return found


def mbox_messages(path: Path, keep_open: bool = False) -> list[MboxItem]:
    """The messages of an mbox, read by :class:`mailbox.mbox` and joined where a From_ line does not follow
    an empty line (see the module docstring).

    mailbox.mbox starts a message at every line starting with ``From `` and ends
    the one before it just before that line, or, when an LF empty line precedes
    it, before that empty line; a CRLF empty line stays at the end. So the byte
    right after each of its messages says whether an empty line was left out:
    ``\\n`` yes, ``F`` (the next From_ line) or the end of the file no.

    ``keep_open``: leave the mbox open for the reads (one pass over it fewer).
    """
    mbox = MboxFile(path)
    items: list[MboxItem] = []
    try:
        found = _lengths(mbox.open())
        with open(path, "rb") as raw:
            pos = _first_from_line(raw)
            starts_message = True  # the first From_ line does
            for n, (key, length) in enumerate(found, 1):
                raw.seek(pos)
                from_line = raw.readline()
                raw.seek(pos + length - 3)
                tail = raw.read(4)  # its last 3 bytes and the one after it
                if not from_line.startswith(b"From ") or (n < len(found) and tail[3:] not in (b"F", b"\n")):
                    raise _gone("the mbox")  # not the file mailbox.mbox listed
                lf_empty = tail[3:] == b"\n"  # mailbox.mbox left an LF empty line out after this message
                crlf_empty = tail[:3] == b"\n\r\n"  # it ends with a CRLF empty line
                if starts_message:
                    items.append(MboxItem(mbox, len(items) + 1, pos + len(from_line), (key,), 0))
                else:  # a From_ line inside a body: part of the message before it
                    items[-1] = replace(items[-1], keys=items[-1].keys + (key,))
                if crlf_empty and not lf_empty:
                    items[-1] = replace(items[-1], trim=2)
                starts_message = lf_empty or crlf_empty
                pos += length + lf_empty
    except BaseException:
        mbox.close()
        raise
    if not (keep_open and items):
        mbox.close()
    mbox.pieces, mbox.unread = len(found), len(items)
    return items


# -- Maildir ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaildirItem:
    """One message of a Maildir folder, by its :class:`mailbox.Maildir` key (the file name before ``:``)."""

    box: mailbox.Maildir
    folder: Path
    key: str

    @property
    def name(self) -> str:
        return self.key

    @property
    def label(self) -> str:
        """The file's path (looked up only for an error: mailbox.Maildir does not say it)."""
        for sub in ("cur", "new"):
            for p in sorted((self.folder / sub).glob(glob.escape(self.key) + "*")):
                if p.name == self.key or p.name.startswith(self.key + self.box.colon):
                    return str(p)
        return f"{self.folder} (message {self.key})"

    def read(self) -> bytes:
        try:
            return self.box.get_bytes(self.key)
        except KeyError:  # gone from new/ and cur/ (mailbox.Maildir also looks for it after a move)
            raise _gone("the file") from None


def _add_maildir(plan: Plan, folder: Path) -> None:
    box = mailbox.Maildir(folder, factory=None, create=False)
    try:
        keys = sorted(box.iterkeys())
    except OSError as e:
        plan.errors.append((str(e.filename or folder), f"cannot read directory: {e.strerror or e}"))
        return
    for key in keys:
        item = MaildirItem(box, folder, key)
        if key.startswith("."):  # hidden: not a delivery (.keep and the like)
            plan.skipped.append(item.label)
        else:
            plan.items.append(item)


# -- planning --------------------------------------------------------------------------------


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while listing
    skipped: list[str] = field(default_factory=list)


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_SNIFF).split(b"\n", 1)[0]


def _add_mbox(plan: Plan, path: Path, keep_open: bool = False) -> None:
    try:
        items = mbox_messages(path, keep_open)
    except OSError as e:
        plan.errors.append((str(path), f"cannot read: {e.strerror or e}"))
        return
    if not items:
        plan.errors.append((str(path), "an mbox without any message (no 'From ' line)"))
    plan.items.extend(items)


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _add_file(plan: Plan, path: Path, explicit: bool) -> None:
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
    if explicit or suffix == ".eml":
        if suffix == ".mbox" or (is_mbox and suffix != ".eml"):
            _add_mbox(plan, path, keep_open=explicit)  # PATH itself: the only file
        else:
            plan.items.append(FileItem(path))
        return
    if suffix == ".mbox":
        _add_mbox(plan, path)
    elif _EXTENSION.match(suffix):
        plan.skipped.append(str(path))  # some other kind of file
    elif is_mbox:
        _add_mbox(plan, path)
    elif _HEADER_LINE.match(first):
        plan.items.append(FileItem(path))
    else:
        plan.skipped.append(str(path))


def _walk(plan: Plan, root: Path) -> None:
    def onerror(e: OSError) -> None:
        plan.errors.append((str(e.filename or root), f"cannot read directory: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        here = Path(dirpath)
        dirnames.sort()
        if _is_maildir(here):  # its Maildir++ sub-folders (.Sent, ...) are Maildirs further down the walk
            dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
            _add_maildir(plan, here)
        for name in sorted(filenames):
            _add_file(plan, here / name, explicit=False)


def plan_import(path: Path) -> Plan:
    plan = Plan()
    if path.is_dir():
        _walk(plan, path)
    else:
        _add_file(plan, path, explicit=True)
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
        raw = item.read()  # one message in memory at a time
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


def _index_all(ctx: Context) -> str | None:
    """Index every message not indexed yet (the import's, and any the router has not reached), so the
    imported mail is searchable when the command returns; the error, or None. Short transactions: the
    router keeps delivering meanwhile."""
    try:
        while index_pending(ctx.store, limit=500):
            pass
    except StoreError as e:
        return str(e)
    return None


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
        with progressbar(plan.items, "importing", lambda i: i.name[:30]) as bar:
            for item in bar:
                import_one(ctx, item, rules, summary)
    else:
        for item in plan.items:
            import_one(ctx, item, rules, summary)
    index_error = _index_all(ctx)
    if as_json:
        echo_json(summary.as_dict())
    else:
        for where, why in summary.errors:
            echo(f"error: {safe(where)}: {safe(why)}", err=True)
        if summary.skipped:
            echo(f"skipped {len(summary.skipped)} file{'s' if len(summary.skipped) > 1 else ''} that are "
                 f"not messages (e.g. {safe(summary.skipped[0])})", err=True)
        echo(summary.line())
    if index_error:
        echo(f"note: indexing for search failed ({safe(index_error)}); the router indexes the imported "
             "messages in the background", err=True)
    if summary.errors:
        sys.exit(1)
