"""Shared fixtures. Stack fixtures live in tests/stack/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a TOML config (store and passwd file under tmp_path) and return its path."""

    def write(extra: str = "") -> Path:
        p = tmp_path / "mattermail.toml"
        p.write_text(
            f"""
[store]
path = "{tmp_path}/store.sqlite"
messages_dir = "{tmp_path}/messages"
[auth]
passwd_file = "{tmp_path}/dovecot-users"
{extra}
""",
            encoding="utf-8",
        )
        return p

    return write
