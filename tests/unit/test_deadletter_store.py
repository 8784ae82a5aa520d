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
