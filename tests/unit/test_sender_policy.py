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
