import json

import pytest
from click.testing import CliRunner

from mattermail import passwords
from mattermail.ctl.cli import cli


@pytest.fixture
def run(write_config, store_location):
    cfg = write_config(store=store_location)

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args], input=input)

    return invoke


def test_add_list_passwd_remove(run, tmp_path):
    r = run("user", "add", "alice@lawfirm.test", "--send-as", "Info@LawFirm.test", input="correct-horse\n")
    assert r.exit_code == 0, r.output
    assert "added user alice@lawfirm.test" in r.output
    listed = json.loads(run("user", "list", "--json").output)
    assert listed == [{"login": "alice@lawfirm.test", "send_as": ["alice@lawfirm.test", "info@lawfirm.test"]}]

    passwd = (tmp_path / "dovecot-users").read_text()
    login, pw_hash = passwd.strip().split(":", 1)
    assert login == "alice@lawfirm.test"
    assert "correct-horse" not in passwd
    assert pw_hash.startswith("{ARGON2ID}$argon2id$") and ",p=1$" in pw_hash  # libsodium (Dovecot) needs p=1
    assert passwords.verify_password(pw_hash, "correct-horse")
    assert (tmp_path / "dovecot-users").stat().st_mode & 0o007 == 0

    assert run("user", "passwd", "alice@lawfirm.test", input="another-secret\n").exit_code == 0
    new_hash = (tmp_path / "dovecot-users").read_text().strip().split(":", 1)[1]
    assert passwords.verify_password(new_hash, "another-secret")
    assert not passwords.verify_password(new_hash, "correct-horse")

    login_map = (tmp_path / "sender-login-map").read_text()
    assert login_map == "alice@lawfirm.test\talice@lawfirm.test\ninfo@lawfirm.test\talice@lawfirm.test\n"
    assert (tmp_path / "sender-login-map.db").exists()  # postmap'ed for Postfix

    assert run("user", "remove", "alice@lawfirm.test").exit_code == 0
    assert (tmp_path / "dovecot-users").read_text() == ""
    assert "no users" in run("user", "list").output


@pytest.mark.parametrize(
    "args, stdin, field",
    [
        (["user", "add", "not-an-address"], "correct-horse\n", "address"),
        (["user", "add", "a@lawfirm.test", "--send-as", "bad address@x.test"], "correct-horse\n", "--send-as"),
        (["user", "add", "a@lawfirm.test"], "short\n", "password"),
        (["user", "add", "a@lawfirm.test"], "", "password"),
        (["user", "passwd", "ghost@lawfirm.test"], "correct-horse\n", "no such user"),
        (["user", "remove", "ghost@lawfirm.test"], None, "no such user"),
    ],
)
def test_bad_input_exits_1_naming_the_field(run, args, stdin, field):
    r = run(*args, input=stdin)
    assert r.exit_code == 1, r.output
    assert field in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_duplicate_user(run):
    assert run("user", "add", "a@lawfirm.test", input="correct-horse\n").exit_code == 0
    r = run("user", "add", "A@lawfirm.test", input="correct-horse\n")
    assert r.exit_code == 1 and "already exists" in r.output


def test_broken_config_exits_78(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[store]\npath = 3\n")
    r = CliRunner().invoke(cli, ["--config", str(p), "user", "list"])
    assert r.exit_code == 78
    assert "store.path" in r.output


def test_usage_error_exits_2(run):
    assert run("user", "add").exit_code == 2


def test_sync_writes_another_hosts_files_from_the_shared_store(run, write_config, store_location, tmp_path):
    """An edge host shares the database, not the files: `user sync` writes its own from the store."""
    assert run("user", "add", "alice@lawfirm.test", input="correct-horse\n").exit_code == 0
    edge = tmp_path / "edge"
    edge.mkdir()
    cfg = write_config(store=store_location)
    text = cfg.read_text().replace(f"{tmp_path}/dovecot-users", f"{edge}/dovecot-users") \
        .replace(f"{tmp_path}/sender-login-map", f"{edge}/sender-login-map")
    edge_cfg = edge / "mattermail.toml"
    edge_cfg.write_text(text)
    r = CliRunner().invoke(cli, ["--config", str(edge_cfg), "user", "sync"])
    assert r.exit_code == 0, r.output
    assert f"wrote {edge}/dovecot-users and {edge}/sender-login-map (1 user(s))" in r.output
    assert (edge / "dovecot-users").read_text() == (tmp_path / "dovecot-users").read_text()
    assert (edge / "sender-login-map").read_text() == "alice@lawfirm.test\talice@lawfirm.test\n"
    assert (edge / "sender-login-map.db").exists()
