"""Message-IDs and subjects as thread keys: one normal form, shared by the router, the store and the milter.

* :func:`msgid` — one ``Message-ID`` value normalised: the angle brackets and
  surrounding comments/whitespace stripped, the part after the last ``@``
  (the domain) lower-cased, the part before it kept as written (it is an
  opaque token). ``<Abc.123@Mail.Example.ORG>`` → ``Abc.123@mail.example.org``.
* :func:`msgids` — every id of an ``In-Reply-To`` or ``References`` value,
  in order (``<a@b> <c@d>``; ids written without brackets, as some old
  clients do, are taken when no bracketed one is present).
* :func:`subject_key` — a subject as subject-only threading compares it:
  reply and forward prefixes (``Re:``, ``RE[2]:``, ``Fwd:``, ``FW:``,
  ``AW:``, ``WG:``, ``SV:``, ``VS:``, ``Antw:``) stripped, whitespace
  collapsed, case folded; "" when too short to mean anything.

Never raise on header text; what is not an id is skipped.
"""

from __future__ import annotations

import re

__all__ = ["MAX_ID", "msgid", "msgids", "subject_key"]

MAX_ID = 250  # characters of one normalised id kept (RFC 5322 ids are far shorter; a longer one is junk)
MAX_IDS = 100  # ids of one References header looked at (the most recent ones: the end of the list)
_BRACKETED = re.compile(r"<\s*([^<>\s]+?)\s*>")
_BARE = re.compile(r"[^<>\s()\"]+@[^<>\s()\"]+")
_COMMENT = re.compile(r"\([^()]*\)")
_SPACE = re.compile(r"\s")  # what str.isspace() calls a space (re's \s for str patterns is the same test)
_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|tr|rif|ref)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*"
                     r"|\[fwd?:?[^\]]*\]\s*)+", re.IGNORECASE)
MIN_SUBJECT = 4  # a shorter subject key ("Hi", "?") would thread unrelated mail


def _norm(token: str) -> str | None:
    token = token.strip().strip("<>").strip()
    left, at, right = token.rpartition("@")
    if not at or not left or not right or len(token) > MAX_ID or _SPACE.search(token):
        return None
    return f"{left}@{right.rstrip('.').lower()}"


def msgid(value: object) -> str | None:
    """The normalised Message-ID of a ``Message-ID`` header value, or None when it holds none."""
    found = msgids(value)
    return found[0] if found else None


def msgids(value: object) -> list[str]:
    """The normalised ids of an ``In-Reply-To`` / ``References`` value, in the order written, once each."""
    if value is None:
        return []
    text = str(value)[:64 * 1024]
    text = _COMMENT.sub(" ", text)
    tokens = _BRACKETED.findall(text) or _BARE.findall(text)
    out: list[str] = []
    for token in tokens:
        n = _norm(token)
        if n is not None and n not in out:
            out.append(n)
    return out[-MAX_IDS:]


def subject_key(subject: object) -> str:
    """``subject`` without reply/forward prefixes, whitespace collapsed, case folded ("" if too short)."""
    text = " ".join(str(subject or "").split())
    text = _PREFIX.sub("", text)
    text = " ".join(text.split()).casefold()[:MAX_ID]
    return text if len(text) >= MIN_SUBJECT else ""
