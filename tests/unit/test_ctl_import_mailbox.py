"""mattermailctl import reads mbox and Maildir through the standard library's ``mailbox``.

The mbox tests compare what is stored with what the hand-written splitter it replaced
(``old_mbox_items`` below, copied as the reference) stored for the same file, so a
re-import of an mbox imported before the change finds its messages already present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl import importcmd
from mattermail.ctl.base import cli
from mattermail.store import Store, find_message
from mattermail.store import directory as d

CA = "matters.lawfirm.test"
SUMMARY = re.compile(r"^imported (\d+): filed (\d+), unfiled (\d+), personal (\d+), system (\d+), "
                     r"already present (\d+), errors (\d+)$", re.MULTILINE)


# -- the reference: the splitter before mailbox.mbox (for the comparison only) ----------------


def old_mbox_items(path: Path) -> list[tuple[int, int]]:
    """ctl/importcmd.py's mbox_items before the change, returning the (start, end) byte ranges it stored."""
    items: list[tuple[int, int]] = []
    start: int | None = None
    pos = 0
    prev_blank = True
    blank_at: int | None = None
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"From ") and prev_blank:
                if start is not None:
                    items.append((start, blank_at if blank_at is not None else pos))
                start = pos + len(line)
            stripped = line.rstrip(b"\r\n")
            blank_at = pos if not stripped else None
            prev_blank = not stripped
            pos += len(line)
    if start is not None:
        items.append((start, blank_at if blank_at is not None else pos))
    return [(s, max(s, e)) for s, e in items]


def old_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[s:e] for s, e in old_mbox_items(path)]


def new_messages(path: Path) -> list[bytes]:
    return [item.read() for item in importcmd.mbox_messages(path)]


# -- sample mboxes -----------------------------------------------------------------------------


def message(n: int, to: str, body: str) -> str:
    return (f"Delivered-To: {to}\nFrom: sender{n}@else.example\nTo: someone@else.example\nSubject: message {n}\n"
            f"Date: Mon, 01 Jan 2024 10:00:0{n} +0000\nMessage-ID: <{n}.sample@test>\n\n{body}")


def from_line(n: int) -> str:
    return f"From sender{n}@else.example Mon Jan  1 10:00:0{n} 2024\n"


SAMPLE = (
    from_line(1) + message(1, f"1234@{CA}", "first\n>From a quoted line\n>>From quoted twice\n") + "\n"
    + from_line(2) + message(2, f"5678@{CA}", "second\nFrom here on, no empty line before it: the body goes on\n")
    + "\n\n"  # two empty lines: only the last one separates
    + from_line(3) + message(3, f"9999@{CA}", "third\n\nFrom the body, after an empty line: a new message\n") + "\n"
    + from_line(4) + from_line(5) + message(4, f"1234@{CA}", "a From_ line right after a From_ line\n") + "\n"
    + from_line(6) + message(6, f"smith@{CA}", "last, no newline at the end")
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


SAMPLES = {
    "LF": SAMPLE.encode(),
    "CRLF": crlf(SAMPLE),
    "CRLF, ends with an empty line": crlf(SAMPLE + "\n\n"),
    "LF From_ lines, CRLF messages": b"".join(from_line(n).encode() + crlf(message(n, f"1234@{CA}", f"m{n}\n"))
                                               + b"\n" for n in (1, 2, 3)),
    "CRLF empty line then LF empty line": (from_line(1) + message(1, f"1234@{CA}", "x\n")).encode() + b"\r\n\n"
                                          + (from_line(2) + message(2, f"1234@{CA}", "y\n")).encode(),
    "one message, empty lines at the end": (from_line(1) + message(1, f"1234@{CA}", "x\n") + "\n\n\n").encode(),
    "only a From_ line": from_line(1).encode(),
}


@pytest.mark.parametrize("kind", SAMPLES)
def test_mbox_messages_are_the_bytes_the_old_splitter_stored(tmp_path, kind):
    path = tmp_path / "box.mbox"
    path.write_bytes(SAMPLES[kind])
    old, new = old_messages(path), new_messages(path)
    assert len(new) == len(old), f"{kind}: {len(new)} messages now, {len(old)} before"
    for i, (o, n) in enumerate(zip(old, new), 1):
        assert n == o, f"{kind}, message {i}: {len(n)} bytes now, {len(o)} before:\n{n[-60:]!r}\n{o[-60:]!r}"
    assert [i.label for i in importcmd.mbox_messages(path)] == [
        f"{path} (message {k} at byte {s})" for k, (s, _) in enumerate(old_mbox_items(path), 1)]


def test_sample_split_where_a_reader_expects_and_quoting_kept(tmp_path):
    path = tmp_path / "box"
    path.write_bytes(SAMPLE.encode())
    got = new_messages(path)
    # 1, 2 (with its unquoted From line), 3 and the "From the body" piece, 4 (with From_ 5), 6
    assert len(got) == 6, [m[:40] for m in got]
    assert b"\n>From a quoted line\n>>From quoted twice\n" in got[0]  # no mboxrd un-quoting
    assert got[1].endswith(b"\nFrom here on, no empty line before it: the body goes on\n\n")  # 1 of 2 empty lines
    assert got[3] == b""  # the From line in the body of 3, after an empty line, starts an (empty) message
    assert got[4].startswith(from_line(5).encode()) and got[5].endswith(b"no newline at the end")


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_corpus_messages_in_one_mbox_split_as_before(corpus, tmp_path, newline):
    """Every corpus message (bounces quote headers and bodies, some have "From " lines) written unquoted
    into one mbox, as a careless exporter would: the same messages, byte for byte, as the old splitter."""
    files = corpus.messages("bounces/sisimai/maildir-bsd") + corpus.messages("mime")
    path = tmp_path / "corpus.mbox"
    with open(path, "wb") as f:
        for n, p in enumerate(files):
            raw = p.read_bytes()
            f.write(b"From MAILER-DAEMON Mon Jan  1 10:00:00 2024" + newline + raw
                    + (b"" if raw.endswith(b"\n") else newline) + newline)
    items = importcmd.mbox_messages(path)
    old, new = old_messages(path), [item.read() for item in items]
    joined = sum(len(item.keys) > 1 for item in items)  # messages mailbox.mbox alone would have cut
    seen = f"{len(files)} files, {len(new)} messages now, {len(old)} before, {joined} joined back"
    assert len(files) > 900 and len(new) == len(old) and joined > 0, seen
    differ = [i for i, (o, n) in enumerate(zip(old, new)) if o != n]
    assert not differ, f"{seen}: {len(differ)} differ from before, the first: {differ[:5]}"


# -- through the command -----------------------------------------------------------------------


class Env:
    def __init__(self, cfg: Path, tmp: Path, location: Path | str) -> None:
        self.cfg = cfg
        self.store = Store(location, tmp / "messages")

    def run(self, *args):
        return CliRunner().invoke(cli, ["--config", str(self.cfg), *map(str, args)])


@pytest.fixture
def env(write_config, tmp_path, store_location):
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n',
                       store=store_location)
    e = Env(cfg, tmp_path, store_location)
    d.add_matter(e.store, "1234", "Smith v Jones")
    d.add_matter(e.store, "5678", "Estate of Brown")
    yield e
    e.store.close()


