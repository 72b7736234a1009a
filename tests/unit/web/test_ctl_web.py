"""mattermailctl api token / user role / matter access, on a tmp store through the real command group."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl.cli import cli
from mattermail.store import Store, access, tokens

from .conftest import BOTH_ENGINES, everything_stored


@pytest.fixture
def where(new_store_location):
    """The store's location: SQLite, or PostgreSQL too for the tests marked BOTH_ENGINES."""
    return new_store_location()


@pytest.fixture
def run(write_config, where):
    cfg = write_config(store=where)

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args], input=input)
    assert invoke("user", "add", "alice@lawfirm.test", input="correct-horse-battery\n").exit_code == 0
    assert invoke("user", "add", "bob@lawfirm.test", input="correct-horse-battery\n").exit_code == 0
    assert invoke("matter", "add", "1234", "--title", "Smith v Jones").exit_code == 0
    return invoke


def store_of(where: Path | str, tmp_path: Path) -> Store:
    return Store(where, tmp_path / "messages")


@BOTH_ENGINES
def test_token_create_prints_the_token_alone_on_its_last_line_and_stores_its_hash(run, where, tmp_path):
    r = run("api", "token", "create", "--user", "alice@lawfirm.test", "--scope", "write")
    assert r.exit_code == 0, r.output
    secret = r.output.strip().splitlines()[-1]
    assert secret.startswith("mmt_") and " " not in secret
    s = store_of(where, tmp_path)
    try:
        t = tokens.authenticate_token(s, secret)
        assert t is not None and t.login == "alice@lawfirm.test" and t.scope == "write"
        dump = everything_stored(s)
        assert secret not in dump and hashlib.sha256(secret.encode()).hexdigest() in dump
    finally:
        s.close()
    listed = run("api", "token", "list").output
    assert "alice@lawfirm.test" in listed and "write" in listed and "live" in listed and "last used" in listed
    assert run("api", "token", "revoke", "1").exit_code == 0
    assert "revoked" in run("api", "token", "list").output
    s = store_of(where, tmp_path)
    try:
        assert tokens.authenticate_token(s, secret) is None
    finally:
        s.close()


@pytest.mark.parametrize("args,needle", [
    (("api", "token", "create", "--user", "nobody@lawfirm.test"), "--user"),
    (("api", "token", "revoke", "42"), "ID"),
    (("user", "role", "nobody@lawfirm.test", "admin"), "ADDRESS"),
    (("matter", "access", "9999", "--deny", "bob@lawfirm.test"), "id"),
    (("matter", "access", "1234", "--clear", "--deny", "bob@lawfirm.test"), "--clear"),
])
def test_bad_input_is_one_line_naming_the_field(run, args, needle):
    r = run(*args)
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output


@BOTH_ENGINES
def test_role_and_walls(run, where, tmp_path):
    assert run("user", "role", "alice@lawfirm.test", "admin").output.strip() == "alice@lawfirm.test\tadmin"
    assert run("user", "role", "bob@lawfirm.test").output.strip() == "bob@lawfirm.test\tuser"
    assert "no wall" in run("matter", "access", "1234").output
    out = run("matter", "access", "1234", "--deny", "bob@lawfirm.test").output
    assert "denied bob@lawfirm.test" in out
    s = store_of(where, tmp_path)
    try:
        assert access.walled_matters(s, access.viewer(s, "bob@lawfirm.test")) == {"1234"}
        assert access.walled_matters(s, access.viewer(s, "alice@lawfirm.test")) == set()
    finally:
        s.close()
    out = run("matter", "access", "1234", "--only", "alice@lawfirm.test").output
    assert "only alice@lawfirm.test" in out
    assert run("matter", "access", "1234", "--clear").exit_code == 0
    s = store_of(where, tmp_path)
    try:
        assert access.get_wall(s, "1234").walled is False
    finally:
        s.close()


@BOTH_ENGINES
def test_only_list_screens_everyone_else(run, where, tmp_path):
    run("user", "add", "carol@lawfirm.test", input="correct-horse-battery\n")
    run("matter", "access", "1234", "--only", "alice@lawfirm.test", "--only", "carol@lawfirm.test")
    s = store_of(where, tmp_path)
    try:
        assert [login for login in ("alice@lawfirm.test", "bob@lawfirm.test", "carol@lawfirm.test")
                if "1234" in access.walled_matters(s, access.viewer(s, login))] == ["bob@lawfirm.test"]
    finally:
        s.close()


def test_every_web_command_has_an_example(run):
    for path in (("api", "token", "create"), ("api", "token", "list"), ("api", "token", "revoke"),
                 ("user", "role"), ("matter", "access")):
        r = run(*path, "--help")
        assert r.exit_code == 0 and "Example:" in r.output, path


@BOTH_ENGINES
def test_a_removed_and_re_added_user_inherits_neither_role_nor_tokens(run, where, tmp_path):
    run("user", "role", "alice@lawfirm.test", "admin")
    secret = run("api", "token", "create", "--user", "alice@lawfirm.test").output.strip().splitlines()[-1]
    assert run("user", "remove", "alice@lawfirm.test").exit_code == 0
    assert run("user", "add", "alice@lawfirm.test", input="another-password-9\n").exit_code == 0
    assert run("user", "role", "alice@lawfirm.test").output.strip() == "alice@lawfirm.test\tuser"
    s = store_of(where, tmp_path)
    try:
        assert tokens.authenticate_token(s, secret) is None
    finally:
        s.close()
