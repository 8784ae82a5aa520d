"""The dead-letter store alone: records on disk one by one, or in a batch with one fsync."""
import os

from evbus.deadletter import DeadLetterStore


def _record(n: int) -> dict:
    return {"id": f"e{n}", "body": "{}", "record": f"r{n}"}


def test_each_record_is_synced_outside_a_batch(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    store = DeadLetterStore(str(tmp_path / "dead.jsonl"))
    for n in range(3):
        store.append(_record(n))
    assert len(synced) == 3
    assert [r["id"] for r in store.read()] == ["e0", "e1", "e2"]


def test_a_batch_writes_each_record_at_once_and_syncs_once(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store = DeadLetterStore(str(tmp_path / "dead.jsonl"))
    with store.batch():
        for n in range(1000):
            store.append(_record(n))
            if n == 499:
                # in the file already: a crash of the process now would lose none of them
                assert len(store.read()) == 500
        with store.batch():  # nested: the outer batch ends it
            store.append(_record(1000))
        assert synced == []
    assert len(synced) == 1
    assert len(store.read()) == 1001
    # after the batch, records are synced one by one again
    store.append(_record(1001))
    assert len(synced) == 2


def test_removing_records_keeps_lines_that_are_no_records(tmp_path):
    """A line the store cannot read (a torn write, a note) stays as it was when records are removed."""
    path = tmp_path / "dead.jsonl"
    store = DeadLetterStore(str(path))
    store.append(_record(1))
    with open(path, "a", encoding="utf-8") as out:
        out.write("not json\n")
        out.write('{"note": "kept by hand"}\n')
    store.append(_record(2))
    assert store.remove(lambda record: record["id"] == "e1") == 1
    assert path.read_text().splitlines()[:2] == ["not json", '{"note": "kept by hand"}']
    assert [r["id"] for r in store.read()] == ["e2"]
