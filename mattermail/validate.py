"""Validators for values an admin (or a CSV file) gives: mailboxes, domains, matter ids, display names.

Each returns the normalised value or raises :class:`Invalid` with a short
reason that does not name the field (the caller knows the field:
``mattermailctl`` turns it into ``FIELD: 'value' is not …: reason``).

The rules are stricter than the RFCs where a looser value would be read
differently by a table it ends up in: Postfix's lookup tables split a line at
whitespace and a list of logins at commas, and Dovecot's passwd-file splits
at ``:``. So a quoted local part must not hold a space, ``,``, ``:``, ``;``,
``@``, ``<``, ``>``, ``"`` or ``\\``, and only ASCII mailboxes are accepted
(give an internationalised domain as its ``xn--`` form).

:func:`unsafe_char` is the one definition of a character that can drive a
terminal or hide text (control characters, bidi overrides, invisible format
characters); :func:`display_name` refuses them and ``mattermailctl`` escapes
them on output.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

MAX_MAILBOX = 254  # RFC 5321 4.5.3.1.3: a path is at most 256 octets including "<" and ">"
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # a domain name in text form, without the trailing dot
MAX_LABEL = 63
MAX_MATTER_ID = 64  # a matter id is the local part of ID@<catch-all domain>
MAX_DISPLAY_NAME = 200


class Invalid(ValueError):
    """A value that does not pass a validator; ``str()`` is the reason."""


# -- characters that must never reach a terminal or a name raw -----------------------------------

_KEEP_FORMAT = frozenset("\u200c\u200d")  # zero-width (non-)joiner: needed by Persian, Indic scripts and emoji


def unsafe_char(ch: str) -> bool:
    """A character that can drive a terminal or hide/reorder text when shown.

    C0 controls (TAB, CR and LF included), DEL, C1 controls (U+0080–U+009F),
    the line and paragraph separators, lone surrogates, and the Unicode format
    characters (category Cf: bidi embeddings/overrides U+202A–U+202E and
    isolates U+2066–U+2069, LRM/RLM, zero-width space, word joiner, BOM, soft
    hyphen, tag characters), except the zero-width joiner and non-joiner.
    """
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        return True
    if o < 0xA0:
        return False
    return unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs") and ch not in _KEEP_FORMAT


def first_unsafe(text: str) -> str | None:
    """The first :func:`unsafe_char` of ``text``, or None (fast for ordinary text)."""
    if text.isprintable():  # every unsafe character is non-printable for Python
        return None
    return next((c for c in text if unsafe_char(c)), None)


def describe_char(ch: str) -> str:
    """``U+001B (ESC)``-style name of a character for an error message."""
    name = unicodedata.name(ch, "") or {"\t": "TAB", "\n": "LF", "\r": "CR", "\x1b": "ESC", "\x07": "BEL",
                                         "\x7f": "DEL", "\x00": "NUL"}.get(ch, "control character")
    return f"U+{ord(ch):04X} ({name})"


# -- domains and mailboxes -------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ATEXT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-")
_DOT_STRING = re.compile(rf"^[{_ATEXT}]+(?:\.[{_ATEXT}]+)*$")
_QUOTED_FORBIDDEN = frozenset(' ,:;@<>"\\')  # read differently by Postfix tables / Dovecot's passwd-file


def domain(text: str) -> str:
    """A domain name (RFC 5321 Domain with at least two labels), lower-cased.

    Labels are letters, digits and hyphens (not first or last), 1–63 long;
    the whole at most 253; the last label is not all digits (that is an IP
    address: write it as an address literal ``[192.0.2.1]``). No trailing dot.
    """
    if not text:
        raise Invalid("the domain is empty")
    if not text.isascii():
        raise Invalid("the domain is not ASCII (give an internationalised domain as its xn-- form)")
    d = text.lower()
    if len(d) > MAX_DOMAIN:
        raise Invalid(f"the domain is longer than {MAX_DOMAIN} characters")
    if d.endswith("."):
        raise Invalid("the domain ends with a dot")
    labels = d.split(".")
    if len(labels) < 2:
        raise Invalid("the domain has no dot")
    for label in labels:
        if not label:
            raise Invalid("the domain has an empty label (two dots in a row, or a leading dot)")
        if not _LABEL.match(label):
            if len(label) > MAX_LABEL:
                raise Invalid(f"the domain label {label[:20]}… is longer than {MAX_LABEL} characters")
            raise Invalid(f"the domain label {label!r} is not letters, digits and inner hyphens")
    if labels[-1].isdigit():
        raise Invalid("the domain ends in a number (write an IP address as [192.0.2.1])")
    return d


def _address_literal(text: str) -> str:
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        except ValueError:
            raise Invalid(f"{text} is not an IPv6 address literal") from None
    try:
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise Invalid(f"{text} is not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])") from None


def _local_part(local: str) -> str:
    if not local:
        raise Invalid("the local part (before @) is empty")
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise Invalid("the quoted local part has no closing quote")
        content = local[1:-1]
        if not content:
            raise Invalid("the quoted local part is empty")
        bad = next((c for c in content if c in _QUOTED_FORBIDDEN or not " " <= c <= "~"), None)
        if bad is not None:
            what = describe_char(bad) if not " " < bad <= "~" else repr(bad)
            raise Invalid(f"the quoted local part contains {what}")
        return content if _DOT_STRING.match(content) else f'"{content}"'  # "alice" is alice (RFC 5321 4.1.2)
    if not _DOT_STRING.match(local):
        bad = next((c for c in local if c not in _ATEXT_CHARS and c != "."), None)
        if bad is not None:
            what = describe_char(bad) if unsafe_char(bad) or bad == " " else repr(bad)
            raise Invalid(f"the local part contains {what}")
        raise Invalid("the local part has an empty part (a leading, trailing or doubled dot)")
    return local


def mailbox(text: str) -> str:
    """An RFC 5321 Mailbox ``local@domain``; returns it with the domain lower-cased.

    The local part is a dot-string (atext separated by single dots) or a
    quoted string (printable ASCII without space , : ; @ < > " \\; returned
    unquoted when the quotes are not needed); it keeps its case. The domain
    is a :func:`domain` or an address literal ([192.0.2.1], [IPv6:…]).
    Local part at most 64 characters, the whole at most 254.
    """
    if not text:
        raise Invalid("empty")
    if len(text) > MAX_MAILBOX:
        raise Invalid(f"longer than {MAX_MAILBOX} characters")
    bad = first_unsafe(text)
    if bad is not None:
        raise Invalid(f"contains {describe_char(bad)}")
    if not text.isascii():
        raise Invalid("not ASCII (internationalised addresses are not supported; give a domain as its xn-- form)")
    local, at, dom = text.rpartition("@")
    if not at:
        raise Invalid("no @")
    if len(local) > MAX_LOCAL:
        raise Invalid(f"the local part is longer than {MAX_LOCAL} characters")
    local = _local_part(local)
    if dom.startswith("[") and dom.endswith("]"):
        dom = _address_literal(dom)
    else:
        dom = domain(dom)
    return f"{local}@{dom}"


# -- matter ids and names --------------------------------------------------------------------------

_MATTER_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MATTER_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?=[A-Za-z0-9_-]))*$")


def matter_id(text: str) -> str:
    """A matter id: letters, digits, ``-``, ``_`` and single inner dots, starting with a letter or digit, 1–64 long.

    Every such id is a valid local part, so ``ID@<catch-all domain>`` is an
    address; the router takes matter ids from local parts (and subjects) with
    ``router.matter_patterns`` (default: digits). Case is kept.
    """
    if not text:
        raise Invalid("empty")
    bad = first_unsafe(text)
    if bad is not None:
        raise Invalid(f"contains {describe_char(bad)}")
    if len(text) > MAX_MATTER_ID:
        raise Invalid(f"longer than {MAX_MATTER_ID} characters")
    if not _MATTER_ID.match(text):
        if _MATTER_CHARS.match(text):
            raise Invalid("a dot must sit between two other characters")
        raise Invalid("use letters, digits, '-', '_' and '.' (starting with a letter or digit)")
    return text


def display_name(text: str, max_len: int = MAX_DISPLAY_NAME) -> str:
    """A person's name or a matter's title: surrounding whitespace stripped, NFC, at most ``max_len`` characters.

    No :func:`unsafe_char` (so no CR, LF, TAB, ESC, bidi overrides or
    invisible format characters). May be empty; callers that need a value
    check that.
    """
    v = unicodedata.normalize("NFC", text.strip(" "))
    bad = first_unsafe(v)
    if bad is not None:
        raise Invalid(f"contains {describe_char(bad)}")
    v = v.strip()
    if len(v) > max_len:
        raise Invalid(f"longer than {max_len} characters ({len(v)})")
    return v
