"""A damaged, locked or unreadable store: every mattermailctl command says so in one line naming the
file and the way out (exit 1, no traceback); the milter defers (451) instead of refusing (553), and
reopens its store so a user added after a repair is seen. Real SQLite files, damaged on disk."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import Milter
from Milter import testctx

import pytest
from click.testing import CliRunner

from mattermail import store as storemod
from mattermail.config import load
from mattermail.ctl.cli import cli
from mattermail.milter.app import MatterMilter
from mattermail.milter.runtime import Runtime
from mattermail.store import Store, add_user, describe_error

# A representative command of each group that reads the store.
COMMANDS = [
    ["user", "list"],
    ["person", "list"],
    ["matter", "list"],
    ["alias", "list"],
    ["disclaimer", "show"],
    ["messages", "list"],
    ["messages", "search", "subject:hearing"],
    ["messages", "show", "1"],
    ["store", "verify"],
    ["store", "log"],
    ["user", "add", "carol@lawfirm.test"],  # (password on stdin)
    ["backup", "{tmp}/backup"],
    ["restore", "{tmp}"],
]


def _populated(write_config, tmp_path: Path) -> Path:
    cfg = write_config()
    s = Store(tmp_path / "store.sqlite", tmp_path / "messages")
    for n in range(40):  # enough rows for several pages, so damage past the header hits real data
        add_user(s, f"user{n}@lawfirm.test", "{PLAIN}x" * 20, [f"alias{n}@lawfirm.test"])
    s.close()  # the last connection checkpoints the WAL into the file
    assert not (tmp_path / "store.sqlite-wal").exists()
    return cfg


def _damage_pages(db: Path) -> None:
    """Garbage over every page after the first (the header and schema page stay readable)."""
    size = db.stat().st_size
    page = 4096
    assert size > 2 * page, f"the store is only {size} bytes: nothing to damage past the first page"
    with open(db, "r+b") as f:
        f.seek(page)
        f.write(b"\xa5\x5a" * ((size - page) // 2))


def _damage_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"this is not SQLite at all" * 8)


def _run(cfg: Path, args: list[str]):
    return CliRunner().invoke(cli, ["--config", str(cfg), *args], input="correct-horse\n")


def _assert_one_line(r, args, db: Path, words: str) -> None:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1, f"{args}: exit {r.exit_code}, output {r.output!r}, exception {r.exception!r}"
    assert "Traceback" not in r.output and not isinstance(r.exception, sqlite3.Error), f"{args}: {r.output!r}"
    assert len(lines) == 1, f"{args}: {len(lines)} lines: {r.output!r}"
    assert lines[0].startswith(f"mattermailctl: the store {db} "), f"{args}: {lines[0]!r}"
    assert words in lines[0], f"{args}: {lines[0]!r}"


@pytest.mark.parametrize("damage, driver_text", [(_damage_pages, "malformed"), (_damage_header, "not a database")])
def test_every_command_names_a_damaged_store_in_one_line(write_config, tmp_path, damage, driver_text):
    cfg = _populated(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    damage(db)
    seen = {}
    for args in COMMANDS:
        args = [a.format(tmp=tmp_path) for a in args]
        r = _run(cfg, args)
        seen[" ".join(args)] = r.exit_code
        _assert_one_line(r, args, db, "is damaged")
        line = r.output.strip()
        assert driver_text in line, f"{args}: {line!r}"
        assert "'mattermailctl store verify'" in line and "'mattermailctl restore DIR'" in line, line
    assert set(seen.values()) == {1}, seen


def test_unopenable_store_is_named_with_the_way_out(write_config, tmp_path):
    cfg = write_config()
    db = tmp_path / "store.sqlite"
    db.mkdir()  # a directory where the database file should be: SQLite cannot open it
    for args in (["user", "list"], ["messages", "list"], ["store", "verify"]):
        r = _run(cfg, args)
        _assert_one_line(r, args, db, "cannot be read or written")
        assert "unable to open database file" in r.output, r.output


def test_a_locked_store_is_busy_not_damaged(tmp_path):
    db = tmp_path / "s.sqlite"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(db, timeout=0)
    with pytest.raises(sqlite3.Error) as exc:
        other.execute("SELECT * FROM t").fetchall()
    holder.execute("ROLLBACK")
    kind, text = describe_error(exc.value)
    assert (kind, text) == ("busy", "database is locked"), (kind, text)


def test_describe_error_kinds_from_real_files(write_config, tmp_path):
    _populated(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    _damage_header(db)
    with pytest.raises(storemod.StoreError) as exc:
        Store(db, tmp_path / "messages")
    assert describe_error(exc.value) == ("damaged", "file is not a database"), describe_error(exc.value)


# -- the milter ----------------------------------------------------------------------------------

def _runtime(write_config, tmp_path: Path) -> Runtime:
    return Runtime(load(write_config()))


def run_eom(rt: Runtime, login: str, sender: str) -> tuple[str, str]:
    """One submission through the Milter class as libmilter drives it: ("accept", "") or (code, "x.y.z text")."""
    MatterMilter.runtime = rt
    Milter.factory = MatterMilter
    ctx = testctx.TestCtx()
    ctx._setsymval("i", "4AB1C")
    ctx._setsymval("{auth_authen}", login)
    assert ctx._connect(ip="192.0.2.7") == Milter.CONTINUE
    msg = f"From: {sender}\nTo: bob@client.example\nSubject: hi\n\nhello\n".encode()
    rc = ctx._feedFile(io.BytesIO(msg), sender, "bob@client.example")
    if rc == Milter.ACCEPT:
        return "accept", ""
    code, xcode, text = ctx._reply
    return code, f"{xcode} {text}"


@pytest.fixture(autouse=True)
def _every_callback(monkeypatch):
    # Negotiate no skipped steps, so TestCtx (which stops on NOREPLY) feeds every callback.
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])


def test_milter_defers_when_the_store_is_damaged_and_sees_users_added_after_the_repair(write_config, tmp_path):
    rt = _runtime(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    s = Store(db, tmp_path / "messages")
    add_user(s, "alice@lawfirm.test", "{PLAIN}x", ["alice@lawfirm.test"])
    for n in range(40):
        add_user(s, f"user{n}@lawfirm.test", "{PLAIN}x" * 20, [f"alias{n}@lawfirm.test"])
    s.close()
    assert rt.owned_addresses("alice@lawfirm.test") == {"alice@lawfirm.test"}  # the milter's connection is open
    good = tmp_path / "good.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM INTO ?", (str(good),))
    con.close()

    # Damage the pages under the running milter: its next look-up fails -> 451, not 553, not a pass.
    _damage_pages(db)
    code, reply = run_eom(rt, login="alice@lawfirm.test", sender="alice@lawfirm.test")
    assert code == "451" and reply.startswith("4.3.0"), f"damaged store: milter answered {code} {reply}"
    assert "store" in reply.lower(), reply

    # Repair: a fresh file put in place (as a restore into a new store), with a user added afterwards.
    db.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    good.rename(db)
    s = Store(db, tmp_path / "messages")
    add_user(s, "dave@lawfirm.test", "{PLAIN}x", ["dave@lawfirm.test"])
    s.close()
    code, reply = run_eom(rt, login="dave@lawfirm.test", sender="dave@lawfirm.test")
    assert code == "accept", f"user added after the repair: milter answered {code} {reply}"
    code, reply = run_eom(rt, login="dave@lawfirm.test", sender="alice@lawfirm.test")
    assert code == "553", f"dave sending as alice after the repair: {code} {reply}"


def test_milter_replaced_store_file_is_reopened(write_config, tmp_path):
    rt = _runtime(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    s = Store(db, tmp_path / "messages")
    add_user(s, "alice@lawfirm.test", "{PLAIN}x", ["alice@lawfirm.test"])
    s.close()
    assert rt.owned_addresses("alice@lawfirm.test") == {"alice@lawfirm.test"}
    for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):  # moved aside, as an admin would
        if (tmp_path / name).exists():
            (tmp_path / name).rename(tmp_path / f"old-{name}")
    s = Store(db, tmp_path / "messages")  # a new, empty store in its place
    add_user(s, "erin@lawfirm.test", "{PLAIN}x", ["erin@lawfirm.test"])
    s.close()
    assert rt.owned_addresses("erin@lawfirm.test") == {"erin@lawfirm.test"}, "the milter read the old file"
    assert rt.owned_addresses("alice@lawfirm.test") == set(), "alice is only in the old file"


# -- the router ----------------------------------------------------------------------------------

def test_router_defers_every_recipient_on_a_damaged_store(write_config, tmp_path):
    from tests.unit.test_router_lmtp import lmtp_send, running

    _populated(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    store = Store(db, tmp_path / "messages")  # the running router's connection, then the file is damaged
    _damage_pages(db)
    try:
        with running(store) as port:
            replies = lmtp_send(port, ["1234@matters.lawfirm.test", "alice+5@matters.lawfirm.test"])
    finally:
        store.close()
    codes = [code for code, _ in replies]
    assert codes == [451, 451], f"damaged store: router answered {replies}"


def test_router_stops_when_its_store_file_is_replaced(tmp_path, monkeypatch):
    import asyncio

    from mattermail.router import __main__ as router_main

    db = tmp_path / "store.sqlite"
    store = Store(db, tmp_path / "messages")
    monkeypatch.setattr(router_main, "STORE_CHECK_SECONDS", 0.05)

    async def scenario() -> bool:
        stop = asyncio.Event()
        watch = asyncio.get_running_loop().create_task(router_main._watch_store(store, stop))
        await asyncio.sleep(0.2)
        assert not stop.is_set(), "stopped while the file was still the one it opened"
        db.rename(tmp_path / "aside.sqlite")
        Store(db, tmp_path / "messages").close()  # a restore into a new store
        await asyncio.wait_for(stop.wait(), 5)
        await watch
        return stop.is_set()

    try:
        assert asyncio.run(scenario())
        assert store.replaced()
    finally:
        store.close()


def test_router_on_a_damaged_store_exits_75_with_one_line(write_config, tmp_path, capsys):
    import asyncio

    from mattermail.router import __main__ as router_main

    cfg = _populated(write_config, tmp_path)
    _damage_header(tmp_path / "store.sqlite")
    with pytest.raises(SystemExit) as exc:
        asyncio.run(router_main._run(load(cfg)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 75, exc.value.code
    assert err == [f"mattermail-router: fatal: cannot open the store {tmp_path / 'store.sqlite'} "
                   "(damaged: file is not a database)"], err


def test_milter_with_the_wal_replaced_underneath_defers_instead_of_reading_its_old_view(write_config, tmp_path):
    """The issue's case: the WAL file replaced under running daemons. New connections see a damaged store;
    the milter's open one still read the old WAL and passed mail. Now it notices, reopens, and defers."""
    rt = _runtime(write_config, tmp_path)
    db = tmp_path / "store.sqlite"
    writer = Store(db, tmp_path / "messages")  # another process keeps the WAL in use (the router)
    add_user(writer, "alice@lawfirm.test", "{PLAIN}x", ["alice@lawfirm.test"])
    code, reply = run_eom(rt, login="alice@lawfirm.test", sender="alice@lawfirm.test")
    assert code == "accept", (code, reply)
    for n in range(30):  # frames in the WAL, not yet checkpointed
        add_user(writer, f"user{n}@lawfirm.test", "{PLAIN}x" * 20, [f"alias{n}@lawfirm.test"])
    wal = Path(f"{db}-wal")
    size = wal.stat().st_size
    assert size > 0, "nothing in the WAL"
    wal.rename(tmp_path / "old-wal")
    wal.write_bytes(b"\x5a" * size)  # a garbage WAL in its place
    try:
        code, reply = run_eom(rt, login="alice@lawfirm.test", sender="alice@lawfirm.test")
        assert code == "451" and "store" in reply.lower(), f"WAL replaced: milter answered {code} {reply}"
        r = _run(write_config(), ["user", "list"])
        _assert_one_line(r, ["user", "list"], db, "is damaged")
    finally:
        writer.close()
