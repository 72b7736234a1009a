"""The store layer: the one package that owns mattermail's data (schema, migrations, every query).

The milter, the router and ``mattermailctl`` call the typed functions exported here (one module per
aggregate: users, disclaimers, envelopes, messages, directory, listing; status for read-only looks) and never hold SQL, a cursor or a
connection; ``transaction(store)`` is the one way to group changes. A raw message of at most
``store.inline_max`` bytes is kept in its row (``messages.raw``, committed with it); a larger one is a file
named by its SHA-256 (:meth:`Store.write_blob`), durable before the rows that name it are committed.
``read_raw`` finds either.

The record: every new message, filing and unfiled/personal outcome appends a hash-linked entry to the
records chain (``chain``) in the same transaction; ``records`` has refile, delete and legal hold (each
chained), ``indexer`` indexes new messages for search after their commit, ``verify`` checks chain,
tables and raw files, ``backup`` writes and restores online backups (SQLite's backup API, or
pg_dump/pg_restore), ``migrate`` copies a SQLite store into a PostgreSQL database.

Engines: ``Store(location, messages_dir)`` opens a SQLite file (a path) or a PostgreSQL database (a
``postgresql://`` URL, config ``[store] url``). Every query goes through ``store.db`` (connection.py: portable
SQL with ``?`` placeholders, ``db.insert`` for a new id, ``db.engine`` for the few engine-specific
statements); the schema is two migration lists with the same numbers (schema.py, schema_pg.py); search
is FTS5 or tsvector (fulltext.py). Raw message files stay on the local disk with either engine; small
messages kept in their rows are in the database, so every host reading it has them.
"""

from mattermail.store.disclaimers import (DISCLAIMER_SCOPES, DisclaimerRow, disclaimer_for, list_disclaimers,
                                          remove_disclaimer, set_disclaimer)
from mattermail.store.errors import StoreError, describe_error
from mattermail.store.engine import (BlobWriter, Spooled, Store, UserError, lookup_generation,
                                     normalise_address,
                                     recover_stale_tmp, transaction)
from mattermail.store.envelopes import (EnvelopeRecord, get_envelope, record_capture, record_envelope,
                                        record_envelopes)
from mattermail.store.indexer import index_pending, pending_count
from mattermail.store.listing import (CapturedEnvelope, Delivery, Event, FilingView, MessageDetail,
                                      MessageSummary, Names, SearchHit, SearchQuery, SearchTerm, count_unfiled,
                                      filings_of, get_message, list_messages, message_datetime, message_detail,
                                      messages_by_sha256_prefix, parse_search, search)
from mattermail.store.outbox import (ForwardRecord, forward_failed, mark_forwarded, next_forward_due,
                                     pending_forwards, queue_forward, queued_recipients)
from mattermail.store.messages import (find_message, header_text, inline_raw, insert_message, raw_where, read_raw,
                                      record_deliveries)
from mattermail.store.schema import CAPTURE_STATES, MIGRATIONS
from mattermail.store.threads import ThreadHit, record_thread_keys, thread_filings
from mattermail.store.twoway import forget_envelope, is_user_address
from mattermail.store.users import (User, add_user, list_users, login_addresses, owned_addresses, password_hashes,
                                    remove_user, set_password)

__all__ = [
    # listing (what people read)
    "CapturedEnvelope", "Delivery", "Event", "FilingView", "MessageDetail", "MessageSummary", "Names",
    "SearchHit", "SearchQuery", "SearchTerm", "count_unfiled", "filings_of", "get_message", "list_messages",
    "message_datetime", "message_detail", "messages_by_sha256_prefix", "parse_search", "search",
    "index_pending", "pending_count",
    "BlobWriter", "ForwardRecord", "Spooled", "forward_failed", "mark_forwarded", "next_forward_due",
    "pending_forwards", "queue_forward", "queued_recipients",
    "CAPTURE_STATES", "DISCLAIMER_SCOPES", "DisclaimerRow", "EnvelopeRecord", "MIGRATIONS", "Store", "StoreError", "User",
    "UserError", "add_user", "lookup_generation", "describe_error", "disclaimer_for", "find_message", "get_envelope", "inline_raw", "insert_message", "raw_where", "read_raw",
    "list_disclaimers", "list_users", "login_addresses", "normalise_address", "owned_addresses", "password_hashes", "record_capture",
    "record_deliveries", "record_envelope", "record_envelopes", "recover_stale_tmp", "remove_disclaimer", "remove_user",
    "set_disclaimer", "set_password", "transaction",
    "ThreadHit", "record_thread_keys", "thread_filings", "forget_envelope", "is_user_address",
    "header_text",
]
