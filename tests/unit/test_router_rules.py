"""The routing rules (router/rules.py): a pure table over a fake directory."""

from __future__ import annotations

import re

import pytest

from mattermail.config import from_dict
from mattermail.router.rules import FilingDecision, RouterRules, RuleContext, apply_rules, merge

CA = "matters.lawfirm.test"


class FakeLookups:
    def __init__(self) -> None:
        self.aliases = {f"smith@{CA}": (None, "1234"), f"bob@{CA}": (7, None), f"carol@{CA}": (8, None)}
        self.matters = {"1234": "open", "5678": "open", "42": "closed", "ABC-9": "open"}
        self.addresses = {"alice@lawfirm.test": [3], "client@example.test": [5], "bcc-client@example.test": [6],
                          "shared@example.test": [11, 9], "partner@lawfirm.test": [12]}

    def alias(self, address):
        return self.aliases.get(address.lower())

    def matter_status(self, matter_id):
        return self.matters.get(matter_id)

    def persons(self, address):
        return sorted(self.addresses.get(address.lower(), []))

    # stored messages: (kind, key) → [(matter, message id, sha256)], newest message first
    threads = {
        ("msgid", "orig.1@lawfirm.test"): [("1234", 10, "sha10")],
        ("msgid", "orig.2@lawfirm.test"): [("5678", 20, "sha20")],
        ("msgid", "both@lawfirm.test"): [("1234", 30, "sha30"), ("5678", 30, "sha30")],
        ("msgid", "two-copies@lawfirm.test"): [("42", 41, "sha41"), ("1234", 40, "sha40")],
        ("msgid", "gone@lawfirm.test"): [("7777", 50, "sha50")],  # a matter since removed
        ("subject", "contract draft"): [("5678", 60, "sha60")],
    }

    def thread(self, kind, key):
        return list(self.threads.get((kind, key), []))


RULES = RouterRules(catchall_domains=(CA,), sending_domains=("lawfirm.test",))


def run(recipient, rules=RULES, **kw):
    return apply_rules(RuleContext(recipient=recipient, **kw), FakeLookups(), rules)


def filed(res):
    return [(f.matter, f.person_id, f.rule) for f in res.filings]


