"""
The spool's log file: records cut short or corrupt, compaction, the SQLite
format of older evbus, the lock, and what each spool_sync mode syncs.
"""
import asyncio
import errno
import os
import stat
import subprocess
import sys
import threading

import pytest

from evbus import spool as spool_module
from evbus.exc import ConfigError
from evbus.exc import SpoolError
from evbus.spool import HEADER
from evbus.spool import Spool
from evbus.types import Event
from tests.conftest import sqlite_spool
from tests.conftest import wait_for


def events(count: int, size: int = 20) -> list[Event]:
    return [
        Event(profile=f"p{n % 3}", routing_key=None if n % 2 else "key", body=b"%d:" % n + b"\xff" * size)
        for n in range(count)
    ]


def settle(spool: Spool, settled: list[Event], batch: int = 100):
    """As the propagate hop and a lane do: route and settle a batch of events, then collect."""
    for at in range(0, len(settled), batch):
        for event in settled[at : at + batch]:
            spool.routed(event, 1)
            spool.settled(event)
        spool.collect()


def reopened(path, sync: str = "normal") -> tuple[list[Event], int]:
    """:return: What a new process finds in the spool, and the bytes it dropped"""
    spool = Spool(str(path), sync)
    try:
        return spool.left_over(), spool.dropped()
    finally:
        spool.close()


def test_events_and_their_fields_come_back_in_order(tmp_path):
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(300) + [Event(profile="ü", routing_key="ключ", body=b"", content_type="text/plain; charset=utf-8")]
    for event in stored:
        spool.add(event)
    settle(spool, stored[:100])
    spool.close()
    left, dropped = reopened(path)
    assert left == stored[100:] and dropped == 0


@pytest.mark.parametrize("cut", [1, 7, 8, 30])
def test_a_record_cut_short_is_dropped_and_the_spool_goes_on(tmp_path, cut):
    """A crash in the middle of a write: the records before it are kept, appends go on after them."""
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(10)
    for event in stored:
        spool.add(event)
    spool.close()
    whole = path.stat().st_size
    last = spool_module.encode(Event(body=b"never returned"))
    with open(path, "ab") as file:
        file.write(last[:cut])

    spool = Spool(str(path))
    assert spool.left_over() == stored
    assert spool.dropped() == cut and spool.dropped() == 0
    assert path.stat().st_size >= whole  # cut back, then reserved ahead again
    more = events(3)
    for event in more:
        spool.add(event)
    spool.close()
    assert path.stat().st_size == whole + sum(len(spool_module.encode(event)) for event in more)
    assert reopened(path) == (stored + more, 0)


def holding(path, count: int) -> tuple[Spool, list[Event]]:
    """:return: A spool at ``path``, open, and the ``count`` events stored in it"""
    spool = Spool(str(path))
    stored = events(count)
    for event in stored:
        spool.add(event)
    return spool, stored


def spooled(path, count: int) -> list[Event]:
    """:return: ``count`` events, stored in a spool at ``path`` that is closed then"""
    spool, stored = holding(path, count)
    spool.close()
    return stored


def corrupt(path, stored: list[Event], index: int):
    """Flip a byte in the payload of the record of ``stored[index]``"""
    start = HEADER.size + sum(len(spool_module.encode(event)) for event in stored[:index])
    data = bytearray(path.read_bytes())
    data[start + 12] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_last_record_ends_what_is_read(tmp_path):
    """The last record's CRC does not match (a power loss wrote part of it): reading stops there."""
    path = tmp_path / "spool"
    stored = spooled(path, 10)
    corrupt(path, stored, 9)
    left, dropped = reopened(path)
    assert left == stored[:9]
    assert dropped == len(spool_module.encode(stored[9]))


def test_a_corrupt_record_amid_good_ones_is_skipped_and_mended(tmp_path):
    """
    The fifth of ten records is corrupt (the disk's fault): its event is lost,
    the five after it are read, the open says so once, and the record is
    overwritten with one that means nothing, so the next open reads past it
    without a word.
    """
    path = tmp_path / "spool"
    stored = spooled(path, 10)
    corrupt(path, stored, 4)
    spool = Spool(str(path))
    try:
        assert spool.left_over() == stored[:4] + stored[5:]
        assert spool.skipped() == (1, len(spool_module.encode(stored[4]))) and spool.dropped() == 0
        assert spool.skipped() == (0, 0)
    finally:
        spool.close()
    spool = Spool(str(path))
    try:
        assert spool.left_over() == stored[:4] + stored[5:] and spool.skipped() == (0, 0)
    finally:
        spool.close()


