"""mattermail.addresses: the one address parser (Received ``for`` clauses, address lists, single addresses),
and issue 17 part 3: a quoted local part with spaces in a Received clause resolves."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mattermail.addresses import Mailbox, addr_spec, mailboxes, received_for
from mattermail.ctl import routecmd  # noqa: F401  (registers "route" on cli)
from mattermail.ctl.base import cli
from mattermail.milter import author, sender
from mattermail.router.resolve import addresses_in, resolve

CA = "matters.lawfirm.test"


@pytest.mark.parametrize("value, expected", [
    # quoted local parts: kept whole, spaces and specials included; quotes dropped when not needed
    ('from a by b with local id 1 for ":fail: x"@matters.lawfirm.test; Tue, 2 Mar 1999', '":fail: x"@matters.lawfirm.test'),
    ('by b for <"john doe"@Matters.Lawfirm.test>; Tue', '"john doe"@matters.lawfirm.test'),
    ('by b for "(not a comment)"@matters.lawfirm.test; Tue', '"(not a comment)"@matters.lawfirm.test'),
    ('by b for <"a\\"b c"@d.test>; Tue', '"a\\"b c"@d.test'),
    ('by b for "alice"@d.test; Tue', "alice@d.test"),
    ('by b for "for x"@d.test; Tue', '"for x"@d.test'),
    # comments: "for" inside one is no clause; comments around and inside the address are skipped
    ("from x (message for <a@b.test> forwarded) by y with SMTP id 1; Tue", None),
    ("from x (a (nested for <a@b.test>) c) by y for <c@d.test>; Tue", "c@d.test"),
    ("by y for (the first) <a@b.test> (single-drop); Tue", "a@b.test"),
    ("by y for a(comment)@b.test; Tue", "a@b.test"),
    ("from x (unclosed by y with ESMTP id 1 for <a@b.test>; Tue", "a@b.test"),
    # angle brackets, source routes, bare addresses, trailing dots
    ("by y for <@relay.example:1234@matters.lawfirm.test>; Tue", "1234@matters.lawfirm.test"),
    ("by y for 5678@matters.lawfirm.test; Tue", "5678@matters.lawfirm.test"),
    ("by y FOR <Bob@MATTERS.lawfirm.TEST.>; Tue", "Bob@matters.lawfirm.test"),
    ("by y for <>; Tue", None),
    ("by y for <@example.co.jp>; Tue", None),
    ("by y for you; Tue", None),
    ("from mail.for.example by y.for.example with SMTP id 1; Tue", None),
])
def test_received_for(value: str, expected: str | None) -> None:
    assert received_for(value) == expected


@pytest.mark.parametrize("text, expected", [
    ("alice@Example.ORG", "alice@example.org"),
    ("<Alice@example.org>", "Alice@example.org"),
    (" < alice@example.org > ", "alice@example.org"),
    ('"alice"@example.org', "alice@example.org"),
    ('"alice smith"@example.org', '"alice smith"@example.org'),
    ('<":fail: x"@example.org>', '":fail: x"@example.org'),
    ("alice (the lawyer) @example.org", "alice@example.org"),
    ("<@a.example,@b.example:alice@example.org>", "alice@example.org"),
    ("alice@[192.0.2.1]", "alice@[192.0.2.1]"),
    ("alice@example.org.", "alice@example.org"),
    ("<>", None), ("alice", None), ("@example.org", None), ("alice@example.org junk", None), ("", None),
    (None, None), ("<" * 3000, None),
])
def test_addr_spec(text: str | None, expected: str | None) -> None:
    assert addr_spec(text) == expected


def test_mailboxes_lists_groups_and_names() -> None:
    got = mailboxes(['Alice <alice@Lawfirm.TEST>, "Doe, John" <"john doe"@client.example>',
                     "team: a@b.test, c@d.test;", "junk", "<>"])
    assert got == (Mailbox("Alice", "alice@lawfirm.test", True),
                   Mailbox("Doe, John", '"john doe"@client.example', True),
                   Mailbox("", "a@b.test", True), Mailbox("", "c@d.test", True), Mailbox("", "junk", False))
    assert addresses_in('Alice <alice@Lawfirm.TEST>, junk, "x y"@d.test') == ["alice@lawfirm.test", '"x y"@d.test']


def test_every_address_a_reader_might_show_is_reported() -> None:
    """The milter's checks see the same mailboxes as the router: a broken list yields both addresses."""
    value = "alice@example.org)<bob@example.org>"
    assert [m.address for m in mailboxes([value])] == ["alice@example.org", "bob@example.org"]
    assert author.authors([value]).domains == ("example.org",)
    assert sender.mailboxes([value]) == ["alice@example.org", "bob@example.org"]
    # a quoted local part that needs no quotes is the same mailbox for the sender check
    assert sender.mailboxes(['"alice"@lawfirm.test']) == ["alice@lawfirm.test"]