def summary(r) -> tuple[int, ...]:
    found = SUMMARY.findall(r.stdout)
    assert len(found) == 1, r.output
    return tuple(int(x) for x in found[0])


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("kind", ["LF", "CRLF"])
def test_an_mbox_imported_before_the_change_is_already_present(env, tmp_path, kind):
    path = tmp_path / "archive.mbox"
    path.write_bytes(SAMPLES[kind])
    before = old_messages(path)
    # what the old code stored, each as a file of its own: importing them is "importing with the old code"
    for i, raw in enumerate(before):
        (tmp_path / "old").mkdir(exist_ok=True)
        (tmp_path / "old" / f"{i}.eml").write_bytes(raw)
    r = env.run("import", tmp_path / "old")
    assert r.exit_code == 1, r.output  # the "a new message" piece of message 3 is no message, as before
    assert summary(r) == (5, 3, 2, 0, 0, 0, 1), r.output
    stored = env.store.count("messages")

    r = env.run("import", path)
    assert summary(r) == (0, 0, 0, 0, 0, 5, 1), r.output
    assert env.store.count("messages") == stored == 5
    assert re.search(rf"^error: {re.escape(str(path))} \(message 4 at byte \d+\): empty file$",
                     r.stderr, re.MULTILINE), r.stderr
    for raw in before[:3]:
        assert find_message(env.store, sha(raw)) is not None


