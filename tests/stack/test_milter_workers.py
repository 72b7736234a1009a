"""``milter.workers = 2`` through the real stack: two processes accept on the one socket and serve
mail; SIGHUP reloads each; SIGTERM stops all; a parent killed outright takes its workers along."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from mattermail_dev.devstack import _pid_alive

from .conftest import children, wait_for
from .test_outbound import dkim_results
from .test_reload import lines, pid


@pytest.fixture
def two_workers(stack) -> Iterator[int]:
    """The stack's milter restarted with workers = 2; its parent's pid. Restored afterwards."""
    path = stack.stack.config
    original = path.read_text()
    path.write_text(original.replace("[milter]\n", "[milter]\nworkers = 2\n", 1))
    try:
        stack.stack.stop_milter()
        stack.stack.start_milter()
        parent = pid(stack, "milter")
        wait_for(lambda: len(children(parent)) == 2, 30, "two milter workers")
        log = stack.stack.logs / "milter.log"
        wait_for(lambda: all(re.search(rf"mattermail-milter\[{w}\]: worker [12] of 2 serving", log.read_text())
                             for w in children(parent)), 30, "both workers serving")
        yield parent
    finally:
        path.write_text(original)
        stack.stack.stop_milter()
        stack.stack.start_milter()


def test_two_workers_serve_mail_reload_and_stop(stack, two_workers):
    parent = two_workers
    workers = children(parent)
    log = stack.stack.logs / "milter.log"
    start = log.stat().st_size

    def since() -> str:
        with open(log, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    for w in workers:
        assert re.search(rf"mattermail-milter\[{w}\]: worker [12] of 2 serving", log.read_text()), w
        assert os.sched_getaffinity(w) == os.sched_getaffinity(parent)  # set by hand: the scheduler places them
    sent = []
    for i in range(6):
        msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject=f"workers {i}")
        stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
        sent.append(msg["Message-ID"].encode())
    for mid in sent:  # every message signed, whichever worker took its connection
        raw = stack.sink_with(mid).read_bytes()
        assert dkim_results(stack, raw) and all(dkim_results(stack, raw))
    served = set(int(p) for p in re.findall(r"mattermail-milter\[(\d+)\]: \w+: outbound from=<alice@lawfirm\.test>",
                                             since()))
    assert served and served <= set(workers)  # the parent serves no mail itself

    before = lines(stack, "milter", "reloaded")
    os.kill(parent, signal.SIGHUP)
    wait_for(lambda: lines(stack, "milter", "reloaded") >= before + 2, 30, "each worker reloaded")
    reloaded = set(int(p) for p in re.findall(r"mattermail-milter\[(\d+)\]: reloaded", since()))
    assert set(workers) <= reloaded
    assert children(parent) == workers  # reloaded in place, not restarted

    os.kill(parent, signal.SIGTERM)
    wait_for(lambda: not _pid_alive(parent) and not any(_pid_alive(w) for w in workers), 30, "parent and workers gone")
    assert f"mattermail-milter[{parent}]: stopping 2 worker(s)" in since()


def test_a_parent_killed_outright_takes_its_workers_along(stack, two_workers):
    parent = two_workers
    workers = children(parent)
    os.kill(parent, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_pid_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(w) for w in workers), "workers outlived their parent"


def test_the_default_is_one_process_per_cpu(stack):
    """No ``workers`` key (the dev stack's config, as the packaged one): one per CPU the milter may use."""
    assert "workers" not in stack.stack.config.read_text()
    cpus = min(len(os.sched_getaffinity(0)), 64)
    milter = pid(stack, "milter")
    plural = "" if cpus == 1 else "es"
    kept = ", each kept to its own" if cpus > 1 else ""
    stack.log_line("milter", f"mattermail-milter[{milter}]: listening on ",
                   f"with {cpus} process{plural} (one per CPU{kept})")
    wait_for(lambda: len(children(milter)) == (cpus if cpus > 1 else 0), 30, f"{cpus} worker(s)")
    if cpus == 1:
        return  # one process, no workers: nothing to keep anywhere
    # Each worker, every thread of it (libmilter's session threads inherit), on a CPU of its own, as it says.
    own = sorted(os.sched_getaffinity(0))
    seen = []
    for w in children(milter):
        masks = {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{w}/task")}
        assert len(masks) == 1 and len(next(iter(masks))) == 1, (w, masks)
        cpu = next(iter(next(iter(masks))))
        stack.log_line("milter", f"mattermail-milter[{w}]: worker ", f"serving on CPU {cpu}")
        seen.append(cpu)
    assert sorted(seen) == own[:cpus]
