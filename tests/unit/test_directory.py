import pytest

from mattermail.router import directory as d
from mattermail.router.store import Store, UserError

CATCHALL = ["matters.lawfirm.test"]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s.sqlite", tmp_path / "m")
    yield s
    s.close()


def test_persons_matters_aliases(store):
    client = d.add_person(store, "Client@Example.test", "A Client", ["c.other@example.test"])
    assert client.email == "client@example.test" and client.addresses[1] == "c.other@example.test"
    with pytest.raises(UserError, match="email: .*already exists"):
        d.add_person(store, "client@example.test")
    m = d.add_matter(store, "1234", "Smith v Jones", ["client@example.test"])
    assert m.persons == ("client@example.test",) and m.status == "open"
    with pytest.raises(UserError, match="--person"):
        d.add_matter(store, "9", "X", ["ghost@example.test"])
    with pytest.raises(UserError, match="id: matter 1234 already exists"):
        d.add_matter(store, "1234", "Again")
    assert d.set_matter_status(store, "1234", "closed").status == "closed"

    a = d.add_alias(store, "smith@matters.lawfirm.test", CATCHALL, matter="1234")
    assert d.get_alias(store, "SMITH@matters.lawfirm.test") == a
    with pytest.raises(UserError, match="not in a catch-all domain"):
        d.add_alias(store, "x@lawfirm.test", CATCHALL, person="client@example.test")
    with pytest.raises(UserError, match="already exists"):
        d.add_alias(store, "smith@matters.lawfirm.test", CATCHALL, person="client@example.test")
    with pytest.raises(UserError, match="exactly one"):
        d.add_alias(store, "y@matters.lawfirm.test", CATCHALL)
    with pytest.raises(UserError, match="still has aliases"):
        d.add_alias(store, "c@matters.lawfirm.test", CATCHALL, person="client@example.test")
        d.remove_person(store, "client@example.test")


def test_shared_address_is_deterministic(store):
    first = d.add_person(store, "shared@example.test", "First")
    second = d.add_person(store, "second@example.test", "Second", ["shared@example.test"])
    assert [p.id for p in d.persons_for_address(store, "Shared@example.test")] == [first.id, second.id]


def test_filing_is_recorded_once(store):
    msg = store.deliver(b"Subject: x\r\n\r\nbody\r\n", "a@b.test", ["1@matters.lawfirm.test"])
    d.add_matter(store, "1", "One")
    f = d.Filing(msg.id, "1", None, "matter-address", "1@matters.lawfirm.test")
    with d.transaction(store):
        assert d.record_filing(store, f)
        assert not d.record_filing(store, f)
    assert d.filings_for(store, msg.id) == [f]