def test_zeros_reserved_past_the_records_are_no_dropped_record(tmp_path):
    """A process that died leaves the space reserved ahead (zeros) in the file."""
    path = tmp_path / "spool"
    spool, stored = holding(path, 5)
    with open(path, "rb") as file:
        left_by_a_crash = file.read()
    spool.close()
    assert len(left_by_a_crash) >= spool_module.MiB
    path.write_bytes(left_by_a_crash)
    assert reopened(path) == (stored, 0)


def crashed(path) -> list[Event]:
    """:return: What a process finds in the spool file as it is now, as if the one using it was killed"""
    live, _, _, _ = spool_module.read_log(memoryview(path.read_bytes()))
    return list(live.values())


async def test_the_done_of_a_few_settled_events_is_written_soon_after(tmp_path, monkeypatch):
    """
    Fewer settled events than DONE_BATCH: their "done" is written DONE_SECONDS
    later without more events, so that a crash then re-delivers only what is
    still live, however slowly events come.
    """
    monkeypatch.setattr(spool_module, "DONE_SECONDS", 0.05)
    path = tmp_path / "spool"
    spool = Spool(str(path))
    try:
        stored = events(13)
        for event in stored:
            spool.add(event)
        settle(spool, stored[:10])
        assert crashed(path) == stored  # not at once: a batch may fill meanwhile
        await wait_for(lambda: crashed(path) == stored[10:], 5, "the done of the 10 settled in the file")
        # The next events settled get a timer of their own
        settle(spool, stored[10:])
        await wait_for(lambda: crashed(path) == [], 5, "the done of the last 3 in the file")
    finally:
        spool.close()


@pytest.mark.parametrize("zero_bytes", [spool_module.ZERO_BYTES, 0], ids=["overwritten", "cut"])
def test_the_file_is_emptied_when_nothing_is_live(tmp_path, monkeypatch, zero_bytes):
    """Its records are zeroed (or the file cut): none of them comes back, also after a crash."""
    monkeypatch.setattr(spool_module, "ZERO_BYTES", zero_bytes)
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(spool_module.DONE_BATCH * 2, size=200)
    for event in stored:
        spool.add(event)
    settle(spool, stored, batch=spool_module.DONE_BATCH)
    # The last settle found nothing live: the file holds its header only
    assert spool._log.end == HEADER.size and spool.depth() == 0
    assert crashed(path) == []
    # Records as long as the old ones, where they were: no old one follows them
    more = events(2, size=200)
    for event in more:
        spool.add(event)
    assert crashed(path) == more
    spool.close()
    assert reopened(path) == (more, 0)


def test_dead_records_are_compacted_away(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 64 * 1024)
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(3000, size=100)
    for event in stored:
        spool.add(event)
    before = spool._log.end
    settle(spool, stored[:2800])
    assert spool._generation >= 1  # rewritten
    assert spool._log.end < before / 2
    assert not (tmp_path / "spool.new").exists()
    # Events settled after the rewrite are found by their new offsets
    settle(spool, stored[2800:2900])
    spool.close()
    assert reopened(path) == (stored[2900:], 0)


def test_a_compaction_that_fails_leaves_the_spool_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 64 * 1024)
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(3000, size=100)
    for event in stored:
        spool.add(event)

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_records", full_disk)
    settle(spool, stored[:2800])
    assert spool._generation == 0 and not (tmp_path / "spool.new").exists()
    spool.add(more := Event(body=b"after"))
    spool.close()
    assert reopened(path) == (stored[2800:] + [more], 0)


