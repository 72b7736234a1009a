"""A damaged store under the running stack (issue 15 item 6): mail is deferred (4xx), never refused with 5xx,
mattermailctl names the file in one line; after the good copy is put back, mail flows again and a user added
afterwards may send (the milter does not answer from the old file).

The store is swapped as an admin would (store.sqlite with its -wal and -shm moved aside, another file put in
its place); the good copy is taken first with VACUUM INTO and put back at the end, whatever happened.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import sqlite3
import uuid
from pathlib import Path

from .conftest import PASSWORD, wait_for
from .test_router_robustness import alive, drain, queued, router_pid

CA = "matters.lawfirm.test"


def _files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


def _move_aside(db: Path, where: Path) -> None:
    where.mkdir(exist_ok=True)
    for p in _files(db):
        if p.exists():
            os.replace(p, where / p.name)


def _put_in_place(src: Path, db: Path) -> None:
    shutil.copyfile(src, f"{db}.new")
    os.replace(f"{db}.new", db)


def _damaged_copy(good: Path, dest: Path) -> None:
    shutil.copyfile(good, dest)
    size = dest.stat().st_size
    assert size > 3 * 4096, f"the store copy is only {size} bytes"
    with open(dest, "r+b") as f:  # header page intact (it opens), every later page garbage
        f.seek(4096)
        f.write(b"\xa5\x5a" * ((size - 4096) // 2))


def _reap(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not alive(pid)


def test_damaged_store_defers_mail_and_is_named_then_a_restore_lets_mail_and_new_users_through(stack):
    tag = uuid.uuid4().hex[:8]
    var = stack.stack.var
    db = var / "store.sqlite"
    good, bad, aside = var / f"good-{tag}.sqlite", var / f"damaged-{tag}.sqlite", var / f"aside-{tag}"
    r = stack.ctl("matter", "add", "7601", "--title", "Damaged store test")
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("VACUUM INTO ?", [str(good)])
    finally:
        conn.close()
    _damaged_copy(good, bad)
    # The milter has read the store (its connection is open) before the file is swapped under it.
    before = f"before damage {tag}"
    stack.submit("alice@lawfirm.test", stack.message("alice@lawfirm.test", ["bob@example.test"], subject=before),
                 ["bob@example.test"])
    router_before = router_pid(stack)
    _move_aside(db, aside)
    _put_in_place(bad, db)
    try:
        # Submission: the milter's sender look-up fails -> 451 4.3.0, not 553, not a pass.
        msg = stack.message("alice@lawfirm.test", ["bob@example.test"], subject=f"damaged submit {tag}")
        try:
            stack.submit("alice@lawfirm.test", msg, ["bob@example.test"])
            reply = (250, b"accepted")
        except smtplib.SMTPDataError as e:
            reply = (e.smtp_code, e.smtp_error)
        assert reply[0] == 451 and b"4.3.0" in reply[1] and b"store" in reply[1].lower(), \
            f"submission with a damaged store answered {reply}"
        line = stack.log_line("milter", "verdict=tempfail reason=store", "damaged")
        assert "database disk image is malformed" in line, line

        # The router notices its file was replaced and stops (systemd would restart it); inbound catch-all
        # mail is accepted by Postfix and waits in its queue, never refused.
        stack.log_line("router", "was replaced on disk")
        wait_for(lambda: _reap(router_before), 20, "the router to stop")
        rcpt = f"7601@{CA}"
        qid = stack.inbound(stack.message("client@example.test", [rcpt], subject=f"damaged inbound {tag}"), [rcpt])
        assert qid in queued(stack), f"catch-all mail {qid} is not queued while the store is damaged"

        # mattermailctl: one line naming the file and the way out, exit 1.
        r = stack.ctl("user", "list")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
        assert lines[0].startswith(f"mattermailctl: the store {db} is damaged (database disk image is malformed)"), lines
        assert "'mattermailctl restore DIR'" in lines[0], lines[0]
    finally:
        # Restore the good copy; the router is started again as systemd's Restart=on-failure would.
        for p in _files(db):
            p.unlink(missing_ok=True)
        _put_in_place(good, db)
        wait_for(lambda: _reap(router_before), 20, "the router to stop")
        stack.stack.start_router()
        shutil.rmtree(aside, ignore_errors=True)
        good.unlink(missing_ok=True)
        bad.unlink(missing_ok=True)

    drain(stack, {qid})
    stack.log_line("router", qid, f"to=<{rcpt}>", "status=stored")
    user = f"dave-{tag}@lawfirm.test"
    r = stack.ctl("user", "add", user, input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    subject = f"after restore {tag}"
    try:
        stack.submit(user, stack.message(user, ["bob@example.test"], subject=subject), ["bob@example.test"])
    except smtplib.SMTPDataError as e:
        raise AssertionError(f"a user added after the restore was refused: {e.smtp_code} {e.smtp_error!r}") from None
    stack.sink_with(subject.encode())
    r = stack.ctl("user", "list")
    assert r.returncode == 0 and user in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
