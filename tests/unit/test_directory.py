import pytest

from mattermail.store import directory as d
from mattermail.store import Store, UserError, insert_message

CATCHALL = ["matters.lawfirm.test"]


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "m")
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
    raw = b"Subject: x\r\n\r\nbody\r\n"
    sha, _ = store.write_blob(raw)
    with d.transaction(store):
        mid, _ = insert_message(store, raw, sha)
    d.add_matter(store, "1", "One")
    f = d.Filing(mid, "1", None, "matter-address", "1@matters.lawfirm.test")
    with d.transaction(store):
        assert d.record_filing(store, f)
        assert not d.record_filing(store, f)
    assert d.filings_for(store, mid) == [f]


def test_a_failure_inside_a_nested_transaction_rolls_back_to_its_savepoint(store):
    """Inside an open transaction (the router's batch), transaction() is a savepoint: an error after
    some inserts undoes only those; the outer transaction's rows stay and commit."""
    store.db.begin()
    kept = d.add_person(store, "kept@example.test", "Kept")
    with pytest.raises(RuntimeError, match="after the inserts"):
        with d.transaction(store):
            d.add_matter(store, "77", "Gone")
            store.db.execute("INSERT INTO person_addresses (person, address, position) VALUES (?, ?, 9)",
                             [kept.id, "gone@example.test"])
            assert d.get_matter(store, "77") is not None  # inserted, inside the savepoint
            raise RuntimeError("after the inserts")
    assert store.in_transaction  # the outer transaction is still open
    store.db.execute("COMMIT")
    assert d.get_matter(store, "77") is None
    assert d.person_by_email(store, "kept@example.test").addresses == ("kept@example.test",)
