"""Shared fixtures and session set-up. Stack fixtures live in tests/stack/conftest.py.

- The caller's environment is scrubbed once per session (``MATTERMAIL_CONFIG`` from
  README's quick start and friends), so no test and no subprocess depends on it.
- The third-party corpus (``$MATTERMAIL_CORPUS``, default ``../shared/corpus`` beside
  the repo) reaches tests only through the ``corpus`` fixture and the ``corpus_file``
  parameter (``@pytest.mark.corpus_files(SUBDIR)``). Without it those tests skip with
  one reason; with ``MATTERMAIL_REQUIRE_CORPUS=1`` (``.ci/run``) they fail instead.
- The run ends with the skips grouped by reason, just above pytest's own count line.
- Store tests run on both engines through ``store_location`` (SQLite file, or a fresh database in the
  session's private PostgreSQL cluster, ``pg_cluster``).
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mattermail import privileges

REPO = Path(__file__).resolve().parents[1]
CORPUS_ENV = "MATTERMAIL_CORPUS"
REQUIRE_CORPUS_ENV = "MATTERMAIL_REQUIRE_CORPUS"
#: Test knobs read from the environment; every other MATTERMAIL_* variable is the caller's.
TEST_KNOBS = {CORPUS_ENV, REQUIRE_CORPUS_ENV, "MATTERMAIL_KEEP_STACK", "MATTERMAIL_PG_BIN"}


# -- the caller's environment ----------------------------------------------------------------


def clean_environment(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Remove what the caller's shell may carry into tests and their subprocesses; return the names.

    ``MATTERMAIL_CONFIG`` (README's quick start exports it) would point mattermailctl at
    the dev stack; ``SWAKS_OPT_*`` change swaks; ``JOURNAL_STREAM`` changes our log format;
    ``PYTHONPATH`` could put the repo root (with its ``milter/`` folder) before pymilter.
    ``PYTHONSAFEPATH`` is pinned to 1 whether or not the caller (make) set it.
    """
    removed = [k for k in list(environ) if (k.startswith("MATTERMAIL_") and k not in TEST_KNOBS)
               or k.startswith("SWAKS_") or k in ("JOURNAL_STREAM", "PYTHONPATH")]
    for k in removed:
        del environ[k]
    environ["PYTHONSAFEPATH"] = "1"
    return removed


def pytest_configure(config: pytest.Config) -> None:
    clean_environment(os.environ)
    config.addinivalue_line("markers", "corpus_files(subdir): parametrize ``corpus_file`` over the "
                            "message files under that corpus folder")


# -- the third-party corpus ------------------------------------------------------------------


def corpus_location() -> Path:
    """``$MATTERMAIL_CORPUS`` (relative to the repo root when relative), else ``../shared/corpus``."""
    value = os.environ.get(CORPUS_ENV, "").strip()
    return (REPO / (value or "../shared/corpus")).resolve()


def corpus_missing_reason(path: Path) -> str:
    return f"corpus not found at {path}: set {CORPUS_ENV}=/path/to/corpus to run these"


