"""The thread rules: a reply files to the matter of the message it answers (router/rules.py calls them).

``thread`` — the message's ``In-Reply-To`` and ``References`` ids (normalised,
mattermail/msgid.py) are looked up among the stored messages' Message-IDs
(for capture copies also the id the milter saw). References are tried most
recent first: ``In-Reply-To``, then ``References`` from its last id to its
first. The first reference that names a message filed to a matter decides:
the reply files to each matter that message is filed to; the candidates of
older references go into the trace, not into filings. Used only when the
address rules gave no matter (like ``subject``).

``thread-subject`` — off unless ``router.thread_subject``: when no rule gave a
matter, the most recently stored message with the same subject key
(reply/forward prefixes stripped) that is filed to a matter decides.

The message itself (same SHA-256, e.g. a redelivery or ``route explain`` of a
stored file) never counts as its own thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mattermail.router.rules import _Run

__all__ = ["MAX_REFERENCES", "thread", "thread_subject"]

MAX_REFERENCES = 30  # ids looked up per message: In-Reply-To and the most recent References


def _matters(run: _Run, hits: list[tuple[str, int, str]]) -> tuple[int, list[str]] | None:
    """(message, its known matters) of the most recently stored message among ``hits`` (not this one)."""
    hits = [h for h in hits if not run.ctx.sha256 or h[2] != run.ctx.sha256]
    if not hits:
        return None
    message = hits[0][1]
    matters = [m for m in dict.fromkeys(h[0] for h in hits if h[1] == message)
               if run.lookups.matter_status(m) is not None]
    return (message, matters) if matters else None


def _label(matters: list[str]) -> str:
    return ("matter " if len(matters) == 1 else "matters ") + ", ".join(matters)


def thread(run: _Run, have_matter: str | None) -> None:
    """The ``thread`` rule: file to the matter(s) of the most recent reference that names a filed message."""
    refs = run.ctx.references[:MAX_REFERENCES]
    if not refs:
        run.t("thread", "no In-Reply-To or References")
        return
    found: list[tuple[str, str, int, list[str]]] = []  # (id, header, message, matters), most recent first
    for ref, where in refs:
        hit = _matters(run, run.lookups.thread("msgid", ref))
        if hit is not None:
            found.append((ref, where, hit[0], hit[1]))
    if not found:
        run.t("thread", f"{len(refs)} reference(s), none names a message filed to a matter")
        return
    ref, where, message, matters = found[0]
    what = f"{where} <{ref}> → message {message}, filed to {_label(matters)}"
    if have_matter is not None:
        run.t("thread", f"{what}: not used (matter {have_matter} from the address)")
        return
    status = {m: run.lookups.matter_status(m) for m in matters}
    run.t("thread", what + "".join(f" ({m} closed)" for m in matters if status[m] == "closed"))
    for m in matters:
        run.file(m, None, "thread", f"{where} <{ref}> (message {message})")
    for o_ref, o_where, o_message, o_matters in found[1:]:
        others = [m for m in o_matters if m not in matters]
        if others:
            run.t("thread", f"{o_where} <{o_ref}> → message {o_message}, filed to {_label(others)}: "
                            "not used (a more recent reference matched)")


def thread_subject(run: _Run, have_matter: str | None) -> None:
    """The ``thread-subject`` fallback: the matter(s) of the latest filed message with the same subject key."""
    if not run.cfg.thread_subject:
        run.t("thread-subject", "off (router.thread_subject = false)")
        return
    if have_matter is not None:
        run.t("thread-subject", f"not needed: matter {have_matter} already")
        return
    key = run.ctx.subject_key
    if not key:
        run.t("thread-subject", "no subject to compare (empty or too short once Re:/Fwd: are stripped)")
        return
    hit = _matters(run, run.lookups.thread("subject", key))
    if hit is None:
        run.t("thread-subject", f"no message filed to a matter has the subject {key!r}")
        return
    message, matters = hit
    run.t("thread-subject", f"subject {key!r} → message {message}, filed to {_label(matters)}")
    for m in matters:
        run.file(m, None, "thread-subject", f"subject {key!r} (message {message})")
