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
KNOBS = ("MATTERMAIL_CORPUS", "MATTERMAIL_REQUIRE_CORPUS", "MATTERMAIL_KEEP_STACK")


def test_no_caller_setting_reaches_tests_or_their_subprocesses():
    here = sorted(k for k in os.environ if k.startswith("MATTERMAIL_") and k not in KNOBS)
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout.splitlines()
    there = sorted(line.split("=", 1)[0] for line in child if line.startswith("MATTERMAIL_"))
    assert here == [] and [k for k in there if k not in KNOBS] == [], (here, there)
    assert os.environ.get("PYTHONSAFEPATH") == "1" and "PYTHONSAFEPATH=1" in child


def test_a_session_started_from_the_quick_start_shell(tmp_path):
    """The check above, in a pytest started with the quick start's export and without PYTHONSAFEPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env |= {"MATTERMAIL_CONFIG": str(tmp_path / "dev-stack.toml"), "MATTERMAIL_OTHER": "x",
            "SWAKS_OPT_server": "127.0.0.1:1"}
    r = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_no_caller_setting_reaches_tests_or_their_subprocesses"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
