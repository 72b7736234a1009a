"""mattermailctl: the admin's command line.

Exit status: 0 on success, 1 on a user error (one line naming the field),
2 on usage errors (click's own), 78 when the config file cannot be loaded.
Each command group lives in its own module and registers itself on ``cli``.
"""

from __future__ import annotations

from mattermail.ctl import (  # noqa: F401  (each module registers its commands on cli)
    aliases, disclaimers, dkim, dnscmd, importcmd, matters, messages, persons, postfixcmd, routecmd, statuscmd,
    storecmd, testsend, users, webcmd, webhookcmd,
)
from mattermail.ctl.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="mattermailctl")


if __name__ == "__main__":
    main()
