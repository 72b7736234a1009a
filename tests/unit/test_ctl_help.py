"""Every mattermailctl command documents itself: an example in --help, --json on list/show."""

import click
import pytest

from mattermail.ctl.cli import cli


def _commands(cmd: click.Command, path: list[str]):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + [name])
    else:
        yield " ".join(path), cmd


COMMANDS = list(_commands(cli, []))


def test_there_are_commands():
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_help_has_an_example_and_lists_have_json(path, cmd):
    text = cmd.get_help(click.Context(cmd, info_name=path))
    assert "Example" in text
    if path.split()[-1] in ("list", "show"):
        assert "--json" in text
