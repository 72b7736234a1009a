"""Full-text search, per engine: the one place that writes FTS5 or tsquery text.

:func:`~mattermail.store.listing.search` parses the user's words into a
:class:`~mattermail.store.listing.SearchQuery`; this module turns it into the engine's query and runs it.
Both engines see the same words: a run of letters and digits is a word, anything else separates words
(SQLite: FTS5's unicode61 tokenizer; PostgreSQL: the text is cut the same way by ``mattermail_fts()``
before ``to_tsvector``), and both match words by their English stem without dropping any word ("the",
names, matter ids are all found). SQLite stems with FTS5's ``porter`` tokenizer, PostgreSQL with the
``mattermail`` text search configuration (``simple``'s parser and token types, a Snowball English stemmer
with no stop words; schema_pg.py), so a rare word may stem differently on the two.

A subject-only term: FTS5's column filter; PostgreSQL's subject words carry weight ``A``, the body's ``B``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mattermail.store.engine import Store
    from mattermail.store.listing import SearchQuery, SearchTerm

# -- SQLite: FTS5 -------------------------------------------------------------------------------------


def _fts5_term(t: SearchTerm) -> str:
    s = '"' + t.text.replace('"', '""') + '"' + (" *" if t.prefix else "")
    return f"(subject : {s})" if t.subject_only else s


def fts5(q: SearchQuery) -> str:
    """The FTS5 query for ``q``: every term an FTS5 string (inner quotes doubled), structure explicit."""
    text = " AND ".join("(" + " OR ".join(_fts5_term(t) for t in g) + ")" for g in q.groups)
    for t in q.excluded:
        text = f"({text}) NOT {_fts5_term(t)}"
    return text


# -- PostgreSQL: tsquery ---------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")  # what FTS5's unicode61 keeps as a token (letters and digits)


def _ts_term(t: SearchTerm) -> str:
    """A term as tsquery text: its words (quoted; only letters and digits) joined by ``<->`` (a phrase, as
    FTS5 reads a string of several words), the last one ``:*`` for a prefix, ``:A`` for the subject only."""
    words = _WORD.findall(t.text) or ["_"]  # parse_search keeps only terms with a letter or digit
    weight = "A" if t.subject_only else ""
    parts = [f"'{w}'" + (":" + weight if weight else "") for w in words]
    if t.prefix:
        parts[-1] = f"'{words[-1]}':*{weight}"
    return "(" + " <-> ".join(parts) + ")"


def tsquery(q: SearchQuery) -> str:
    """The text for ``to_tsquery('mattermail', ...)`` equivalent to :func:`fts5`."""
    text = " & ".join("(" + " | ".join(_ts_term(t) for t in g) + ")" for g in q.groups)
    for t in q.excluded:
        text = f"({text}) & !{_ts_term(t)}"
    return text


# -- running a search ----------------------------------------------------------------------------------------


def search_rows(store: Store, columns: str, q: SearchQuery, matter: str | None, limit: int | None) -> list[tuple]:
    """Rows of ``columns`` (on ``messages m``) plus a snippet, best match first, then by id."""
    params: list[Any]
    in_matter = " AND EXISTS (SELECT 1 FROM filings f WHERE f.message = m.id AND f.matter = ?)"
    if store.db.engine == "sqlite":
        sql = (f"SELECT {columns}, snippet(messages_fts, -1, '[', ']', '…', 12) FROM messages_fts "
               "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ?")
        params = [fts5(q)]
        if matter is not None:
            sql += in_matter
            params.append(matter)
        sql += " ORDER BY rank, m.id"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return store.db.execute(sql, params).fetchall()
    # the best ids first (rank over the index), then the headline of those only
    hit = ("SELECT m.id, ts_rank(m.fts, q.query) AS rank FROM messages m, q WHERE m.fts @@ q.query"
           + (in_matter if matter is not None else "") + " ORDER BY rank DESC, m.id" + (" LIMIT ?" if limit else ""))
    sql = (f"WITH q AS (SELECT to_tsquery('mattermail', ?) AS query), hit AS ({hit}) "
           f"SELECT {columns}, ts_headline('mattermail', m.subject || ' ' || m.body_text, q.query, "
           "'StartSel=[, StopSel=], MaxWords=12, MinWords=4, MaxFragments=1, FragmentDelimiter=…') "
           "FROM hit JOIN messages m ON m.id = hit.id, q ORDER BY hit.rank DESC, m.id")
    params = [tsquery(q)]
    if matter is not None:
        params.append(matter)
    if limit:
        params.append(limit)
    return store.db.execute(sql, params).fetchall()


def index_messages(store: Store, ids: list[int]) -> None:
    """Put these messages in the search index (inside the caller's transaction; they are queued, not
    indexed: store/indexer.py)."""
    marks = ",".join("?" * len(ids))
    if store.db.engine == "sqlite":
        store.db.execute(f"INSERT INTO messages_fts (rowid, subject, body_text) SELECT id, subject, body_text "
                         f"FROM messages WHERE id IN ({marks})", ids)
    else:
        store.db.execute(f"UPDATE messages SET fts = mattermail_fts(subject, body_text) WHERE id IN ({marks})", ids)
