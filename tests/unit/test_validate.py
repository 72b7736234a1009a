"""mattermail.validate: the probe's shapes are refused, ordinary values pass (normalised)."""

from __future__ import annotations

import pytest

from mattermail import validate

MAILBOX_OK = [
    ("alice@lawfirm.test", "alice@lawfirm.test"),
    ("Alice.Smith@LawFirm.TEST", "Alice.Smith@lawfirm.test"),  # the domain is lower-cased, the local part kept
    ("alice+1234@matters.lawfirm.test", "alice+1234@matters.lawfirm.test"),
    ("o'brien@client.example", "o'brien@client.example"),
    ("=x@client.example", "=x@client.example"),  # atext; neutralised in CSV, not refused
    ('"alice"@lawfirm.test', "alice@lawfirm.test"),  # quotes that are not needed are dropped
    ('"john..doe"@client.example', '"john..doe"@client.example'),
    ("a@xn--mller-kva.example", "a@xn--mller-kva.example"),
    ("a@[192.0.2.1]", "a@[192.0.2.1]"),
    ("a@[IPv6:2001:DB8:0::1]", "a@[IPv6:2001:db8::1]"),
    ("x" * 64 + "@" + "d" * 63 + ".example", "x" * 64 + "@" + "d" * 63 + ".example"),
]

MAILBOX_BAD = [
    ("eve,alice@lawfirm.test", "','"),  # the probe: Postfix's login map read two logins
    ("eve alice@lawfirm.test", "SPACE"),
    ('"eve,alice"@lawfirm.test', "','"),
    ('"eve alice"@lawfirm.test', "SPACE"),
    ('"a:b"@lawfirm.test', "':'"),
    ("alice\x1b@lawfirm.test", "ESC"),
    ("alice@lawfirm.test\r\nBcc: x@y.example", "CR"),
    ("alice\u202e@lawfirm.test", "RIGHT-TO-LEFT OVERRIDE"),
    ("alice@lawfirm.test\t", "TAB"),
    ("", "empty"),
    ("alice", "no @"),
    ("@lawfirm.test", "local part"),
    ("alice@", "domain is empty"),
    ("a..b@lawfirm.test", "empty part"),
    (".a@lawfirm.test", "empty part"),
    ("a.@lawfirm.test", "empty part"),
    ('""@lawfirm.test', "empty"),
    ("alice@lawfirm", "no dot"),
    ("alice@lawfirm..test", "empty label"),
    ("alice@lawfirm.test.", "ends with a dot"),
    ("alice@-lawfirm.test", "'-lawfirm'"),
    ("alice@law_firm.test", "'law_firm'"),
    ("alice@192.0.2.1", "ends in a number"),
    ("alice@[192.0.2]", "not an address literal"),
    ("alice@[IPv6:nonsense]", "not an IPv6"),
    ("jörg@lawfirm.test", "not ASCII"),
    ("x" * 65 + "@lawfirm.test", "local part is longer than 64"),
    ("a@" + "d" * 64 + ".example", "longer than 63"),
    ("a@" + ".".join(["d" * 60] * 5), "longer than 254"),
]


@pytest.mark.parametrize("text, normalised", MAILBOX_OK)
def test_mailbox_accepts(text, normalised):
    assert validate.mailbox(text) == normalised


@pytest.mark.parametrize("text, reason", MAILBOX_BAD)
def test_mailbox_refuses(text, reason):
    with pytest.raises(validate.Invalid) as e:
        validate.mailbox(text)
    assert reason in str(e.value), f"{text!r}: {e.value}"


MATTER_OK = ["1234", "m-1234", "SMITH-2024.01", "a_b", "X", "9" * 64]
MATTER_BAD = [
    ("a/b", "letters, digits"), ("../etc", "letters, digits"), ("..", "starting with a letter"), ("a..b", "dot"), ("a.", "dot"),
    (".a", "letters, digits"), ("-a", "letters, digits"), ("x\x1b]0;x\x07", "ESC"), ("12 34", "letters, digits"),
    ("a@b", "letters, digits"), ("a+b", "letters, digits"), ("a\u202e", "RIGHT-TO-LEFT"), ("", "empty"),
    ("9" * 65, "longer than 64"), ("ümlaut", "letters, digits"),
]


@pytest.mark.parametrize("text", MATTER_OK)
def test_matter_id_accepts(text):
    assert validate.matter_id(text) == text


@pytest.mark.parametrize("text, reason", MATTER_BAD)
def test_matter_id_refuses(text, reason):
    with pytest.raises(validate.Invalid) as e:
        validate.matter_id(text)
    assert reason in str(e.value), f"{text!r}: {e.value}"


def test_every_matter_id_is_a_local_part_the_router_patterns_can_name():
    # The default router.matter_patterns take digits from a local part: those ids pass; any valid id is a local part.
    for mid in MATTER_OK:
        assert validate.mailbox(f"{mid}@matters.lawfirm.test") == f"{mid}@matters.lawfirm.test"


NAME_OK = [("Jane Client", "Jane Client"), ("  Jane  ", "Jane"), ("Zoë O'Brien-Smith", "Zoë O'Brien-Smith"),
           ("e\u0301", "\u00e9"), ("山田 太郎", "山田 太郎"), ("", ""), ("=HYPERLINK()", "=HYPERLINK()"),
           ("x" * 200, "x" * 200)]
NAME_BAD = [("Jane\r\nBcc: x", "CR"), ("Jane\nDoe", "LF"), ("Jane\tDoe", "TAB"), ("Jane\x1b[2J", "ESC"),
            ("Jane\x07", "BEL"), ("\u202eenaJ", "RIGHT-TO-LEFT OVERRIDE"), ("a\u2066b", "LEFT-TO-RIGHT ISOLATE"),
            ("in\u200bvisible", "ZERO WIDTH SPACE"), ("a\x9bb", "U+009B"), ("a\x7f", "U+007F"), ("x" * 201, "201")]


@pytest.mark.parametrize("text, normalised", NAME_OK)
def test_display_name_accepts(text, normalised):
    assert validate.display_name(text) == normalised


@pytest.mark.parametrize("text, reason", NAME_BAD)
def test_display_name_refuses(text, reason):
    with pytest.raises(validate.Invalid) as e:
        validate.display_name(text)
    assert reason in str(e.value), f"{text!r}: {e.value}"
