"""mattermailctl person / matter / alias: success and bad-input paths, CSV import/export."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mattermail.ctl import aliases, matters, persons  # noqa: F401  (register their groups on cli)
from mattermail.ctl.base import cli
from mattermail.store import directory as d
from mattermail.store import Store, UserError, insert_message

CATCHALL = '[general]\ncatchall_domains = ["matters.lawfirm.test"]'


def _invoker(cfg: Path):
    def invoke(*args, input=None):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args], input=input)

    return invoke


@pytest.fixture
def run(write_config, store_location):
    return _invoker(write_config(CATCHALL, store=store_location))


@pytest.fixture
def store(run, store_location, tmp_path):
    def open_store():
        return Store(store_location, tmp_path / "messages")

    return open_store


def ok(r):
    assert r.exit_code == 0, r.output
    return r.output


def user_error(r, *needles):
    """Exit 1 with one line naming the field (and whatever else is asked for)."""
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    for n in needles:
        assert n in r.output, r.output
    return r.output


def persons_in(store):
    s = store()
    try:
        return [(p.email, p.name, p.addresses) for p in d.list_persons(s)]
    finally:
        s.close()


# -- person ------------------------------------------------------------------------------------------


def test_person_add_list_show_edit_remove(run):
    out = ok(run("person", "add", "Jane@Client.example", "--name", "Jane Client", "--email", "j@home.example"))
    assert "added person jane@client.example" in out
    listed = json.loads(ok(run("person", "list", "--json")))
    assert listed == [{"email": "jane@client.example", "name": "Jane Client",
                       "addresses": ["jane@client.example", "j@home.example"]}]
    assert "jane@client.example\tJane Client\tj@home.example" in ok(run("person", "list"))

    ok(run("matter", "add", "1234", "--title", "Smith v Jones", "--person", "jane@client.example"))
    ok(run("alias", "add", "jane@matters.lawfirm.test", "--person", "jane@client.example"))
    shown = json.loads(ok(run("person", "show", "j@home.example", "--json")))  # any address finds the person
    assert shown["email"] == "jane@client.example"
    assert shown["matters"] == [{"id": "1234", "title": "Smith v Jones", "status": "open"}]
    assert shown["aliases"] == ["jane@matters.lawfirm.test"]
    text = ok(run("person", "show", "jane@client.example"))
    assert "1234 (Smith v Jones, open)" in text and "jane@matters.lawfirm.test" in text

    out = ok(run("person", "edit", "jane@client.example", "--name", "Jane Q. Client",
                 "--add-email", "jane@newjob.example", "--remove-email", "j@home.example"))
    assert "jane@newjob.example" in out
    shown = json.loads(ok(run("person", "show", "jane@client.example", "--json")))
    assert shown["name"] == "Jane Q. Client"
    assert shown["addresses"] == ["jane@client.example", "jane@newjob.example"]

    user_error(run("person", "remove", "jane@client.example"), "email", "still has aliases")
    ok(run("alias", "remove", "jane@matters.lawfirm.test"))
    assert "removed person jane@client.example" in ok(run("person", "remove", "jane@client.example"))
    assert "no persons" in ok(run("person", "list"))
    assert json.loads(ok(run("matter", "show", "1234", "--json")))["persons"] == []


@pytest.mark.parametrize(
    "args, needles",
    [
        (["person", "add", "bob@"], ["email", "'bob@' is not an email address"]),
        (["person", "add", "bob@x.test", "--email", "not an address"], ["--email"]),
        (["person", "show", "ghost@x.test"], ["email", "no person with address ghost@x.test"]),
        (["person", "edit", "ghost@x.test", "--name", "G"], ["email", "no person"]),
        (["person", "remove", "ghost@x.test"], ["email", "no person"]),
        (["person", "edit", "jane@client.example", "--add-email", "nope"], ["--add-email"]),
        (["person", "edit", "jane@client.example", "--remove-email", "other@x.test"], ["--remove-email", "not an address of"]),
        (["person", "edit", "jane@client.example", "--remove-email", "jane@client.example"], ["--remove-email", "primary"]),
        (["person", "add", "JANE@client.example"], ["email", "already exists"]),
        (["person", "import", "/nonexistent/people.csv"], ["CSV", "cannot read"]),
    ],
)
def test_person_bad_input_exits_1_naming_the_field(run, args, needles):
    ok(run("person", "add", "jane@client.example"))
    user_error(run(*args), *needles)


def test_person_usage_errors_exit_2(run):
    assert run("person", "add").exit_code == 2
    ok(run("person", "add", "jane@client.example"))
    r = run("person", "edit", "jane@client.example")
    assert r.exit_code == 2 and "nothing to change" in r.output


def test_every_command_has_an_example_in_its_help(run):
    for group in ("person", "matter", "alias"):
        commands = cli.commands[group].commands
        assert commands
        for name in commands:
            r = run(group, name, "--help")
            assert r.exit_code == 0 and "Example:" in r.output, (group, name)


# -- person import / export ---------------------------------------------------------------------------


def test_person_import_and_export(run, tmp_path, store):
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "\ufeffemail,name,other_emails\n"  # a spreadsheet's BOM
        "jane@client.example,Jane Client,j@home.example; jane@work.example\n"
        "\n"
        '"bob@client.example","Bob, Jr.",\n'
        "carol@client.example\n", encoding="utf-8")
    assert "imported 3 persons from people.csv" in ok(run("person", "import", str(csv_file)))
    assert persons_in(store) == [
        ("jane@client.example", "Jane Client", ("jane@client.example", "j@home.example", "jane@work.example")),
        ("bob@client.example", "Bob, Jr.", ("bob@client.example",)),
        ("carol@client.example", "", ("carol@client.example",)),
    ]
    exported = ok(run("person", "export", "-"))
    assert exported.splitlines() == [
        "email,name,other_emails",
        "jane@client.example,Jane Client,j@home.example jane@work.example",
        'bob@client.example,"Bob, Jr.",',
        "carol@client.example,,",
    ]


def test_person_import_from_stdin(run, store):
    out = ok(run("person", "import", "-", input="name,email\nDee,dee@client.example\n"))
    assert "imported 1 person from stdin" in out
    assert persons_in(store) == [("dee@client.example", "Dee", ("dee@client.example",))]


def test_person_export_import_round_trip_into_a_fresh_store(run, tmp_path):
    ok(run("person", "add", "jane@client.example", "--name", "Jane Client", "--email", "j@home.example",
           "--email", "jane@work.example"))
    ok(run("person", "add", "bob@client.example", "--name", 'Bob "the Builder", Jr.'))
    ok(run("person", "add", "carol@client.example"))
    exported = tmp_path / "export.csv"
    assert "exported 3 persons" in ok(run("person", "export", str(exported)))

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg = fresh / "mattermail.toml"
    cfg.write_text(f'[store]\npath = "{fresh}/store.sqlite"\nmessages_dir = "{fresh}/messages"\n', encoding="utf-8")
    run_fresh = _invoker(cfg)
    assert "no persons" in ok(run_fresh("person", "list"))
    ok(run_fresh("person", "import", str(exported)))
    assert json.loads(ok(run_fresh("person", "list", "--json"))) == json.loads(ok(run("person", "list", "--json")))
    # and exporting again gives the very same file
    assert ok(run_fresh("person", "export", "-")) == exported.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "content, needles",
    [
        # a bad address on line 7 (line 4 is blank, lines count from the header)
        ("email,name,other_emails\na@x.test,A,\nb@x.test,B,\n\nc@x.test,C,\nd@x.test,D,\nbob@,Bob,\n",
         ["people.csv line 7, column email: 'bob@' is not an email address"]),
        ("email,name,other_emails\na@x.test,A,\nb@x.test,B,good@x.test;bad@@\n",
         ["people.csv line 3, column other_emails:", "'bad@@'"]),
        ("email,name,other_emails\na@x.test,A,\n,Nobody,\n", ["people.csv line 3, column email: empty"]),
        ("name,other_emails\nA,a@x.test\n", ["people.csv line 1, column email: missing from the header"]),
        ("email,name,other_emails\na@x.test,A,\nA@X.test,Again,\n",
         ["people.csv line 3, column email: a@x.test already appears on line 2"]),
        ("email,name,other_emails\nnew@x.test,New,\nexisting@x.test,Dup,\n",
         ["people.csv line 3, column email: a person with primary address existing@x.test already exists"]),
        ("email,nmae\na@x.test,A\n", ["people.csv line 1, column 2: unknown column 'nmae'"]),
        ("a@x.test,A,\n", ["people.csv line 1, column 1: unknown column 'a@x.test'", "header"]),
        ("email,name\na@x.test,A,extra\n", ["people.csv line 2, column 3: extra field 'extra'"]),
        ('email,name\na@x.test,"unterminated\n', ["people.csv line", "malformed CSV"]),
        ("", ["people.csv is empty"]),
        # every problem is found before anything is written; the first one is shown, the rest counted
        ("email,name\nbad1,A\nok@x.test,B\nbad2,C\nbad3,D\n",
         ["people.csv line 2, column email: 'bad1'", "(and 2 more problems)"]),
    ],
)
def test_person_import_bad_line_names_line_and_column_and_imports_nothing(run, tmp_path, store, content, needles):
    ok(run("person", "add", "existing@x.test"))
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(content, encoding="utf-8")
    user_error(run("person", "import", str(csv_file)), *needles)
    assert persons_in(store) == [("existing@x.test", "", ("existing@x.test",))]


def test_person_import_not_utf8(run, tmp_path, store):
    csv_file = tmp_path / "people.csv"
    csv_file.write_bytes(b"email,name\nj@x.test,J\xe9r\xf4me\n")
    user_error(run("person", "import", str(csv_file)), "people.csv is not UTF-8")
    assert persons_in(store) == []


def test_import_persons_is_all_or_nothing(store):
    """A clash found inside the transaction (a person added meanwhile) rolls back the rows before it."""
    s = store()
    try:
        d.add_person(s, "late@x.test")
        with pytest.raises(UserError, match="late@x.test already exists"):
            d.import_persons(s, [("first@x.test", "First", ["f@home.test"]), ("late@x.test", "Late", [])])
        assert [p.email for p in d.list_persons(s)] == ["late@x.test"]
        assert d.person_by_email(s, "f@home.test") is None
    finally:
        s.close()


# -- matter ---------------------------------------------------------------------------------------


def test_matter_add_list_show_close_reopen(run, store):
    ok(run("person", "add", "jane@client.example"))
    ok(run("person", "add", "bob@client.example"))
    out = ok(run("matter", "add", "1234", "--title", "Smith v Jones", "--person", "jane@client.example",
                 "--person", "BOB@client.example"))
    assert "added matter 1234 (Smith v Jones)" in out
    ok(run("matter", "add", "5678", "--title", "Estate of Doe"))
    ok(run("alias", "add", "smith@matters.lawfirm.test", "--matter", "1234"))

    s = store()
    try:
        raw = b"Subject: x\r\n\r\nbody\r\n"
        sha, _ = s.write_blob(raw)
        with d.transaction(s):
            mid, _ = insert_message(s, raw, sha)
            d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", "1234@matters.lawfirm.test"))
    finally:
        s.close()

    shown = json.loads(ok(run("matter", "show", "1234", "--json")))
    assert shown == {"id": "1234", "title": "Smith v Jones", "status": "open",
                     "persons": ["bob@client.example", "jane@client.example"],
                     "aliases": ["smith@matters.lawfirm.test"], "filed_messages": 1}
    text = ok(run("matter", "show", "1234"))
    assert "Smith v Jones" in text and "smith@matters.lawfirm.test" in text and "1 message" in text

    assert "closed matter 1234" in ok(run("matter", "close", "1234"))
    assert "already closed" in ok(run("matter", "close", "1234"))
    assert [m["id"] for m in json.loads(ok(run("matter", "list", "--json", "--status", "open")))] == ["5678"]
    assert [m["id"] for m in json.loads(ok(run("matter", "list", "--json", "--status", "closed")))] == ["1234"]
    listed = json.loads(ok(run("matter", "list", "--json")))
    assert [(m["id"], m["status"]) for m in listed] == [("1234", "closed"), ("5678", "open")]
    assert "1234\tclosed\tSmith v Jones" in ok(run("matter", "list"))
    assert "reopened matter 1234" in ok(run("matter", "reopen", "1234"))
    assert "no closed matters" in ok(run("matter", "list", "--status", "closed"))


@pytest.mark.parametrize(
    "args, needles",
    [
        (["matter", "add", "9", "--title", "X", "--person", "ghost@x.test"], ["--person", "no person with address"]),
        (["matter", "add", "9", "--title", "X", "--person", "ghost@"], ["--person", "not an email address"]),
        (["matter", "add", "1234", "--title", "Again"], ["id", "already exists"]),
        (["matter", "add", "a b", "--title", "X"], ["id", "not a valid matter id"]),
        (["matter", "add", "9", "--title", "  "], ["--title"]),
        (["matter", "show", "404"], ["id", "no matter 404"]),
        (["matter", "close", "404"], ["id", "no matter 404"]),
        (["matter", "reopen", "404"], ["id", "no matter 404"]),
    ],
)
def test_matter_bad_input_exits_1_naming_the_field(run, args, needles):
    ok(run("matter", "add", "1234", "--title", "Smith v Jones"))
    user_error(run(*args), *needles)


def test_matter_usage_errors_exit_2(run):
    assert run("matter", "add", "1234").exit_code == 2  # --title is required
    assert run("matter", "list", "--status", "pending").exit_code == 2


def test_matter_import(run, tmp_path):
    ok(run("person", "add", "jane@client.example"))
    ok(run("person", "add", "bob@client.example"))
    csv_file = tmp_path / "matters.csv"
    csv_file.write_text("id,title,persons\n1234,Smith v Jones,jane@client.example;bob@client.example\n"
                        '5678,"Doe, Estate of",\n', encoding="utf-8")
    assert "imported 2 matters from matters.csv" in ok(run("matter", "import", str(csv_file)))
    listed = json.loads(ok(run("matter", "list", "--json")))
    assert listed == [
        {"id": "1234", "title": "Smith v Jones", "status": "open",
         "persons": ["bob@client.example", "jane@client.example"]},
        {"id": "5678", "title": "Doe, Estate of", "status": "open", "persons": []},
    ]


@pytest.mark.parametrize(
    "content, needles",
    [
        ("id,title,persons\n1,One,\n2,Two,ghost@x.test\n", ["matters.csv line 3, column persons: no person with address ghost@x.test"]),
        ("id,title,persons\n1,One,\n2,Two,jane@\n", ["matters.csv line 3, column persons: 'jane@' is not an email address"]),
        ("id,title,persons\n1,One,\n1,Again,\n", ["matters.csv line 3, column id: 1 already appears on line 2"]),
        ("id,title,persons\n1,One,\nold,Two,\n", ["matters.csv line 3, column id: matter old already exists"]),
        ("id,title,persons\n1,One,\nx y,Two,\n", ["matters.csv line 3, column id:", "not a valid matter id"]),
        ("id,title,persons\n1,One,\n2,,\n", ["matters.csv line 3, column title: empty"]),
        ("id,title,persons\n1,One,\n,Two,\n", ["matters.csv line 3, column id: empty"]),
        ("id,persons\n1,\n", ["matters.csv line 1, column title: missing from the header"]),
    ],
)
def test_matter_import_bad_line_imports_nothing(run, tmp_path, store, content, needles):
    ok(run("person", "add", "jane@client.example"))
    ok(run("matter", "add", "old", "--title", "Old"))
    csv_file = tmp_path / "matters.csv"
    csv_file.write_text(content, encoding="utf-8")
    user_error(run("matter", "import", str(csv_file)), *needles)
    s = store()
    try:
        assert [m.id for m in d.list_matters(s)] == ["old"]
    finally:
        s.close()


# -- alias -------------------------------------------------------------------------------------------


def test_alias_add_list_remove(run):
    ok(run("person", "add", "jane@client.example"))
    ok(run("matter", "add", "1234", "--title", "Smith v Jones"))
    assert "added alias smith@matters.lawfirm.test for matter 1234" in ok(
        run("alias", "add", "Smith@Matters.Lawfirm.test", "--matter", "1234"))
    assert "for person jane@client.example" in ok(
        run("alias", "add", "jane@matters.lawfirm.test", "--person", "jane@client.example"))
    assert json.loads(ok(run("alias", "list", "--json"))) == [
        {"address": "jane@matters.lawfirm.test", "person": "jane@client.example", "matter": None},
        {"address": "smith@matters.lawfirm.test", "person": None, "matter": "1234"},
    ]
    assert "smith@matters.lawfirm.test\tmatter 1234" in ok(run("alias", "list"))
    assert "removed alias smith@matters.lawfirm.test" in ok(run("alias", "remove", "smith@matters.lawfirm.test"))
    assert [a["address"] for a in json.loads(ok(run("alias", "list", "--json")))] == ["jane@matters.lawfirm.test"]
    ok(run("alias", "remove", "jane@matters.lawfirm.test"))
    assert "no aliases" in ok(run("alias", "list"))


@pytest.mark.parametrize(
    "args, needles",
    [
        (["alias", "add", "smith@matters.lawfirm.test", "--person", "jane@client.example"], ["address", "already exists"]),
        (["alias", "add", "x@lawfirm.test", "--matter", "1234"], ["address", "not in a catch-all domain",
                                                                   "matters.lawfirm.test"]),
        (["alias", "add", "x@matters.lawfirm.test", "--person", "ghost@x.test"], ["--person", "no person"]),
        (["alias", "add", "x@matters.lawfirm.test", "--person", "ghost"], ["--person", "not an email address"]),
        (["alias", "add", "x@matters.lawfirm.test", "--matter", "404"], ["--matter", "no matter 404"]),
        (["alias", "add", "not an address", "--matter", "1234"], ["address", "not an email address"]),
        (["alias", "remove", "ghost@matters.lawfirm.test"], ["address", "no alias"]),
    ],
)
def test_alias_bad_input_exits_1_naming_the_field(run, args, needles):
    ok(run("person", "add", "jane@client.example"))
    ok(run("matter", "add", "1234", "--title", "Smith v Jones"))
    ok(run("alias", "add", "smith@matters.lawfirm.test", "--matter", "1234"))
    user_error(run(*args), *needles)


def test_alias_needs_exactly_one_target(run):
    ok(run("person", "add", "jane@client.example"))
    ok(run("matter", "add", "1234", "--title", "Smith v Jones"))
    for extra in ([], ["--person", "jane@client.example", "--matter", "1234"]):
        r = run("alias", "add", "x@matters.lawfirm.test", *extra)
        assert r.exit_code == 2 and "exactly one of --person or --matter" in r.output
    assert json.loads(ok(run("alias", "list", "--json"))) == []


def test_alias_without_catchall_domains_configured(write_config):
    run = _invoker(write_config())
    ok(run("matter", "add", "1", "--title", "One"))
    user_error(run("alias", "add", "x@matters.lawfirm.test", "--matter", "1"), "address", "none configured")
