"""The test session does not depend on the caller's shell (tests/conftest.py scrubs it).

README's quick start exports MATTERMAIL_CONFIG=$PWD/var/mattermail.toml; a `make test` in
the same shell must not act on the dev stack's config, and must not depend on PYTHONSAFEPATH
(make sets it, a bare `.venv/bin/pytest` does not).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: What test_a_session_started_from_the_quick_start_shell puts in the caller's environment.
CALLER = {"MATTERMAIL_CONFIG": "/nonexistent/var/mattermail.toml", "MATTERMAIL_OTHER": "x",
          "SWAKS_OPT_server": "127.0.0.1:1", "JOURNAL_STREAM": "8:123"}


def test_no_caller_setting_reaches_tests_or_their_subprocesses():
    here = sorted(k for k in CALLER if k in os.environ)
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout.splitlines()
    there = sorted(k for k in CALLER if any(line.startswith(k + "=") for line in child))
    assert here == [] and there == [], (here, there)
    assert os.environ.get("PYTHONSAFEPATH") == "1" and "PYTHONSAFEPATH=1" in child


def test_a_session_started_from_the_quick_start_shell(tmp_path):
    """The check above, in a pytest started with the quick start's export and without PYTHONSAFEPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env |= CALLER
    r = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_no_caller_setting_reaches_tests_or_their_subprocesses"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
