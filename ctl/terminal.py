"""What mattermailctl writes for people: every byte of it passes here.

Stored mail, names and file names are attacker-controlled text. Written raw
to a terminal, ``ESC ] 0 ; … BEL`` retitles the window, ``ESC [ 2 J`` clears
it, a CR overwrites a line and a bidi override (U+202E) reorders what the
admin reads. So:

* :func:`echo` is the only way a command writes text. It escapes every
  :func:`mattermail.validate.unsafe_char` except TAB and LF (the column and
  line separators of our own tables) as a visible ``\\x1b``, ``\\u202e``, ``\\r``.
* :func:`safe` escapes a single value, TAB and LF included: wrap values
  that sit in a table column or on one line, so they cannot forge columns
  or lines either.
* :func:`echo_json` writes JSON exactly: ``json.dumps`` escapes control and
  non-ASCII characters as ``\\uXXXX`` (the output is ASCII), and a JSON
  reader gets the stored string back unchanged.
* :func:`write_raw` writes bytes as they are (``messages show --raw``,
  ``disclaimer preview``) and :func:`echo_data` text as it is (``person
  export -``): output meant for a file or a pipe. On a terminal both are
  escaped like :func:`echo`.
* Error messages (ours and click's) are escaped with :func:`safe` by the
  command group (:class:`mattermail.ctl.base.SafeGroup`).

A backslash is not escaped: a literal ``\\x1b`` in a subject looks like an
escaped ESC, but neither can do anything to the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from mattermail.validate import first_unsafe, unsafe_char

T = TypeVar("T")

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def _clean(text: str, keep: str) -> str:
    if first_unsafe(text) is None:
        return text
    return "".join(_escape(c) if unsafe_char(c) and c not in keep else c for c in text)


def safe(value: object) -> str:
    """``str(value)`` with every control, bidi and invisible format character (TAB, CR, LF too) escaped."""
    return _clean(value if isinstance(value, str) else str(value), "")


def safe_lines(text: str) -> str:
    """Like :func:`safe`, but line breaks and TABs stay (for multi-line text and our own tables)."""
    return _clean(text, "\t\n")


def echo(message: object = "", err: bool = False, nl: bool = True) -> None:
    """Write a line for a person: standard output (or error), controls escaped except TAB and LF."""
    click.echo(safe_lines(message if isinstance(message, str) else str(message)), err=err, nl=nl)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def echo_data(text: str) -> None:
    """Text for a file or a pipe (a CSV): written exactly, unless standard output is a terminal: then as :func:`echo`."""
    if stdout_is_terminal():
        echo(text, nl=False)
    else:
        click.echo(text, nl=False)


def echo_json(data: Any) -> None:
    """Write ``data`` as indented JSON (ASCII: every non-ASCII and control character \\u-escaped)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


def write_raw(data: bytes) -> None:
    """Bytes for a file or a pipe (a stored message), unchanged.

    On a terminal they are shown as text instead (UTF-8, CRLF as LF) with
    controls escaped as by :func:`echo`: a message's raw bytes may hold ESC.
    """
    if stdout_is_terminal():
        echo(data.decode("utf-8", "replace").replace("\r\n", "\n"), nl=False)
    else:
        click.echo(data, nl=False)  # bytes: click writes them to the binary stream as they are


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def counting_bar(length: int, label: str) -> Any:
    """click's progress bar on standard error over a count (``bar.update(n)``); ``label`` is escaped."""
    return click.progressbar(length=max(length, 0), label=safe(label), file=sys.stderr, show_pos=True)


def progressbar(items: Iterable[T], label: str, show: Callable[[T], str]) -> Any:
    """click's progress bar on standard error; ``show(item)`` (e.g. a file name) is escaped."""
    return click.progressbar(items, label=label, file=sys.stderr, show_pos=True,
                             item_show_func=lambda i: safe(show(i)) if i is not None else None)