def test_a_compacted_file_that_cannot_be_mapped_stops_the_spool_saying_why(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 64 * 1024)
    path = tmp_path / "spool"
    spool = Spool(str(path))
    stored = events(3000, size=100)
    for event in stored:
        spool.add(event)

    class Unmappable(spool_module.Log):
        def __init__(self, fd: int, end: int):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(spool_module, "Log", Unmappable)
    settle(spool, stored[:2800])
    with pytest.raises(SpoolError, match="compaction failed.*Cannot allocate memory"):
        spool.add(Event(body=b"after"))
    spool.close()
    spool.close()
    monkeypatch.undo()
    # The rewritten file, with the events live at the compaction (settles after it were not written)
    left, dropped = reopened(path)
    assert 200 < len(left) < 3000 and left == stored[-len(left) :] and dropped == 0


def test_a_full_disk_is_a_spool_error(tmp_path, monkeypatch):
    spool = Spool(str(tmp_path / "spool"))
    try:

        def full_disk(fd, size):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(spool_module, "reserve", full_disk)
        with pytest.raises(SpoolError, match="No space left"):
            spool.add(Event(body=b"x" * 2 * spool_module.MiB))
        assert spool.depth() == 0
    finally:
        spool.close()


def test_a_sqlite_spool_is_migrated_once(tmp_path):
    path = tmp_path / "spool.db"
    rows = [("e1", "p", None, "application/json", 1.5, b'{"n": 1}'), ("e2", "q", "rk", "t", 2.5, b"\x00\xff")]
    sqlite_spool(path, rows).close()
    spool = Spool(str(path))
    try:
        left = spool.left_over()
        assert [(e.id, e.profile, e.routing_key, e.content_type, e.timestamp, e.body) for e in left] == rows
        assert path.read_bytes()[:8] == spool_module.MAGIC
        assert sorted(os.listdir(tmp_path)) == ["spool.db"]
        settle(spool, left[:1])
    finally:
        spool.close()
    assert [event.id for event in reopened(path)[0]] == ["e2"]


def test_a_sqlite_spool_in_use_by_an_older_evbus_is_refused(tmp_path):
    path = tmp_path / "spool.db"
    db = sqlite_spool(path, [("e1", "p", None, "t", 1.0, b"x")])
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("INSERT INTO events (id, profile, content_type, timestamp, body) VALUES ('e2', 'p', 't', 1, x'00')")
    try:
        with pytest.raises(ConfigError, match="Cannot migrate the spool .*spool.db from the SQLite format"):
            Spool(str(path))
    finally:
        db.close()
    assert [event.id for event in reopened(path)[0]] == ["e1", "e2"]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"id,profile\n1,p\n", "it is no evbus spool file"),
        (spool_module.HEADER.pack(spool_module.MAGIC, 3, 0), "format version 3 is not 1 or 2"),
    ],
)
def test_a_file_that_is_no_spool_of_this_format_is_refused_untouched(tmp_path, content, message):
    """Its content and its mode: a file that is not evbus's keeps the permissions its owner gave it."""
    path = tmp_path / "spool"
    path.write_bytes(content)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=message):
        Spool(str(path))
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_spool_that_exists_with_wider_permissions_is_tightened(tmp_path):
    path = tmp_path / "spool"
    Spool(str(path)).close()
    path.chmod(0o644)
    Spool(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_one_process_per_spool(tmp_path):
    path = tmp_path / "spool"
    holder = Spool(str(path))
    try:
        with pytest.raises(ConfigError, match="another process has it open"):
            Spool(str(path))
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from evbus.spool import Spool; Spool(sys.argv[1])", str(path)],
            capture_output=True, text=True, timeout=60,
        )
        assert other.returncode == 1 and "another process has it open" in other.stderr
    finally:
        holder.close()
    Spool(str(path)).close()


def test_the_lock_moves_to_the_rewritten_file(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "COMPACT_BYTES", 64 * 1024)
    path = tmp_path / "spool"
    holder = Spool(str(path))
    try:
        stored = events(3000, size=100)
        for event in stored:
            holder.add(event)
        settle(holder, stored[:2900])
        assert holder._generation >= 1
        with pytest.raises(ConfigError, match="another process has it open"):
            Spool(str(path))
    finally:
        holder.close()