def test_resolve_quoted_local_part_in_received() -> None:
    raw = (b'Received: from a by b with local id 1\n\tfor ":fail: x"@matters.lawfirm.test; '
           b"Tue, 2 Mar 1999 09:44:33 +0000\nFrom: a@b.example\n\nb\n")
    assert [(r.address, r.source) for r in resolve(raw, [CA])] == [('":fail: x"@matters.lawfirm.test', "Received[0]")]


def test_route_explain_reproduction(write_config) -> None:
    """The reproduction of issue 17: `route explain` resolved nothing for this message."""
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n')
    raw = (b'Received: from a by b with local id 1\n\tfor ":fail: x"@matters.lawfirm.test; '
           b"Tue, 2 Mar 1999 09:44:33 +0000\nFrom: a@b.example\n\nb\n")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "route", "explain", "-", "--json"], input=raw)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["resolved"] == [{"address": '":fail: x"@matters.lawfirm.test', "source": "Received[0]"}]
    assert out["result"] == "unfiled"  # resolved, but no matter, alias or person behind it


def test_hostile_values_are_cheap_and_never_raise() -> None:
    """Each of these took from 30 s to 2 min (or raised RecursionError) in a first version of the parser."""
    import time

    start = time.monotonic()
    assert received_for("for " * 30000) is None
    assert received_for('for "' * 30000) is None
    assert received_for("(" * 30000 + " for <a@b.test>") == "a@b.test"  # never closed: text
    assert addr_spec("a" + "(" * 3000 + ")" * 3000 + "@b.test") is None
    assert len(mailboxes(["a@b.test, " * 20000])) == 20000
    assert time.monotonic() - start < 10


def test_plain_lists_read_as_getaddresses_reads_them() -> None:
    """The fast path for plain address lists (``mailboxes``) gives what the full parse gives: random lists
    of plain items, mangled at random (quotes, comments, groups, dots, blanks, stray brackets); more than a
    thousand of them must take the fast path for the comparison to mean anything."""
    import random

    from mattermail.addresses import _parsed_mailboxes, _plain_mailboxes, text_of

    rng = random.Random(2026)
    atoms = ["alice", "Bob", "o'neil", "x-y", "J", "=?utf-8?q?J=C3=B6rg?=", "a_b", "{x}", "1", "Smith"]
    domains = ["lawfirm.test", "Client.Example", "a-b.c", "x", "d.e.f"]
    noise = ['"', "(", ")", ":", ";", ".", "<", ">", "@", ",", " ", "  ", "\t", "\\", "[", "]", "é", ""]

    def item() -> str:
        addr = f"{rng.choice(atoms)}{rng.choice(['', '.' + rng.choice(atoms)])}@{rng.choice(domains)}"
        name = " ".join(rng.choice(atoms) for _ in range(rng.randint(1, 3)))
        return rng.choice([addr, f"<{addr}>", f"{name} <{addr}>", f"{name}<{addr}>", f"  {name}   <{addr}> "])

    fast = 0
    for _ in range(20000):
        values = [rng.choice([",", ", ", " , "]).join(item() for _ in range(rng.randint(1, 3)))
                  for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:  # mangle one value at a random place
            i = rng.randrange(len(values))
            k = rng.randint(0, len(values[i]))
            values[i] = values[i][:k] + rng.choice(noise) + values[i][k + rng.randint(0, 2):]
        texts = [text_of(v) for v in values]
        if _plain_mailboxes(texts) is not None:
            fast += 1
        assert mailboxes(values) == _parsed_mailboxes(texts), values
    assert fast > 1000
