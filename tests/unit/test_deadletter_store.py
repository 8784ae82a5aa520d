"""The dead-letter store alone: records on disk one by one or in a batch with one fsync, lines that hold none, other processes."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from evbus.deadletter import DeadLetterStore
from evbus.deadletter import is_record

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


def _after_a_record(tmp_path, text: str) -> tuple[pathlib.Path, DeadLetterStore]:
    """A store holding the record e1, then ``text`` written into its file by another hand."""
    path = tmp_path / "dead.jsonl"
    store = DeadLetterStore(str(path))
    store.append(_record(1))
    with open(path, "a", encoding="utf-8") as out:
        out.write(text)
    return path, store


def test_removing_records_keeps_lines_that_are_no_records(tmp_path):
    """A line the store cannot read (a torn write, a note) stays as it was when records are removed."""
    path, store = _after_a_record(tmp_path, 'not json\n{"note": "kept by hand"}\n')
    store.append(_record(2))
    assert store.remove(lambda record: record["id"] == "e1") == 1
    assert path.read_text().splitlines()[:2] == ["not json", '{"note": "kept by hand"}']
    assert [r["id"] for r in store.read()] == ["e2"]


def test_a_record_after_a_last_line_with_no_newline_gets_a_line_of_its_own(tmp_path):
    """A torn last line (a crash mid-write, an edit) stays as it is; the next record is still readable."""
    path, store = _after_a_record(tmp_path, '{"id": "torn", "bo')
    store.append(_record(2))
    with store.batch():
        store.append(_record(3))
    assert path.read_text().splitlines()[1] == '{"id": "torn", "bo'
    assert [r["id"] for r in store.read()] == ["e1", "e2", "e3"]
    assert store.unreadable() == 1


@pytest.mark.parametrize(
    "record",
    [
        {"id": "e", "body": None, "record": "r"},
        {"body": "{}", "record": "r"},
        {"id": "e", "body": "{}", "record": 5},
        {"id": 5, "body": "{}", "record": "r"},
        {"id": "e", "body": "not base64!", "body_encoding": "base64", "record": "r"},
        {"id": "e", "body": "{}", "body_encoding": "rot13", "record": "r"},
        {"id": "e", "body": "{}", "record": "r", "timestamp": "yesterday"},
        {"id": "e", "body": "{}", "record": "r", "timestamp": True},
        {"id": "e", "body": "{}", "record": "r", "routing_key": 7},
        {"id": "e", "body": "{}", "record": "r", "profile": None},
        ["a", "list"],
    ],
)
def test_a_line_that_is_no_whole_record_holds_no_dead_letter(tmp_path, record):
    path, store = _after_a_record(tmp_path, json.dumps(record) + "\n")
    assert not is_record(record)
    assert [r["id"] for r in store.read()] == ["e1"]
    assert store.unreadable() == 1
    assert store.remove(lambda r: True) == 1
    assert path.read_text() == json.dumps(record) + "\n"  # left as it was


def test_a_line_that_is_not_utf8_holds_no_dead_letter_and_stays(tmp_path):
    path = tmp_path / "dead.jsonl"
    store = DeadLetterStore(str(path))
    with open(path, "wb") as out:
        out.write(b'{"id": "\xff"}\n')
    store.append(_record(1))
    assert store.unreadable() == 1
    assert store.remove(lambda r: True) == 1
    assert path.read_bytes() == b'{"id": "\xff"}\n'


def test_a_symbolic_link_to_the_file_stays_when_records_are_removed(tmp_path):
    real = tmp_path / "real.jsonl"
    link = tmp_path / "dead.jsonl"
    link.symlink_to(real)
    store = DeadLetterStore(str(link))
    store.append(_record(1))
    store.append(_record(2))
    assert store.remove(lambda r: r["id"] == "e1") == 1
    assert link.is_symlink()
    assert [r["id"] for r in DeadLetterStore(str(real)).read()] == ["e2"]


WRITER = """
import sys
from evbus.deadletter import DeadLetterStore

store = DeadLetterStore(sys.argv[1])
print("ready", flush=True)
for n in range(int(sys.argv[2])):
    if n % 100 < 50:
        store.append({"id": f"w{n}", "body": "{}", "record": f"w{n}"})
    else:
        with store.batch():
            store.append({"id": f"w{n}", "body": "{}", "record": f"w{n}"})
"""


def test_records_another_process_appends_while_records_are_removed_are_kept_once(tmp_path):
    """An app dead-lettering while evbus replay rewrites the same file: no record is lost or doubled."""
    path = tmp_path / "dead.jsonl"
    store = DeadLetterStore(str(path))
    for n in range(200):
        store.append(_record(n))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "3000"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        removed = 0
        for n in range(200):  # one rewrite for each of the first records, while the writer appends
            removed += store.remove(lambda record, n=n: record["id"] == f"e{n}")
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
        writer.wait()
    assert removed == 200
    ids = [r["id"] for r in store.read()]
    assert ids == [f"w{n}" for n in range(3000)]
    assert store.unreadable() == 0


def test_a_record_written_by_hand_without_its_record_id_can_be_removed(tmp_path):
    path = tmp_path / "dead.jsonl"
    store = DeadLetterStore(str(path))
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"id": "a", "body": "1"}\n{"id": "b", "body": "2"}\n')
    records = store.read()
    assert [r["id"] for r in records] == ["a", "b"]
    assert records[0]["record"] != records[1]["record"]
    assert store.read() == records  # the same each time it is read
    assert store.remove(lambda r: r["record"] == records[0]["record"]) == 1
    assert path.read_text() == '{"id": "b", "body": "2"}\n'