# (recipient, context, expected filings, expected unfiled reason)
TABLE = [
    # 1 alias → matter / person
    (f"smith@{CA}", {}, [("1234", None, "alias")], None),
    (f"Bob@{CA}", {}, [(None, 7, "alias")], None),
    # 2 matter address: the id itself and m-<id>, case-insensitive pattern; unknown id → unfiled
    (f"1234@{CA}", {}, [("1234", None, "matter-address")], None),
    (f"M-5678@{CA}", {}, [("5678", None, "matter-address")], None),
    (f"42@{CA}", {}, [("42", None, "matter-address")], None),  # closed matters still file
    (f"9999@{CA}", {}, [], "unknown matter 9999"),
    (f"m-9999@{CA}", {"subject": "[M-1234]"}, [], "unknown matter 9999"),  # the subject does not rescue it
    # 3 plus-addressing: person via a sending-domain address or a catch-all alias
    (f"alice+1234@{CA}", {}, [("1234", 3, "plus-address")], None),
    (f"carol+m-5678@{CA}", {}, [("5678", 8, "plus-address")], None),
    (f"alice+9999@{CA}", {}, [], "unknown matter 9999"),
    (f"nobody+1234@{CA}", {}, [("1234", None, "plus-address")], None),
    (f"alice+notes@{CA}", {}, [(None, 3, "plus-address")], None),
    (f"nobody+notes@{CA}", {}, [], "no rule matched"),
    # 4 subject references (every default pattern); unknown ids ignored, first known used
    (f"x@{CA}", {"subject": "Re: update [M-1234]"}, [("1234", None, "subject")], None),
    (f"x@{CA}", {"subject": "matter 5678 papers"}, [("5678", None, "subject")], None),
    (f"x@{CA}", {"subject": "ticket id=abc:1234 closed"}, [("1234", None, "subject")], None),
    (f"x@{CA}", {"subject": "[M-777] and [M-5678]"}, [("5678", None, "subject")], None),
    (f"x@{CA}", {"subject": "[M-777]"}, [], "no rule matched"),
    # 5 sender → person (header From, then envelope), case-insensitive
    (f"x@{CA}", {"from_addresses": ("Client@Example.TEST",)}, [(None, 5, "sender")], None),
    (f"x@{CA}", {"envelope_from": "client@example.test"}, [(None, 5, "sender")], None),
    (f"x@{CA}", {"from_addresses": ("stranger@example.test",)}, [], "no rule matched"),
    # precedence: alias before matter address; address matter + sender person; subject only without a matter
    (f"1234@{CA}", {"subject": "[M-5678]", "from_addresses": ("client@example.test",)},
     [("1234", None, "matter-address"), (None, 5, "sender")], None),
    (f"bob@{CA}", {"subject": "[M-5678]", "from_addresses": ("client@example.test",)},
     [(None, 7, "alias"), ("5678", None, "subject")], None),
    (f"alice+1234@{CA}", {"from_addresses": ("client@example.test",)}, [("1234", 3, "plus-address")], None),
    # no recipient (an import with no catch-all header): subject and sender still apply
    (None, {"subject": "Matter 1234", "from_addresses": ("client@example.test",)},
     [("1234", None, "subject"), (None, 5, "sender")], None),
    # thread: a reference to a message filed to a matter, when the address gave no matter
    (f"x@{CA}", {"references": (("orig.1@lawfirm.test", "In-Reply-To"),)}, [("1234", None, "thread")], None),
    (f"x@{CA}", {"references": (("nothing@else.test", "In-Reply-To"), ("orig.2@lawfirm.test", "References"))},
     [("5678", None, "thread")], None),
    (f"x@{CA}", {"references": (("orig.1@lawfirm.test", "In-Reply-To"),), "subject": "[M-5678]",
                 "from_addresses": ("client@example.test",)},
     [("1234", None, "thread"), (None, 5, "sender")], None),  # thread before subject
    (f"1234@{CA}", {"references": (("orig.2@lawfirm.test", "In-Reply-To"),)},
     [("1234", None, "matter-address")], None),  # the address wins
    (f"bob@{CA}", {"references": (("orig.2@lawfirm.test", "In-Reply-To"),)},
     [(None, 7, "alias"), ("5678", None, "thread")], None),  # a person alias gives no matter: thread does
    (f"x@{CA}", {"references": (("both@lawfirm.test", "In-Reply-To"),)},
     [("1234", None, "thread"), ("5678", None, "thread")], None),  # a reply to a message filed to two matters
    (f"x@{CA}", {"references": (("two-copies@lawfirm.test", "References"),)},
     [("42", None, "thread")], None),  # two stored copies: the most recently stored one
    (f"x@{CA}", {"references": (("gone@lawfirm.test", "In-Reply-To"),)}, [], "no rule matched"),
    (f"x@{CA}", {"references": (("orig.1@lawfirm.test", "In-Reply-To"),), "sha256": "sha10"},
     [], "no rule matched"),  # never its own thread (a redelivery, route explain of a stored file)
    (f"9999@{CA}", {"references": (("orig.1@lawfirm.test", "In-Reply-To"),)}, [], "unknown matter 9999"),
    # thread-subject: off by default
    (f"x@{CA}", {"subject_key": "contract draft"}, [], "no rule matched"),
]


@pytest.mark.parametrize("recipient,ctx,expected,reason", TABLE)
def test_rule_table(recipient, ctx, expected, reason):
    res = run(recipient, **ctx)
    assert filed(res) == expected, res.trace
    assert res.unfiled_reason == reason
    assert all(f.recipient == (recipient or "").lower() for f in res.filings)
    # every rule is recorded for the address, in order (the subject rule may say several things)
    rules = list(dict.fromkeys(line.split(": ")[1] for line in res.trace))
    assert rules == ["alias", "matter-address", "plus-address", "thread", "subject", "thread-subject", "sender",
                     "correspondent"]


def test_first_address_rule_decides_and_later_ones_are_not_tried():
    res = run(f"smith@{CA}")
    assert any("matter-address: not tried" in t for t in res.trace)
    assert any("plus-address: not tried" in t for t in res.trace)


