import pytest

from mattermail.milter.sender import check

OWNED = {"alice@lawfirm.test", "partners@lawfirm.test"}


@pytest.mark.parametrize(
    "mail_from, froms, senders, expected",
    [
        ("alice@lawfirm.test", ["Alice <alice@lawfirm.test>"], [], None),
        ("ALICE@LawFirm.test", ["alice@LAWFIRM.test"], [], None),
        ("", ["alice@lawfirm.test"], [], None),  # null sender (e.g. a read receipt)
        ("partners@lawfirm.test", ["Partners <partners@lawfirm.test>"], [], None),
        ("bob@lawfirm.test", ["alice@lawfirm.test"], [], ("553", "<alice@lawfirm.test> may not send as <bob@lawfirm.test>")),
        ("alice@lawfirm.test", ["Bob <bob@lawfirm.test>"], [], ("553", "may not send as <bob@lawfirm.test>")),
        ("alice@lawfirm.test", [], [], ("550", "no From: header")),
        ("alice@lawfirm.test", ["a@lawfirm.test", "b@x.test"], [], ("550", "more than one From: header")),
        ("alice@lawfirm.test", ["undisclosed-recipients:;"], [], ("550", "holds no email address")),
        ("alice@lawfirm.test", ["alice@lawfirm.test, partners@lawfirm.test"], [], ("550", "single Sender: header is required")),
        ("alice@lawfirm.test", ["alice@lawfirm.test, partners@lawfirm.test"], ["alice@lawfirm.test"], None),
        ("alice@lawfirm.test", ["alice@lawfirm.test, bob@lawfirm.test"], ["alice@lawfirm.test"], ("553", "<bob@lawfirm.test>")),
        ("alice@lawfirm.test", ["alice@lawfirm.test, partners@lawfirm.test"], ["bob@lawfirm.test"], ("553", "<bob@lawfirm.test>")),
    ],
)
def test_ownership(mail_from, froms, senders, expected):
    v = check("alice@lawfirm.test", OWNED, mail_from, froms, senders)
    if expected is None:
        assert v.ok
    else:
        assert not v.ok and v.code == expected[0] and expected[1] in v.text
        assert v.xcode.startswith("5.")


DISPLAY_SPOOFS = [
    '"ceo@lawfirm.test" <alice@lawfirm.test>',
    "=?utf-8?q?ceo=40lawfirm.test?= <alice@lawfirm.test>",
    '"=?utf-8?b?Y2VvQGxhd2Zpcm0udGVzdA==?=" <alice@lawfirm.test>',
    '"The CEO (ceo@lawfirm.test)" <alice@lawfirm.test>',
    '"CEO <CEO@LawFirm.test>" <alice@lawfirm.test>',
    "alice@lawfirm.test (ceo@lawfirm.test)",
    '"ceo\uff20lawfirm.test" <alice@lawfirm.test>',  # fullwidth at sign: NFKC makes it "@"
]


@pytest.mark.parametrize("from_value", DISPLAY_SPOOFS)
def test_display_name_naming_another_address_is_refused(from_value):
    v = check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", [from_value], [])
    assert (v.ok, v.code, v.xcode, v.text) == (
        False, "553", "5.7.1", "<alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"), v
    assert check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", [from_value], [], display_names=False).ok


@pytest.mark.parametrize("from_value", [
    '"Alice Smith" <alice@lawfirm.test>', "Alice Smith <alice@lawfirm.test>",
    '"alice@lawfirm.test" <alice@lawfirm.test>', '"ALICE@LAWFIRM.TEST" <alice@lawfirm.test>',
    '"Partners (partners@lawfirm.test)" <partners@lawfirm.test>', '"Alice @ home" <alice@lawfirm.test>',
    "=?utf-8?q?Alice_M=C3=BCller?= <alice@lawfirm.test>", '"Smith, Alice" <alice@lawfirm.test>'])
def test_legitimate_display_names_pass(from_value):
    assert check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", [from_value], []).ok


@pytest.mark.parametrize("senders, resent, named", [
    (["bob@lawfirm.test"], [], "bob@lawfirm.test"),  # Sender: alone (one From mailbox) is checked too
    (["Bob <BOB@lawfirm.test>"], [], "bob@lawfirm.test"),
    ([], ["ceo@lawfirm.test"], "ceo@lawfirm.test"),  # Resent-From
    ([], ["alice@lawfirm.test", "Ceo <ceo@lawfirm.test>"], "ceo@lawfirm.test"),  # Resent-From + Resent-Sender
])
def test_sender_and_resent_fields_must_be_owned(senders, resent, named):
    v = check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", ["alice@lawfirm.test"], senders, resent)
    assert (v.ok, v.code, v.text) == (False, "553", f"<alice@lawfirm.test> may not send as <{named}>"), v


def test_owned_sender_and_resent_fields_pass_and_their_display_names_are_checked():
    assert check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", ["alice@lawfirm.test"],
                 ["Partners <partners@lawfirm.test>"], ["Alice <alice@lawfirm.test>"]).ok
    v = check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", ["alice@lawfirm.test"], [],
              ['"ceo@lawfirm.test" <alice@lawfirm.test>'])
    assert v.text == "<alice@lawfirm.test> may not use a display name that names <ceo@lawfirm.test>"


def test_reply_text_of_hostile_header_text_is_printable():
    v = check("alice@lawfirm.test", OWNED, "alice@lawfirm.test", ['"x%s\u202e@evil.test" <alice@lawfirm.test>'], [])
    assert not v.ok and all(" " <= c <= "~" and c != "%" for c in v.text), v.text
