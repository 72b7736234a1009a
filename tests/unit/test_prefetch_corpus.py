"""The prefetch's guesses (milter/prefetch.py) against the questions the checks really ask, on the
corpus's real messages: every name it sends ahead is one the DKIM and DMARC checks then ask for
(nothing sent for nobody), and a check's first question is sent ahead wherever the guess can know it.

Each message goes through ``header_lookups`` with its header fields as the milter gets them, and
through ``verify_dkim`` and ``check_dmarc`` with a resolver that records what they ask (and knows
no records, so DMARC also asks at the organisational domain: only its first question counts here).
"""

from __future__ import annotations

import email.parser
import email.policy
from pathlib import Path

import dns.name
import pytest

from mattermail.milter import author
from mattermail.milter.dkim_verify import verify_dkim
from mattermail.milter.dmarc_check import check_dmarc
from mattermail.milter.prefetch import MAX_AUTHOR_DOMAINS, MAX_SIGNATURES, header_lookups
from mattermail.milter.verdicts import SPFResult


class Recorder:
    """A resolver with no records that remembers every TXT name asked, in order."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        self.asked.append(name.lower().rstrip("."))
        return []


def _fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields as Postfix hands them to the milter: name, value with its folding."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    return [(n, str(v)) for n, v in msg.raw_items()]


def _asked(raw: bytes, fields: list[tuple[str, str]]) -> tuple[list[str], list[str], set[str]]:
    """What the checks ask, as ``inbound.evaluate`` runs them: the DKIM keys, the first DMARC question
    for each author domain (none when the From fields are refused), and the keys of signatures the
    DKIM check turned down before looking their key up (neutral, permerror)."""
    keys = Recorder()
    results = verify_dkim(raw, keys)  # type: ignore[arg-type]
    turned_down = {f"{r.selector}._domainkey.{r.domain}".lower() for r in results
                   if r.result in ("neutral", "permerror") and r.selector and r.domain}
    who = author.authors([v for n, v in fields if n.lower().rstrip() == "from"])
    dmarc_first: list[str] = []
    for domain in who.domains if who.valid else ():
        asked = Recorder()
        check_dmarc(domain, SPFResult("none", "mailfrom", "", ""), "", (), asked)  # type: ignore[arg-type]
        dmarc_first += asked.asked[:1]
    return keys.asked, dmarc_first, turned_down


@pytest.mark.corpus_files("mime")
def test_prefetch_guesses_match_the_checks_on_mime_corpus(corpus, corpus_file: Path):
    _check(corpus_file)


@pytest.mark.corpus_files("dkim")
def test_prefetch_guesses_match_the_checks_on_dkim_corpus(corpus, corpus_file: Path):
    _check(corpus_file)


@pytest.mark.corpus_files("bounces")
def test_prefetch_guesses_match_the_checks_on_bounce_corpus(corpus, corpus_file: Path):
    _check(corpus_file)


def _check(path: Path) -> None:
    raw = path.read_bytes()
    fields = _fields(raw)
    lookups = header_lookups(fields)
    assert all(rdtype == "TXT" for _, rdtype in lookups)
    guessed = [name.lower() for name, _ in lookups]
    for name in guessed:
        dns.name.from_text(name)  # a name the resolver can send (prefetch skips any other anyway)
    keys, dmarc_first, turned_down = _asked(raw, fields)
    key_guesses = [n for n in guessed if not n.startswith("_dmarc.")]
    dmarc_guesses = [n for n in guessed if n.startswith("_dmarc.")]
    assert len(key_guesses) <= MAX_SIGNATURES
    # nothing sent that no check asks for, but the key of a signature turned down before its look-up
    assert set(key_guesses) - set(keys) <= turned_down, (key_guesses, keys, turned_down)
    assert dmarc_guesses == dmarc_first[:MAX_AUTHOR_DOMAINS], (dmarc_guesses, dmarc_first)
    # and the checks' key questions were sent ahead (the first MAX_SIGNATURES)
    assert set(keys[:MAX_SIGNATURES]) <= set(key_guesses), (keys, key_guesses)


def test_the_corpus_has_what_this_checks(corpus):
    """Not a vacuous pass: the corpus has signed messages whose keys the check asks for, and authors."""
    asked_keys = authors = 0
    for sub in ("mime", "dkim", "bounces"):
        for path in corpus.messages(sub):
            raw = path.read_bytes()
            keys, dmarc_first, _ = _asked(raw, _fields(raw))
            asked_keys += bool(keys)
            authors += bool(dmarc_first)
    assert asked_keys >= 50 and authors >= 500, (asked_keys, authors)