def test_an_empty_mbox_and_an_unreadable_one_are_errors_naming_the_file(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.mbox").write_bytes(b"")
    (src / "gone.mbox").symlink_to(tmp_path / "nowhere")
    r = env.run("import", src)
    assert r.exit_code == 1 and summary(r) == (0, 0, 0, 0, 0, 0, 2), r.output
    assert f"error: {src / 'empty.mbox'}: an mbox without any message (no 'From ' line)" in r.stderr
    assert f"error: {src / 'gone.mbox'}: cannot read: No such file or directory" in r.stderr
    r = env.run("import", src / "empty.mbox")
    assert r.exit_code == 1 and "an mbox without any message" in r.stderr, r.output


def test_an_mbox_removed_or_changed_after_listing_is_an_error_per_message(tmp_path):
    path = tmp_path / "box.mbox"
    path.write_bytes(SAMPLES["LF"])
    items = importcmd.mbox_messages(path)
    with open(path, "ab") as f:  # a delivery appends a message after the listing: not the mbox listed
        f.write(b"\n\n" + (from_line(7) + message(7, f"1234@{CA}", "late\n")).encode())
    assert len(items) == 6
    for item in items:
        with pytest.raises(OSError, match="removed or changed during the import"):
            item.read()
    items = importcmd.mbox_messages(path)
    assert len(items) == 7 and items[-1].read().endswith(b"late\n")
    items = importcmd.mbox_messages(path)
    path.unlink()  # removed after the listing, before the first read
    with pytest.raises(OSError, match="removed or changed during the import"):
        items[0].read()


def open_under(folder: Path) -> int:
    """How many of this process's file descriptors are open on files under ``folder``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/")
        except OSError:  # closed meanwhile
            pass
    return n


def test_many_mbox_files_are_never_open_at_once(tmp_path):
    for n in range(20):
        (tmp_path / f"{n:02}.mbox").write_bytes(SAMPLES["CRLF"])
    plan = importcmd.plan_import(tmp_path)
    assert len(plan.items) == 20 * 6 and not plan.errors, (len(plan.items), plan.errors)
    assert open_under(tmp_path) == 0, f"{open_under(tmp_path)} mbox files left open after listing 20"
    most = 0
    for item in plan.items:
        item.read()
        most = max(most, open_under(tmp_path))
    assert most == 1 and open_under(tmp_path) == 0, (
        f"at most {most} open while reading, {open_under(tmp_path)} left open")


# -- Maildir -----------------------------------------------------------------------------------


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mail(n: int, to: str = f"1234@{CA}") -> bytes:
    return crlf(message(n, to, f"maildir message {n}\n"))


def test_maildir_new_cur_subfolders_hidden_files_and_a_non_message(env, tmp_path):
    md = tmp_path / "Maildir"
    files = [put(md / "cur" / "1700000001.M1P1.host:2,S", mail(1)),
             put(md / "new" / "1700000002.M2P2.host", mail(2, f"5678@{CA}")),
             put(md / ".Sent" / "cur" / "1700000003.M3P3.host:2,RS", mail(3, f"9999@{CA}")),
             put(md / ".Sent.2023" / "new" / "1700000004.M4P4.host", mail(4))]
    (md / ".Sent.2023" / "cur").mkdir()
    (md / ".Sent" / "new").mkdir()
    put(md / "tmp" / "1700000005.M5P5.host", mail(5))  # unfinished delivery
    put(md / ".Sent" / "tmp" / "1700000006.M6P6.host", mail(6))
    put(md / "new" / ".keep", b"")
    put(md / "cur" / ".hidden:2,S", mail(7))
    bad = put(md / "cur" / "1700000008.M8P8.host:2,S", b"no header here\n")
    put(md / "dovecot-uidlist", b"3 V1700000000 N9\n")
    put(md / ".Sent" / "maildirfolder", b"")

    r = env.run("import", md)
    assert r.exit_code == 1, r.output
    assert summary(r) == (4, 3, 1, 0, 0, 0, 1), r.output
    assert f"error: {bad}: not an email message (it does not start with a header field)" in r.stderr, r.stderr
    out = json.loads(env.run("import", md, "--json").stdout)
    assert sorted(Path(p).name for p in out["skipped"]) == [".hidden:2,S", ".keep", "dovecot-uidlist", "maildirfolder"]
    for f in files:
        assert find_message(env.store, sha(f.read_bytes())) is not None, f
    for n in (5, 6, 7):
        assert find_message(env.store, sha(mail(n))) is None, n
    assert summary(env.run("import", md)) == (0, 0, 0, 0, 0, 4, 1)
    assert summary(env.run("import", md / ".Sent")) == (0, 0, 0, 0, 0, 1, 0)  # a sub-folder on its own


def test_a_maildir_file_removed_during_the_import_is_an_error_and_a_moved_one_is_read(env, tmp_path, monkeypatch):
    md = tmp_path / "Maildir"
    gone = put(md / "new" / "1700000001.M1P1.host", mail(1))
    moved = put(md / "new" / "1700000002.M2P2.host", mail(2))
    put(md / "cur" / "1700000003.M3P3.host:2,S", mail(3))
    plan_import = importcmd.plan_import

    def plan_then_a_client_acts(path):
        plan = plan_import(path)
        gone.unlink()  # expunged
        moved.rename(md / "cur" / (moved.name + ":2,S"))  # seen: new/ -> cur/
        return plan

    monkeypatch.setattr(importcmd, "plan_import", plan_then_a_client_acts)
    r = env.run("import", md)
    assert r.exit_code == 1 and summary(r) == (2, 2, 0, 0, 0, 0, 1), r.output
    assert (f"error: {md} (message 1700000001.M1P1.host): cannot read: the file was removed or changed "
            f"during the import") in r.stderr, r.stderr
    assert find_message(env.store, sha(mail(2))) is not None


def test_an_mbox_given_as_path_stays_open_from_listing_to_its_last_message(tmp_path):
    path = tmp_path / "archive"
    path.write_bytes(SAMPLES["LF"])
    plan = importcmd.plan_import(path)
    assert len(plan.items) == 6 and open_under(tmp_path) == 1, (len(plan.items), open_under(tmp_path))
    got = [item.read() for item in plan.items]
    assert got == old_messages(path) and open_under(tmp_path) == 0, open_under(tmp_path)