def test_shared_sender_address_is_deterministic_and_recorded():
    res = run(f"x@{CA}", from_addresses=("shared@example.test",))
    assert filed(res) == [(None, 9, "sender")]
    assert "ambiguous" in res.filings[0].detail and "9, 11" in res.filings[0].detail
    assert res.warnings and "ambiguous" in res.warnings[0]
    assert any("ambiguous" in t for t in res.trace)


def test_system_mail_is_filed_and_flagged():
    res = run(f"1234@{CA}", loop=("bounce", "multipart/report"))
    assert res.system and "multipart/report" in res.system_reason
    assert filed(res) == [("1234", None, "matter-address")]
    unfiled = run(f"x@{CA}", loop=("auto", "Auto-Submitted: auto-replied"))
    assert unfiled.system and unfiled.unfiled_reason == "no rule matched"


def capture(correspondents, rules=RULES, **kw):
    return run(f"capture+0123456789ab.0123456789abcdef@{CA}", rules, capture=True,
               correspondents=tuple(correspondents), **kw)


def test_capture_copy_files_each_known_external_correspondent_including_bcc():
    res = capture([("alice@lawfirm.test", "From"), ("client@example.test", "To"), ("stranger@other.test", "Cc"),
                   ("partner@lawfirm.test", "Cc"), ("bcc-client@example.test", "envelope, Bcc"),
                   ("Client@example.test", "envelope")])
    assert filed(res) == [(None, 5, "correspondent"), (None, 6, "correspondent")]
    assert "Bcc" in res.filings[1].detail
    # the firm's own people are never filed as correspondents, even when they are persons
    assert any("partner@lawfirm.test (Cc): the firm's own domain" in t for t in res.trace)
    assert not res.personal and res.unfiled_reason is None
    # address rules and the sender rule do not apply to capture copies
    assert any("alias: not applicable: capture copy" in t for t in res.trace)
    assert any("sender: not applicable" in t for t in res.trace)


def test_capture_copy_subject_reference_files_the_matter():
    res = capture([("stranger@other.test", "To")], subject="Re: [M-1234] draft")
    assert filed(res) == [("1234", None, "subject")] and not res.personal


def test_capture_copy_without_known_correspondent_is_personal_or_unfiled():
    res = capture([("alice@lawfirm.test", "From"), ("friend@other.test", "To")])
    assert res.filings == [] and res.personal and res.unfiled_reason is None
    strict = RouterRules(catchall_domains=(CA,), sending_domains=("lawfirm.test",), file_personal=True)
    res = capture([("friend@other.test", "To")], rules=strict)
    assert res.personal and res.unfiled_reason == "no known correspondent"


def test_most_recent_reference_wins_and_the_others_are_traced():
    refs = (("orig.2@lawfirm.test", "In-Reply-To"), ("unknown@x.test", "References"),
            ("orig.1@lawfirm.test", "References"))
    res = run(f"x@{CA}", references=refs)
    assert filed(res) == [("5678", None, "thread")]
    assert res.filings[0].detail == "In-Reply-To <orig.2@lawfirm.test> (message 20)"
    thread = [t.split(": ", 2)[2] for t in res.trace if t.split(": ")[1] == "thread"]
    assert thread == ["In-Reply-To <orig.2@lawfirm.test> → message 20, filed to matter 5678",
                      "References <orig.1@lawfirm.test> → message 10, filed to matter 1234: "
                      "not used (a more recent reference matched)"]
    # the subject names another matter: not used, the thread decided
    res = run(f"x@{CA}", references=refs, subject="[M-1234]")
    assert filed(res) == [("5678", None, "thread")]
    assert any("subject: [M-1234]" in t and "not used (matter 5678 from the thread)" in t for t in res.trace)
    # no reference names a filed message
    res = run(f"x@{CA}", references=(("unknown@x.test", "In-Reply-To"),))
    assert any(t.endswith("thread: 1 reference(s), none names a message filed to a matter") for t in res.trace)