class Corpus:
    """The corpus folder: ``corpus / "spf" / "x.yml"``, ``corpus.files("mime")``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def files(self, subdir: str) -> list[Path]:
        """Every file under ``subdir``, sorted; a missing folder is an error, not an empty list."""
        root = self.path / subdir
        if not root.is_dir():
            raise FileNotFoundError(f"corpus folder {root} is missing (is {CORPUS_ENV} the right corpus?)")
        return sorted(p for p in root.rglob("*") if p.is_file())

    def messages(self, subdir: str) -> list[Path]:
        """The files under ``subdir`` without the licence texts."""
        return [p for p in self.files(subdir) if "LICENSE" not in p.name and p.name != "NOTICE"]


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    path = corpus_location()
    if not path.is_dir():
        reason = corpus_missing_reason(path)
        if os.environ.get(REQUIRE_CORPUS_ENV, "") not in ("", "0"):
            pytest.fail(f"{reason} ({REQUIRE_CORPUS_ENV} is set)", pytrace=False)
        pytest.skip(reason)
    return Corpus(path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("corpus_files")
    if marker is None or "corpus_file" not in metafunc.fixturenames:
        return
    root = corpus_location()
    if not root.is_dir():  # one test item, which the corpus fixture skips (or fails)
        metafunc.parametrize("corpus_file", [None], ids=["corpus-missing"])
        return
    files = Corpus(root).messages(marker.args[0])
    metafunc.parametrize("corpus_file", files, ids=[str(p.relative_to(root)) for p in files])


# -- the end of the run: how many ran, how many skipped and why -------------------------------


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return re.sub(r"^Skipped: ", "", str(reason))


# Lines a test reports for the end of the run (the multi-host test's counts): shown without -s, in CI's log too.
REPORTED: list[str] = []


@pytest.fixture
def report_line() -> Callable[[str], None]:
    """``report_line(text)``: print ``text`` in the mattermail test summary at the end of the run."""
    return REPORTED.append


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    """After pytest's own summary (``-ra``), just above its final count line: the skips by reason."""
    result = yield
    stats = terminalreporter.stats
    ran = {k: len(stats.get(k, [])) for k in ("passed", "failed", "error", "xfailed", "xpassed")}
    reasons = Counter(_skip_reason(r) for r in stats.get("skipped", []))
    skipped = sum(reasons.values())
    if not sum(ran.values()) and not skipped:
        return result
    tw = terminalreporter
    tw.write_sep("-", "mattermail test summary")
    detail = ", ".join(f"{n} {k}" for k, n in ran.items() if n)
    tw.write_line(f"ran {sum(ran.values())} ({detail or 'none'}), skipped {skipped}")
    for reason, n in reasons.most_common():
        tw.write_line(f"  skipped {n} \u00d7 {reason}")
    for line in REPORTED:
        tw.write_line(line)
    return result


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a TOML config (store and passwd file under tmp_path) and return its path."""

    def write(extra: str = "", store: Path | str | None = None, inline_max: int | None = None) -> Path:
        """``store``: a ``store_location`` (a PostgreSQL URL becomes store.url; default: the SQLite file).
        ``inline_max``: store.inline_max (default: the config's own)."""
        (tmp_path / "postfix").mkdir(exist_ok=True)
        (tmp_path / "postfix" / "main.cf").write_text("")  # for postmap -c
        p = tmp_path / "mattermail.toml"
        url = f'url = "{store}"' if isinstance(store, str) else ""
        path = store if isinstance(store, Path) else tmp_path / "store.sqlite"
        p.write_text(
            f"""
[store]
path = "{path}"
messages_dir = "{tmp_path}/messages"
{url}
{"" if inline_max is None else f"inline_max = {inline_max}"}
[auth]
passwd_file = "{tmp_path}/dovecot-users"
sender_login_map = "{tmp_path}/sender-login-map"
[postfix]
config_dir = "{tmp_path}/postfix"
{extra}
""",
            encoding="utf-8",
        )
        return p

    return write


@pytest.fixture(autouse=True)
def _test_process_keeps_its_user(request, monkeypatch):
    """mattermailctl run in-process (CliRunner) must not turn the test runner into the daemon user.

    On a machine with the package installed the ``mattermail`` user exists, and
    ctl as root would switch to it. Tests of the switch itself mark themselves
    ``real_privileges`` (and run it in a child process).
    """
    if request.node.get_closest_marker("real_privileges") is None:
        monkeypatch.setattr(privileges, "drop", lambda user: False)


# -- the store on both engines ----------------------------------------------------------------

STORE_ENGINES = ("sqlite", "postgresql")
PG_TEMPLATE = "mattermail_template"  # a migrated database every test's database is copied from


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster for the session (mattermail_dev.pgcluster), torn down at the end.

    Without PostgreSQL's binaries every postgresql-parametrised test fails with the reason: CI installs
    them (packaging/dev-deps.sh), and a skipped engine would hide its failures."""
    from mattermail_dev import pgcluster

    from mattermail.store import Store

    try:
        cluster = pgcluster.start()
    except pgcluster.ClusterError as e:
        reason = str(e)
    else:
        reason = ""
    if reason:
        pytest.fail(f"the postgresql store tests need a private PostgreSQL cluster: {reason}", pytrace=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Store(cluster.create_database(PG_TEMPLATE), Path(tmp)).close()  # migrated once, copied per test
        yield cluster
    finally:
        cluster.stop()


_databases = itertools.count(1)


@pytest.fixture(params=STORE_ENGINES)
def store_location(request, tmp_path: Path) -> Iterator[Path | str]:
    """Where a test's store lives, once per engine: ``tmp_path/store.sqlite``, or the URL of a new database
    (copied from a migrated template, dropped after the test) in the session's PostgreSQL cluster.
    ``Store(store_location, tmp_path / "messages")`` opens it; open it again for a second connection."""
    if request.param == "sqlite":
        yield tmp_path / "store.sqlite"
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"mm_test_{os.getpid()}_{next(_databases)}"
    url = cluster.create_database(name, PG_TEMPLATE)
    yield url
    cluster.drop_database(name)


@pytest.fixture(params=STORE_ENGINES)
def blank_store_location(request, tmp_path: Path) -> Iterator[Path | str]:
    """As ``store_location``, but an empty database (no schema yet): for the tests of a migration, which open
    it with the migrations before that one first."""
    if request.param == "sqlite":
        yield tmp_path / "store.sqlite"
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"mm_blank_{os.getpid()}_{next(_databases)}"
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(name)


@pytest.fixture
def store_engine(request) -> str:
    """The engine of ``new_store_location``: "sqlite", unless the test parametrizes it (indirect) to run on both:
    ``@pytest.mark.parametrize("store_engine", STORE_ENGINES, indirect=True)`` on the tests that exercise
    store queries, so the rest of a module's tests (which only need some store) run once."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def new_store_location(request, tmp_path: Path, store_engine: str):
    """``new_store_location(name="store.sqlite")``: a new store's location on ``store_engine``: ``tmp_path/name``,
    or the URL of a new database copied from the migrated template (each call its own; dropped after the test)."""
    made: list[str] = []

    def make(name: str = "store.sqlite") -> Path | str:
        if store_engine == "sqlite":
            return tmp_path / name
        db = f"mm_test_{os.getpid()}_{next(_databases)}"
        made.append(db)
        return request.getfixturevalue("pg_cluster").create_database(db, PG_TEMPLATE)

    yield make
    for db in made:
        request.getfixturevalue("pg_cluster").drop_database(db)
