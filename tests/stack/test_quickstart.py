"""README's quick start, run as written against a fresh private stack.

The commands are read from README.md (the ```sh blocks under "## Quick start"), never
copied here, so the test fails when a README command breaks. They run in order in ONE
bash session (the ``export`` carries over, as in the reader's shell), each checked for
exit status 0; each swaks must end its transaction with ``250`` after the data.

What is rewritten so the commands hit this test's stack, not the dev stack (``make run``'s,
which may be up on the README ports) -- the substitution table, applied in this order:

    README text                  becomes
    $PWD/var/mattermail.toml     the test stack's config file
    127.0.0.1:2525               127.0.0.1:<the test stack's inbound SMTP port>
    127.0.0.1:5870               127.0.0.1:<the test stack's submission port>
    var/ (a relative path)       <the test stack's state dir>/
    .venv/bin/                   the bin dir of the venv running the tests

Skipped, as meta (they start, test and stop the dev stack itself): ``make run``,
``make test``, ``make stop``.  Any other ``make`` line fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from mattermail_dev.devstack import Ports, Stack
from mattermail_dev.pgcluster import free_port

from .conftest import wait_for

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
META = {"make run", "make test", "make stop"}
DEV_PORTS = Ports()  # the README's (dev stack's) ports, which must not survive the rewrite


def quick_start_section(text: str) -> str:
    m = re.search(r"^## Quick start\b.*?$(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Quick start' section"
    return m.group(1)


def sh_commands(section: str) -> list[str]:
    """The logical lines (backslash continuations joined) of every ```sh block, blank lines dropped."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).strip()


@dataclass
class Substitution:
    pattern: str  # a regular expression over README text
    replacement: str


def substitutions(stack: Stack) -> list[Substitution]:
    return [
        Substitution(re.escape("$PWD/var/mattermail.toml"), str(stack.config)),
        Substitution(re.escape(f"127.0.0.1:{DEV_PORTS.smtp}") + r"\b", f"127.0.0.1:{stack.ports.smtp}"),
        Substitution(re.escape(f"127.0.0.1:{DEV_PORTS.submission}") + r"\b", f"127.0.0.1:{stack.ports.submission}"),
        Substitution(r"(?<![\w/.$-])var/", f"{stack.var}/"),
        Substitution(r"(?<![\w/.$-])\.venv/bin/", f"{BIN}/"),
    ]


def rewrite(command: str, stack: Stack) -> str:
    for s in substitutions(stack):
        command = re.sub(s.pattern, lambda _m, r=s.replacement: r, command)
    return command


def test_the_parser_finds_the_quick_start_commands():
    commands = sh_commands(quick_start_section(README.read_text(encoding="utf-8")))
    meta = [c for c in commands if without_comment(c) in META]
    swaks = [c for c in commands if c.startswith("swaks ")]
    assert len(meta) == 3 and len(swaks) >= 2 and len(commands) >= 7, commands


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fresh_stack(request):
    """A stack of its own, as `make run` leaves it: no user, no matter (the session's stack has alice).
    Once per store engine: `make run` (SQLite) and `make run STORE=postgresql` file the same."""
    if os.geteuid() != 0:
        pytest.fail("the stack tests start a private Postfix instance and must run as root")
    var = Path(tempfile.mkdtemp(prefix="mattermail-stack-quickstart-"))
    os.chmod(var, 0o755)
    stack = Stack(var, Ports.free(), store=request.param, pg_port=free_port())
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if not os.environ.get("MATTERMAIL_KEEP_STACK"):
            shutil.rmtree(var, ignore_errors=True)


def run_in_one_shell(commands: list[str], cwd: Path) -> list[tuple[int, str]]:
    """Run ``commands`` in order in one bash; (exit status, output) of each."""
    script = "".join(f"{c}\necho \"@@quickstart-done {i} $?\"\n" for i, c in enumerate(commands))
    r = subprocess.run(["bash", "-c", script], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    results, output = [], []
    for line in r.stdout.splitlines():
        m = re.fullmatch(r"@@quickstart-done (\d+) (\d+)", line)
        if m:
            assert int(m.group(1)) == len(results), r.stdout
            results.append((int(m.group(2)), "\n".join(output)))
            output = []
        else:
            output.append(line)
    assert len(results) == len(commands), f"bash stopped early (exit {r.returncode}):\n{r.stdout}"
    return results


def reply_to_data(swaks_output: str) -> str:
    """The server's reply after swaks's end-of-data line (``-> .``, or ``~> .`` under TLS)."""
    lines = swaks_output.splitlines()
    dot = max((i for i, l in enumerate(lines) if re.fullmatch(r"\s*[-~]> \.", l)), default=None)
    assert dot is not None, swaks_output
    replies = (re.match(r"\s*<[-~]\s+(.*)", l) for l in lines[dot + 1:])
    return next((m.group(1) for m in replies if m), "")


def test_readme_quick_start_commands_work(fresh_stack):
    commands = sh_commands(quick_start_section(README.read_text(encoding="utf-8")))
    for c in commands:
        if c.startswith("make ") and without_comment(c) not in META:
            pytest.fail(f"README's quick start has a make command this test does not know: {c!r}")
    todo = [c for c in commands if without_comment(c) not in META]
    rewritten = [rewrite(c, fresh_stack) for c in todo]
    for before, after in zip(todo, rewritten):
        # nothing left that would reach the dev stack (which may be running) or its var/
        assert not re.search(r"127\.0\.0\.1:(%d|%d)\b" % (DEV_PORTS.smtp, DEV_PORTS.submission), after), after
        assert not re.search(r"(?<![\w/.$-])var/|\$PWD", after), (before, after)

    results = run_in_one_shell(rewritten, REPO)
    report = "\n".join(f"$ {c}\n[exit {rc}]\n{out}" for c, (rc, out) in zip(rewritten, results))
    for command, (rc, out) in zip(rewritten, results):
        assert rc == 0, f"{command!r} exited {rc}:\n{out}\n\n--- the whole run ---\n{report}"
        if command.startswith("swaks "):
            reply = reply_to_data(out)
            assert reply.startswith("250 "), f"{command!r}: the reply to the data was {reply!r}\n{out}"

    # What the quick start promises: the inbound message reaches matter 1234.
    wait_for(lambda: "1234@matters.lawfirm.test" in (fresh_stack.logs / "router.log").read_text(errors="replace")
             and "status=stored" in (fresh_stack.logs / "router.log").read_text(errors="replace"),
             20, "the router storing the message to 1234@matters.lawfirm.test")
    listed = subprocess.run([str(BIN / "mattermailctl"), "--config", str(fresh_stack.config),
                             "messages", "list", "--matter", "1234"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "bob@example.test" in listed.stdout, listed.stdout + listed.stderr
    url = tomllib.loads(fresh_stack.config.read_text())["store"].get("url", "")
    if fresh_stack.store == "postgresql":  # filed in the database, not in a SQLite file beside it
        assert url == fresh_stack.pg_url() and not (fresh_stack.var / "store.sqlite").exists(), url
    else:
        assert url == "" and (fresh_stack.var / "store.sqlite").exists()