def test_closed_matter_still_files_by_thread():
    lookups = FakeLookups()
    lookups.threads[("msgid", "old@lawfirm.test")] = [("42", 5, "sha5")]
    res = apply_rules(RuleContext(f"x@{CA}", references=(("old@lawfirm.test", "In-Reply-To"),)), lookups, RULES)
    assert filed(res) == [("42", None, "thread")]
    assert any("(42 closed)" in t for t in res.trace)


def test_capture_copy_files_by_thread():
    res = capture([("stranger@other.test", "To")], references=(("orig.1@lawfirm.test", "In-Reply-To"),))
    assert filed(res) == [("1234", None, "thread")] and not res.personal


def test_thread_subject_is_a_fallback_when_enabled():
    on = RouterRules(catchall_domains=(CA,), sending_domains=("lawfirm.test",), thread_subject=True)
    res = run(f"x@{CA}", on, subject_key="contract draft")
    assert filed(res) == [("5678", None, "thread-subject")]
    assert any("thread-subject: subject 'contract draft' → message 60, filed to matter 5678" in t for t in res.trace)
    # an earlier rule's matter wins: subject tag, thread reference, address
    assert filed(run(f"x@{CA}", on, subject_key="contract draft", subject="[M-1234]")) == [("1234", None, "subject")]
    assert filed(run(f"x@{CA}", on, subject_key="contract draft",
                     references=(("orig.1@lawfirm.test", "In-Reply-To"),))) == [("1234", None, "thread")]
    assert filed(run(f"1234@{CA}", on, subject_key="contract draft")) == [("1234", None, "matter-address")]
    assert filed(run(f"x@{CA}", on, subject_key="other")) == []
    assert filed(run(f"x@{CA}", on, subject_key="contract draft", sha256="sha60")) == []
    off = run(f"x@{CA}", subject_key="contract draft")
    assert any("thread-subject: off (router.thread_subject = false)" in t for t in off.trace)
    cfg = from_dict({"general": {"catchall_domains": [CA]}, "router": {"thread_subject": True}})
    assert RouterRules.from_config(cfg).thread_subject is True


def test_configured_patterns_from_config():
    cfg = from_dict({"general": {"catchall_domains": [CA], "sending_domains": ["lawfirm.test"]},
                     "router": {"matter_patterns": [r"^case-([A-Z]+-\d+)$"], "subject_patterns": [r"#([A-Z]+-\d+)"]}})
    rules = RouterRules.from_config(cfg)
    assert filed(run(f"case-ABC-9@{CA}", rules)) == [("ABC-9", None, "matter-address")]
    assert filed(run(f"1234@{CA}", rules)) == []  # the default patterns are replaced
    assert filed(run(f"x@{CA}", rules, subject="see #ABC-9")) == [("ABC-9", None, "subject")]
    assert rules.matter_patterns[0].flags & re.IGNORECASE


def test_merge_files_when_any_address_filed():
    a, b = run(f"1234@{CA}"), run(f"9999@{CA}")
    m = merge([a, b])
    assert filed(m) == [("1234", None, "matter-address")] and m.unfiled_reason is None
    m = merge([run(f"9999@{CA}"), run(f"nobody@{CA}")])
    assert m.unfiled_reason == "unknown matter 9999; no rule matched"
    assert any(t.startswith(f"9999@{CA}:") for t in m.trace) and any(t.startswith(f"nobody@{CA}:") for t in m.trace)


def test_decision_is_a_value():
    assert FilingDecision("1", None, "alias", "a@b") == FilingDecision("1", None, "alias", "a@b")


@pytest.mark.parametrize("key,value,message", [
    ("matter_patterns", [r"(\d+)-(\d+)"], "router.matter_patterns.*exactly one group"),
    ("subject_patterns", [r"[M-(\d+)"], "router.subject_patterns.*not a regular expression"),
    ("catchall_headers", ["Delivered To"], "router.catchall_headers"),
    ("failed_mail_address", "nobody", "router.failed_mail_address"),
    ("file_personal", "yes", "router.file_personal"),
    ("thread_subject", "yes", "router.thread_subject"),
    ("thread_subject", 1, "router.thread_subject"),
])
def test_router_config_is_validated_naming_the_key(key, value, message):
    from mattermail.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        from_dict({"router": {key: value}})