class Syncs:
    """The fdatasync calls of a test: the file's size at each; ``happened`` is set at the first."""

    def __init__(self):
        self.sizes: list[int] = []
        self.happened = threading.Event()
        # Set by a test: held in the sync until it is set
        self.release: threading.Event | None = None
        self.entered = threading.Event()


@pytest.fixture
def syncs(monkeypatch) -> Syncs:
    seen = Syncs()
    real = os.fdatasync

    def counted(fd):
        seen.sizes.append(os.fstat(fd).st_size)
        seen.entered.set()
        if seen.release is not None:
            seen.release.wait(10)
        real(fd)
        seen.happened.set()

    monkeypatch.setattr(os, "fdatasync", counted)
    return seen


def test_full_syncs_before_add_returns(tmp_path, syncs, monkeypatch):
    monkeypatch.setattr(spool_module, "DONE_BATCH", 1)
    spool = Spool(str(tmp_path / "spool"), "full")
    try:
        for event in events(20):
            before = len(syncs.sizes)
            spool.add(event)
            assert len(syncs.sizes) == before + 1
            settle(spool, [event])  # empties the file: the next record starts at the header again
    finally:
        spool.close()


async def test_full_awaited_adds_share_a_sync(tmp_path, syncs):
    spool = Spool(str(tmp_path / "spool"), "full")
    try:
        # One at a time: a sync each
        for event in events(5):
            synced = spool.add(event, awaited=True)
            before = len(syncs.sizes)
            await asyncio.wait_for(synced, 10)
            assert len(syncs.sizes) == before + 1
        # Together: fewer syncs than adds
        before = len(syncs.sizes)
        await asyncio.wait_for(asyncio.gather(*(spool.add(event, awaited=True) for event in events(50))), 10)
        assert 1 <= len(syncs.sizes) - before < 50
    finally:
        spool.close()


async def test_full_a_sync_that_outlives_an_emptying_covers_nothing_after_it(tmp_path, syncs, monkeypatch):
    """The file is emptied (all settled) while a sync runs: the next event gets a sync of its own."""
    monkeypatch.setattr(spool_module, "DONE_BATCH", 1)
    spool = Spool(str(tmp_path / "spool"), "full")
    try:
        first, second = events(2, size=2000)
        syncs.release = threading.Event()
        synced = spool.add(first, awaited=True)
        assert await asyncio.to_thread(syncs.entered.wait, 10)
        settle(spool, [first])  # emptied while the sync thread is in fdatasync
        syncs.release.set()
        await asyncio.wait_for(synced, 10)
        before = len(syncs.sizes)
        await asyncio.wait_for(spool.add(second, awaited=True), 10)
        assert len(syncs.sizes) == before + 1
    finally:
        spool.close()


def test_normal_syncs_on_its_own_and_at_flush(tmp_path, syncs, monkeypatch):
    monkeypatch.setattr(spool_module, "SYNC_SECONDS", 0.01)
    spool = Spool(str(tmp_path / "spool"))
    try:
        spool.add(Event(body=b"x"))
        assert syncs.happened.wait(10), "the sync thread did not sync"
        before = len(syncs.sizes)
        spool.add(Event(body=b"y"))
        spool.flush()
        assert len(syncs.sizes) > before
    finally:
        spool.close()


def test_normal_add_does_not_wait_for_the_disk(tmp_path, syncs):
    spool = Spool(str(tmp_path / "spool"))
    try:
        for event in events(100):
            spool.add(event)
        assert syncs.sizes == []  # the sync thread's first round is a second away
    finally:
        spool.close()


def test_off_never_syncs(tmp_path, syncs):
    spool = Spool(str(tmp_path / "spool"), "off")
    for event in events(10):
        spool.add(event)
    spool.flush()
    spool.close()
    assert syncs.sizes == []


def test_a_record_comes_back_as_its_event(tmp_path):
    """
    A record (what put queues) is stored as "add own": its id as the process's
    prefix and its number. Read back, it is the Event the lanes made of it, and
    Spool.add writes what encode_record makes.
    """
    from evbus.types import event_of
    from evbus.types import make_record

    path = tmp_path / "spool"
    spool = Spool(str(path))
    records = [
        make_record("p", routing_key, body, content_type)
        for routing_key, body, content_type in ((None, b'{"n": 1}', "application/json"), ("ключ", b"", "text/plain"))
    ]
    for record in records:
        start = spool._log.end
        spool.add(record, awaited=True)
        assert spool._log.map[start : spool._log.end] == spool_module.encode_record(record)
    spool.close()
    left, dropped = reopened(path)
    assert left == [event_of(record) for record in records] and dropped == 0
    assert [event.id for event in left] == [event_of(record).id for record in records]


