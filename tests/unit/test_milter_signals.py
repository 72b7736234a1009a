"""The milter supervisor passes signals to a worker's main thread, never to libmilter's.

libmilter's signal thread sigwait()s on SIGHUP/SIGTERM/SIGINT and stops on any of them; a
process-directed signal can land there. ``signal_main_thread`` must put the signal where only
the main thread can take it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from mattermail.milter.__main__ import signal_main_thread

# The child blocks SIGHUP in every thread (so it stays pending where it lands), waits until the
# main thread sees it pending, then asks a second thread whether it sees it too: a thread sees
# the process's shared pending signals and its own, never another thread's private ones.
CHILD = textwrap.dedent("""
    import signal, sys, threading
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    seen = threading.Event()
    answer = []
    def other():
        seen.wait(20)
        answer.append(signal.SIGHUP in signal.sigpending())
    t = threading.Thread(target=other)
    t.start()
    print("ready", flush=True)
    while signal.SIGHUP not in signal.sigpending():
        signal.sigtimedwait(set(), 0.01)  # a bounded pause without catching anything
    seen.set()
    t.join()
    print("other thread sees it:", answer[0], flush=True)
""")


def _where_it_lands(send) -> str:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        send(child.pid, signal.SIGHUP)
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    return out.strip()


def test_a_passed_on_signal_reaches_only_the_main_thread():
    assert _where_it_lands(signal_main_thread) == "other thread sees it: False"


def test_a_process_signal_would_be_open_to_any_thread():
    """The control: kill() leaves the signal where libmilter's thread could take it."""
    import os

    assert _where_it_lands(os.kill) == "other thread sees it: True"


def test_a_worker_already_gone_is_an_error_the_supervisor_can_ignore():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        signal_main_thread(child.pid, signal.SIGHUP)
