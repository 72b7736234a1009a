"""CSV cells that a spreadsheet will not run: formula injection (CWE-1236) neutralised as OWASP describes.

A cell starting with ``=``, ``+``, ``-``, ``@``, TAB or CR is read as a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` in a
subject becomes a live link; ``=cmd|...`` worse). Every CSV mattermailctl
writes goes through :func:`writer`, which prefixes such a cell with a single
quote ``'``: the spreadsheet shows the text, the quote included. A cell that
already starts with ``'`` followed by such a cell gets one more quote, so
:func:`restore` (used by ``person import`` and ``matter import``) undoes
exactly what :func:`neutralise` did and our exports import back unchanged.

A CSV export is therefore not byte-exact for such cells; ``--json`` is.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_START = frozenset("=+-@\t\r")


def _needs_quote(value: str) -> bool:
    i = 0
    while value[i:i + 1] == "'":  # ''…'= → one more quote, so restore() is exact
        i += 1
    return value[i:i + 1] in FORMULA_START


def neutralise(value: Any) -> Any:
    """``value`` with a ``'`` in front when a spreadsheet would read it as a formula; non-strings unchanged."""
    if isinstance(value, str) and value and _needs_quote(value):
        return "'" + value
    return value


def restore(cell: str) -> str:
    """The value :func:`neutralise` was given: one leading ``'`` dropped when neutralise would have added it."""
    if cell.startswith("'") and _needs_quote(cell[1:]):
        return cell[1:]
    return cell


class _Writer:
    def __init__(self, stream: TextIO) -> None:
        self._w = csv.writer(stream, lineterminator="\n")
        # With "\n" line ends csv leaves a cell holding a CR unquoted, and a reader then splits the record there.
        self._quote_all = csv.writer(stream, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Iterable[Any]) -> None:
        cells = [neutralise(v) for v in row]
        cr = any(isinstance(v, str) and "\r" in v for v in cells)
        (self._quote_all if cr else self._w).writerow(cells)


def writer(stream: TextIO) -> _Writer:
    """A ``csv.writer`` (``\\n`` line ends) whose every cell passes :func:`neutralise`."""
    return _Writer(stream)