def test_a_version_1_spool_is_read_and_then_says_version_2(tmp_path):
    """The spool of an evbus that wrote version 1 ("add" records only): its events come back."""
    path = tmp_path / "spool"
    stored = events(3)
    path.write_bytes(
        spool_module.HEADER.pack(spool_module.MAGIC, 1, 0) + b"".join(spool_module.encode(e) for e in stored)
    )
    spool = Spool(str(path))
    try:
        assert spool.left_over() == stored
        assert spool_module.HEADER.unpack_from(path.read_bytes()) == (spool_module.MAGIC, 2, 0)
    finally:
        spool.close()


def test_events_of_another_process_keep_their_ids(tmp_path):
    """What another process stored as "add own" comes back with that process's ids."""
    path = tmp_path / "spool"
    code = (
        "import sys; from evbus.spool import Spool; from evbus.types import make_record, event_of\n"
        "spool = Spool(sys.argv[1]); record = make_record('p', 'k', b'body', 'application/json')\n"
        "spool.add(record, awaited=True); spool.close(); print(event_of(record).id)"
    )
    ids = [
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert ids[0] != ids[1] and ids[0].split("-")[0] != ids[1].split("-")[0]
    left, dropped = reopened(path)
    assert [event.id for event in left] == ids and dropped == 0
    assert {(e.profile, e.routing_key, e.body) for e in left} == {("p", "k", b"body")}


def test_threads_adding_while_the_file_grows_lose_no_record(tmp_path):
    """
    Four threads add at once while the file grows several times (each growth
    maps the file anew and replaces the map): every record is read back, and
    each thread's in its order.
    """
    path = tmp_path / "spool"
    spool = Spool(str(path))
    per_thread = 3000
    body = b"y" * 1000  # about 3 MiB in all: the 1 MiB file grows twice at least
    start = threading.Barrier(4)

    def add(t: int):
        start.wait()
        for n in range(per_thread):
            spool.add(Event(profile=f"t{t}", routing_key=None, body=b"%d:%d:" % (t, n) + body))

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert spool._log.mapped >= 4 * spool_module.MiB
    spool.close()
    left, dropped = reopened(path)
    assert dropped == 0 and len(left) == 4 * per_thread
    for t in range(4):
        numbers = [int(e.body.split(b":")[1]) for e in left if e.profile == f"t{t}"]
        assert numbers == list(range(per_thread))


def test_trim_cuts_an_empty_spool_to_its_header_and_appends_go_on(tmp_path):
    path = tmp_path / "spool"
    spool, stored = holding(path, 300)
    spool.trim()  # events live: nothing is cut
    assert path.stat().st_size > HEADER.size
    settle(spool, stored)
    spool.trim()
    assert path.stat().st_size == HEADER.size and spool.depth() == 0
    more = events(3)
    for event in more:
        spool.add(event)
    assert crashed(path) == more  # in the file as it is, before any close
    spool.close()
    assert reopened(path) == (more, 0)


@pytest.mark.parametrize("failing", ["ftruncate", "mmap"])
def test_a_trim_that_fails_leaves_the_spool_as_it_was(tmp_path, monkeypatch, failing):
    """Neither a cut nor a map that fails leaves a map larger than the file (a store past its end is a SIGBUS)."""
    path = tmp_path / "spool"
    spool, stored = holding(path, 300)
    settle(spool, stored)
    size = path.stat().st_size

    def fail(*args):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    target = spool_module.os if failing == "ftruncate" else spool_module.mmap
    monkeypatch.setattr(target, failing, fail)
    spool.trim()
    monkeypatch.undo()
    assert path.stat().st_size == size and spool._log.mapped <= size
    more = events(300)
    for event in more:
        spool.add(event)
    spool.close()
    assert reopened(path) == (more, 0)
