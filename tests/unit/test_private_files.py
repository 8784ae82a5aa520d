"""
Files that hold event bodies are private: the dead-letter store and the
spool (and the file a compaction writes) are 0600, in directories evbus
makes 0700, whatever the umask lets through; wider files are tightened,
existing directories left alone.
"""
import os
import stat
import subprocess
import sys

import pytest

from evbus.deadletter import DeadLetterStore
from evbus.deadletter import to_record
from evbus.exc import ConfigError
from evbus.spool import Spool
from evbus.types import Event
from tests.conftest import OLD_SCHEMA


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def umask_022():
    """The usual umask, with which files are made 0644 and directories 0755 by default."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def record(n: int) -> dict:
    destination = {"plugin": "kafka", "provider": "kafka", "acct_profile": "p", "attempts": 1, "error": "e"}
    return to_record(Event(body=str(n).encode()), **destination)


def test_dead_letters_are_private_in_the_directories_made(tmp_path):
    store = DeadLetterStore(str(tmp_path / "state" / "evbus" / "dead-letters.jsonl"))
    store.append(record(1))
    store.append(record(2))
    assert mode(store.path) == 0o600
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "evbus") == 0o700

    # A rewrite (replay removes what was delivered) replaces the file with a private one
    assert store.remove(lambda entry: entry["body"] == "1") == 1
    assert [entry["body"] for entry in store.read()] == ["2"]
    assert mode(store.path) == 0o600
    assert os.listdir(store.path.parent) == ["dead-letters.jsonl"]


def test_a_wider_dead_letter_file_is_tightened_and_its_directory_left_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "dead-letters.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    store = DeadLetterStore(str(path))
    store.append(record(1))
    assert mode(path) == 0o600
    assert mode(shared) == 0o755
    assert len(store.read()) == 1


def test_the_spool_is_private_in_the_directories_made(tmp_path, monkeypatch):
    path = tmp_path / "var" / "evbus" / "spool.db"
    spool = Spool(str(path))
    try:
        events = [Event(body=b"secret body %d" % n) for n in range(10)]
        for event in events:
            spool.add(event)
        assert mode(tmp_path / "var") == 0o700 and mode(tmp_path / "var" / "evbus") == 0o700
        assert os.listdir(path.parent) == ["spool.db"]
        assert mode(path) == 0o600

        # A compaction writes the live events to spool.db.new and renames it over the spool
        made = []
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda src, dst: made.append(mode(src)) or real_replace(src, dst))
        for event in events[:8]:
            spool.routed(event, 1)
            spool.settled(event)
        spool._compact()
        assert made == [0o600]
        assert os.listdir(path.parent) == ["spool.db"]
        assert mode(path) == 0o600
    finally:
        spool.close()


def test_a_wider_spool_is_tightened(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "spool.db"
    Spool(str(path)).close()
    os.chmod(path, 0o644)
    Spool(str(path)).close()
    assert mode(path) == 0o600
    assert mode(shared) == 0o755


def test_a_wider_sqlite_spool_left_by_a_crash_is_migrated_private(tmp_path):
    """
    A spool of the SQLite format, its -wal and -shm at 0644 (an older evbus died
    holding them): migrated to a 0600 log with its events; -wal and -shm are gone.
    """
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "spool.db"
    crash = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute(sys.argv[2])\n"
        "db.execute(\"INSERT INTO events (id, profile, content_type, timestamp, body)\"\n"
        "           \" VALUES ('e1', 'p', 't', 1, x'00')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(path), OLD_SCHEMA], check=True, timeout=30)
    left = {name: mode(shared / name) for name in ("spool.db", "spool.db-wal", "spool.db-shm")}
    assert left == dict.fromkeys(left, 0o644)

    spool = Spool(str(path))
    try:
        assert os.listdir(shared) == ["spool.db"]
        assert mode(path) == 0o600
        assert [(event.id, event.body) for event in spool.left_over()] == [("e1", b"\x00")]
        assert mode(shared) == 0o755
    finally:
        spool.close()


def test_a_spool_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="Cannot use the spool .*a-file/spool.db"):
        Spool(str(blocker / "spool.db"))


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_what_is_no_regular_file_is_refused_and_left_as_it_is(tmp_path, kind):
    """
    A FIFO or a directory at the spool's or the dead-letter file's path: a
    clear error, nothing opened that could block, and its mode unchanged
    (evbus must never make /dev/null 0600).
    """
    path = tmp_path / "not-a-file"
    if kind == "fifo":
        os.mkfifo(path, 0o666)
        expected = "it is a FIFO, not a regular file"
    else:
        path.mkdir(mode=0o755)
        expected = "it is a directory, not a regular file"
    before = mode(path)
    with pytest.raises(ConfigError, match=f"Cannot use the spool {path}: .*{expected}"):
        Spool(str(path))
    with pytest.raises(OSError, match=expected):
        DeadLetterStore(str(path)).append(record(1))
    assert mode(path) == before


async def test_a_dead_letter_file_that_is_no_regular_file_is_refused_at_start(hub, tmp_path, monkeypatch):
    path = tmp_path / "dead.fifo"
    os.mkfifo(path, 0o666)
    monkeypatch.setenv("EVBUS_DEAD_LETTER_FILE", str(path))
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    with pytest.raises(ConfigError, match=f"Cannot use the dead-letter file {path}: .*it is a FIFO"):
        await hub.evbus.init.start(contexts)
    assert mode(path) == 0o644  # (0666 less the umask): as it was made
