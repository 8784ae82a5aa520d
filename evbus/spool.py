"""
The durable spool: events written to a local append-only log before ``put``
returns, and marked done once every lane they went to has settled them
(published, or given up to the dead letters).

After a crash, ``start()`` re-delivers what the spool still holds: nothing
that ``put`` returned for is lost (at least once; an event a lane had
published before the crash, but whose "done" was not yet written, comes
again, and is counted as redelivered).

``put`` returns once its event's record is in the kernel's page cache (stored
into a shared memory map of the file, under a lock: no system call per
event): the file survives the process (a crash, SIGKILL). What a power loss
may do depends on ``spool_sync`` (see :class:`Spool`). One process uses a
spool file at a time (it holds an exclusive ``flock`` on it).

The file format (version 2; integers little-endian, text UTF-8)::

    header   8s "EVBSPOOL", u32 version (2), u32 0                   16 bytes
    record   u32 n, u32 CRC-32 of the payload, payload (n bytes)

    payload of an event ("add")
             u8 1, f64 timestamp, u32 len(id), id,
             u32 len(profile), u32 len(routing_key) (0xFFFFFFFF: None), u32 len(content_type),
             profile, routing_key, content_type,
             body (the rest of the payload)
    payload of an event of the process that wrote it ("add own")
             u8 3, f64 timestamp, 6s the process's id prefix, u64 the event's number,
             then as "add" from u32 len(profile) on
             (its id: the prefix in hex, "-", the number in hex)
    payload of "done"
             u8 2, u64 offset * k       where the "add" records of k settled events start

Version 1 is the same without "add own": a file of version 1 is read as it is,
and its header says 2 once it is opened (an evbus that reads version 1 only
then refuses it instead of cutting it at the first "add own").

Records follow the header back to back; zeros follow the last one (space
reserved ahead, trimmed at close, and the file cut to its header when the
bus stops with nothing live in it). At open they are read in order; the
events added and not done are the ones to re-deliver, oldest first. Reading
stops at the first record that is cut short, has a wrong CRC, a length of 0
or an unknown kind (a write torn by a crash or a power loss, or the zeros of
space reserved ahead): the file is cut there, and appends go on from it.
A record with a wrong CRC or kind that a good record follows (a corrupt
record amid good ones: the disk's fault, not a torn write) is skipped, and
overwritten with a "done" of nothing so that the next open reads past it.
"Done" records are written in batches (every 256 settled events and at
``flush()``): one lost in a crash only means a redelivery.

The file is compacted as it runs: emptied down to its header when none of
its events is live any more (its records overwritten with zeros; cut, when
they take more than 4 MiB), and rewritten when it holds more than 16 MiB and
dead events outnumber the live ones three to one (the live records are copied
to ``<spool>.new``, which is synced and renamed over the spool; offsets are
those of the new file). A spool in the SQLite format of evbus before this log
is migrated at open: its events are read once and written into a log that
replaces it (the ``-wal`` and ``-shm`` files beside it are removed).

The spool holds event bodies: its file is private (0600, in directories evbus
makes 0700; see :mod:`evbus.private`).
"""
import asyncio
import errno
import fcntl
import mmap
import os
import sqlite3
import struct
import threading
import weakref
import zlib
from collections.abc import Iterable

from evbus import private
from evbus.exc import ConfigError
from evbus.exc import SpoolError
from evbus.types import Event
from evbus.types import id_key
from evbus.types import RECORD_NUMBER
from evbus.types import OWN_ID_PREFIX

SYNC_MODES = ("normal", "full", "off")

MAGIC = b"EVBSPOOL"
VERSION = 2
# Versions this evbus reads (version 1 has no "add own")
READS = (1, 2)
HEADER = struct.Struct("<8sII")
HEADER_BYTES = HEADER.pack(MAGIC, VERSION, 0)
FRAME = struct.Struct("<II")
ADD = struct.Struct("<BdI")
ADD_OWN = struct.Struct("<Bd6sQ")
META = struct.Struct("<III")
ADDED, DONE, ADDED_OWN = 1, 2, 3
_ADD_OWN, _FRAME, _crc32 = ADD_OWN.pack, FRAME.pack, zlib.crc32
NO_ROUTING_KEY = 0xFFFFFFFF
SQLITE_MAGIC = b"SQLite format 3\x00"
MiB = 1 << 20

# Settled events whose "done" is written in one record
DONE_BATCH = 256
# Seconds a settled event's "done" waits for a batch to fill before it is written anyway: a crash
# re-delivers at most the events that settled in the last second, however slowly events come
DONE_SECONDS = 1.0
# spool_sync normal: seconds between syncs of what was written
SYNC_SECONDS = 1.0
# A rewrite when the file holds more than this and at most a quarter of its events are live
COMPACT_BYTES = 16 * MiB
# An emptied log up to this size is overwritten with zeros; a larger one is cut (and reserved again)
ZERO_BYTES = 4 * MiB

# (profile, routing_key, content_type) -> their lengths and bytes, as in a record
_META: dict[tuple, bytes] = {}


def _meta(key: tuple[str, str | None, str]) -> bytes:
    profile, routing_key, content_type = key
    profile_b, content_type_b = profile.encode(), content_type.encode()
    routing_key_b = b"" if routing_key is None else routing_key.encode()
    size = NO_ROUTING_KEY if routing_key is None else len(routing_key_b)
    meta = META.pack(len(profile_b), size, len(content_type_b)) + profile_b + routing_key_b + content_type_b
    if len(_META) >= 4096:  # routing keys that differ per event must not grow it without bound
        _META.clear()
    _META[key] = meta
    return meta


def encode(event: Event, _pack=ADD.pack, _frame=FRAME.pack, _crc=zlib.crc32, _metas=_META) -> bytes:
    """
    :param event: An event
    :return: Its "add" record
    """
    key = (event.profile, event.routing_key, event.content_type)
    meta = _metas.get(key) or _meta(key)
    event_id = event.id.encode()
    payload = b"".join((_pack(ADDED, event.timestamp, len(event_id)), event_id, meta, event.body))
    return _frame(len(payload), _crc(payload)) + payload


def encode_record(
    record: tuple, _pack=ADD_OWN.pack, _frame=FRAME.pack, _crc=zlib.crc32, _metas=_META, _prefix=OWN_ID_PREFIX
) -> bytes:
    """
    :param record: An event's record (:func:`evbus.types.make_record`)
    :return: Its "add own" record (:meth:`Spool.add` does the same in line)
    """
    profile, routing_key, body, content_type, number, timestamp = record
    meta = _metas.get((profile, routing_key, content_type)) or _meta((profile, routing_key, content_type))
    payload = _pack(ADDED_OWN, timestamp, _prefix, number) + meta + body
    return _frame(len(payload), _crc(payload)) + payload


def encode_done(offsets: list[int]) -> bytes:
    """
    :param offsets: Where the records of settled events start
    :return: Their "done" record
    """
    payload = struct.pack(f"<B{len(offsets)}Q", DONE, *offsets)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: memoryview) -> Event:
    """
    :param payload: The payload of an "add" or "add own" record
    :return: Its event
    """
    if payload[0] == ADDED_OWN:
        _, timestamp, prefix, number = ADD_OWN.unpack_from(payload)
        event_id = f"{prefix.hex()}-{number:x}"
        at = ADD_OWN.size
    else:
        _, timestamp, id_size = ADD.unpack_from(payload)
        at = ADD.size
        event_id = str(payload[at : at + id_size], "utf-8")
        at += id_size
    profile_size, routing_key_size, content_type_size = META.unpack_from(payload, at)
    at += META.size
    profile = str(payload[at : at + profile_size], "utf-8")
    at += profile_size
    routing_key = None
    if routing_key_size != NO_ROUTING_KEY:
        routing_key = str(payload[at : at + routing_key_size], "utf-8")
        at += routing_key_size
    content_type = str(payload[at : at + content_type_size], "utf-8")
    body = bytes(payload[at + content_type_size :])
    return Event(profile, routing_key, body, content_type, event_id, timestamp)


def read_log(data: memoryview) -> tuple[dict[int, Event], int, int, list[tuple[int, int]]]:
    """
    Read the records of a spool file.

    :param data: The file, from its header on
    :return: The events added and not done by the offset of their record (oldest
        first), the number of "add" records, where the valid records end, and
        (offset, payload size) of each corrupt record skipped amid good ones
    :raises ValueError: A record with a valid CRC and content that makes no sense
    """
    live: dict[int, Event] = {}
    added = 0
    skipped: list[tuple[int, int]] = []
    at, end = HEADER.size, len(data)
    while at + FRAME.size <= end:
        size, crc = FRAME.unpack_from(data, at)
        if size == 0 or at + FRAME.size + size > end:
            break
        payload = data[at + FRAME.size : at + FRAME.size + size]
        kind = payload[0]
        if zlib.crc32(payload) != crc or kind not in (ADDED, DONE, ADDED_OWN):
            if _record_at(data, at + FRAME.size + size):
                skipped.append((at, size))
                at += FRAME.size + size
                continue
            break
        if kind == DONE:
            for offset in struct.unpack_from(f"<{(size - 1) // 8}Q", payload, 1):
                live.pop(offset, None)
        else:
            live[at] = decode(payload)
            added += 1
        at += FRAME.size + size
    return live, added, at, skipped


def _record_at(data: memoryview, at: int) -> bool:
    """:return: A whole record with a good CRC starts at ``at``"""
    if at + FRAME.size > len(data):
        return False
    size, crc = FRAME.unpack_from(data, at)
    if size == 0 or at + FRAME.size + size > len(data):
        return False
    return zlib.crc32(data[at + FRAME.size : at + FRAME.size + size]) == crc


def blank_record(size: int) -> bytes:
    """:return: A record of ``size`` bytes of payload that means nothing: a "done" of offset 0 (the header)"""
    payload = bytes([DONE]) + bytes(size - 1)
    return FRAME.pack(size, zlib.crc32(payload)) + payload


def read_sqlite(path: str) -> list[Event]:
    """
    :param path: A spool in the SQLite format of evbus before the log
    :return: Its events, oldest first
    :raises ConfigError: It cannot be read (in use by an older evbus, or no spool)
    """
    try:
        db = sqlite3.connect(path, timeout=0)
        try:
            rows = db.execute(
                "SELECT id, profile, routing_key, content_type, timestamp, body FROM events ORDER BY seq"
            ).fetchall()
        finally:
            db.close()  # the last connection: SQLite moves its -wal into the file
    except sqlite3.Error as e:
        raise ConfigError(
            f"Cannot migrate the spool {path} from the SQLite format: {e} (in use by an older evbus?)"
        ) from None
    return [
        Event(profile, routing_key, bytes(body), content_type, event_id, timestamp)
        for event_id, profile, routing_key, content_type, timestamp, body in rows
    ]


def open_locked(path: str) -> int:
    """
    Open (or make) a spool file, private (one that exists is tightened once
    its header says it is a spool: see :meth:`Spool.__init__`), and lock it
    exclusively.

    :param path: The spool file
    :return: Its file descriptor
    :raises ConfigError: It cannot be made or opened, or another process holds it
    """
    try:
        private.make_dirs(os.path.dirname(os.path.abspath(path)))
        while True:
            fd = private.open_fd(path, os.O_RDWR | os.O_CREAT, tighten_now=False)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Locked the file the path names still (not one a compaction just replaced)?
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(f"Cannot use the spool {path}: another process has it open") from None
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"Cannot use the spool {path}: {e}") from None


def read_file(fd: int) -> bytes:
    """:return: What the file holds"""
    chunks, offset = [], 0
    while chunk := os.pread(fd, 16 * MiB, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes, offset: int):
    """
    Write ``data`` at ``offset``, going on after a short write.

    :raises OSError: The write failed (the disk is full, ...)
    """
    written = os.pwrite(fd, data, offset)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            written = os.pwrite(fd, view, offset + len(data) - len(view))
            view = view[written:]


def write_records(fd: int, records: Iterable[bytes]) -> tuple[list[int], int]:
    """
    Write a header and ``records`` to a new file.

    :return: Where each record starts, and where they end
    """
    offsets, chunk, written, at = [], [HEADER_BYTES], 0, HEADER.size
    for record in records:
        offsets.append(at)
        chunk.append(record)
        at += len(record)
        if at - written >= MiB:
            write_all(fd, b"".join(chunk), written)
            chunk, written = [], at
    write_all(fd, b"".join(chunk), written)
    return offsets, at


def reserve(fd: int, size: int):
    """
    Give the file ``size`` bytes on the disk (zeros past its data): a store into
    its memory map can then never fault for want of space (a full disk fails
    here, as an ``OSError``, instead of killing the process with SIGBUS).
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))  # a file system without fallocate


def sync_directory(path: str):
    """Sync the directory of ``path``: a rename in it survives a power loss."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Log:
    """
    The records of an open spool file, appended through a shared memory map.

    A store into a ``MAP_SHARED`` map is in the kernel's page cache once it is
    done, as a ``write`` would be, without a system call: it survives the
    process (a crash, SIGKILL); ``fdatasync`` writes it to the disk. The file
    is reserved ahead of the records (:func:`reserve`, doubling, in steps of
    64 MiB at most), so zeros follow them; ``close`` trims it.

    :param fd: The file, locked; zeros or nothing follow its records
    :param end: Where its records end
    """

    def __init__(self, fd: int, end: int):
        self.fd = fd
        self.end = end
        self.mapped = 0  # (what larger_map grows from)
        # The map of the file, up to ``mapped``: Spool.add stores records into it directly
        self.map, self.mapped = self.larger_map(end)

    def record(self, offset: int) -> bytes:
        """:return: The record at ``offset``"""
        size, _ = FRAME.unpack_from(self.map, offset)
        return self.map[offset : offset + FRAME.size + size]

    def larger_map(self, needed: int) -> tuple[mmap.mmap, int]:
        """
        Reserve the file up to ``needed`` bytes at least (and some room ahead:
        doubling, in steps of 64 MiB at most) and map it anew; this log's map
        is left as it is, for the caller to replace.

        :return: The new map, and its size
        """
        size = max(needed, self.mapped + min(self.mapped, 64 * MiB), MiB)
        size = -(-size // MiB) * MiB
        reserve(self.fd, size)
        return mmap.mmap(self.fd, size), size

    def reset(self):
        """
        Empty the log down to its header: its records are overwritten with zeros
        (the first frame first, so that a crash part way leaves a log that reads
        as empty), and the file keeps its reserved space; a log that grew large
        is cut instead, so that the space goes back to the file system.
        """
        used = self.end - HEADER.size
        if used <= ZERO_BYTES:
            first = min(used, FRAME.size)
            self.map[HEADER.size : HEADER.size + first] = bytes(first)
            self.map[HEADER.size + first : self.end] = bytes(used - first)
            self.end = HEADER.size
            return
        mapped = self.mapped
        os.ftruncate(self.fd, HEADER.size)
        # Nothing past the header is on the disk until reserved again: the next append
        # reserves first (and fails) if this does not work
        self.end = self.mapped = HEADER.size
        reserve(self.fd, mapped)
        self.mapped = mapped

    def close(self, trim: bool = True):
        """:param trim: Cut the space reserved ahead off the file"""
        try:
            self.map.close()
            if trim:
                os.ftruncate(self.fd, self.end)
        finally:
            os.close(self.fd)


class Spool:
    """
    The spool of one process: events stored as they are put, done as their lanes
    settle them, and what a crash left handed back at the next start.

    :param path: The spool file; made (0600, and its directory 0700) when missing
    :param sync: When what is written reaches the disk: ``normal`` (a process crash
        loses nothing; the file is synced every second and at ``flush()``, so a power
        loss may take the events of the last second, and never leaves a file that
        cannot be read), ``full`` (each ``put`` returns once its event is on the disk:
        a power loss loses nothing; puts that come together share a sync: awaited
        puts wait for the spool's sync thread while the loop runs on, threads sync
        as they add), ``off`` (never synced: a process crash loses nothing; a power
        loss may lose or corrupt what the file holds; fastest)
    :raises ConfigError: The file cannot be used: not made, in use by another
        process, no spool, or a spool of another evbus version

    ``add`` may be called from any thread; ``routed``, ``settled``,
    ``collect`` and ``flush`` from the loop's. ``settled(event)`` (an
    attribute: a list's append) tells that one lane published the event (or
    its record) or gave it up; ``collect()`` accounts for what was settled,
    and ``depth()``, ``flush()`` and ``close()`` call it first.
    """

    def __init__(self, path: str, sync: str = "normal"):
        if sync not in SYNC_MODES:
            raise ConfigError(f"spool_sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.path = path
        self.sync = sync
        self.redelivered = 0
        # Bytes of a torn or corrupt end of the file, dropped at open (see dropped()); corrupt
        # records amid good ones, skipped at open, and their bytes (see skipped())
        self._dropped = 0
        self._skipped = (0, 0)
        # Appends, the file's end and compaction; _sync_lock (one sync at a time) comes first
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        # event key -> offset of its record; event key -> lanes still to settle it, when
        # routed to more than one. The key (evbus.types.id_key) is the record's number
        # for events of this process, so that a record needs no Event made for it here.
        # Plain ints: nothing more for the garbage collector per event.
        self._live: dict[int | str, int] = {}
        self._lanes: dict[int | str, int] = {}
        # What a previous process left, for left_over()
        self._left: list[Event] = []
        # The events (or records) lanes settled, for collect(). ``settled(event)``: one lane
        # published the event or gave it up. A list's append, with no call of Python's per event.
        self._settled: list[Event | tuple] = []
        self.settled = self._settled.append
        # Offsets of settled events whose "done" is not written yet, and the loop's timer that
        # writes it DONE_SECONDS after the first of them, unless a batch filled first
        self._done: list[int] = []
        self._done_timer: asyncio.TimerHandle | None = None
        # The "add" records in the file, and how far it is synced
        self._records = 0
        self._synced = 0
        # Counts the files (compaction and emptying start a new one)
        self._generation = 0
        self._compact_at = COMPACT_BYTES
        self._closed = True
        self._failed = ""
        # The file open now: a migration replaces it as it opens
        self._opened = open_locked(path)
        try:
            end = self._load(self._opened)
            private.tighten(self._opened)  # a spool (or a new one): its events are private
            self._log = Log(self._opened, end)
        except OSError as e:
            os.close(self._opened)
            raise ConfigError(f"Cannot use the spool {path}: {e}") from None
        except BaseException:
            os.close(self._opened)
            raise
        self._closed = False
        # Futures of awaited puts for the sync thread to sync (spool_sync full); it waits for them
        self._waiting: list[asyncio.Future] = []
        self._wanted = threading.Condition(self._lock)
        self._stop_syncer = threading.Event()
        self._syncer = None
        if sync != "off":
            self._syncer = threading.Thread(
                target=_syncs, args=(weakref.ref(self), self._stop_syncer), name="evbus spool sync", daemon=True
            )
            self._syncer.start()

    def _load(self, fd: int) -> int:
        """
        Read what the file holds (or migrate it from SQLite, or start it).

        :param fd: The spool file, locked
        :return: Where its records end
        """
        data = read_file(fd)
        if HEADER_BYTES.startswith(data) or not data.strip(b"\0"):
            # New, or its header cut short by a crash as it was made
            os.ftruncate(fd, 0)
            write_all(fd, HEADER_BYTES, 0)
            self._synced = HEADER.size
            return HEADER.size
        if data.startswith(SQLITE_MAGIC):
            left = read_sqlite(self.path)
            new, offsets, end = self._rewrite(encode(event) for event in left)
            os.close(fd)
            self._opened = new
            for suffix in ("-wal", "-shm"):
                try:
                    os.unlink(self.path + suffix)
                except FileNotFoundError:
                    pass
            self._keep(dict(zip(offsets, left)))
            return end
        magic, version, _ = HEADER.unpack_from(data) if len(data) >= HEADER.size else (b"", 0, 0)
        if magic != MAGIC:
            raise ConfigError(f"Cannot use the spool {self.path}: it is no evbus spool file")
        if version not in READS:
            raise ConfigError(
                f"Cannot use the spool {self.path}: its format version {version} is not "
                f"{' or '.join(map(str, READS))} (written by another evbus version)"
            )
        try:
            left, self._records, end, skipped = read_log(memoryview(data))
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            raise ConfigError(f"Cannot use the spool {self.path}: a malformed record ({e})") from None
        for offset, size in skipped:
            write_all(fd, blank_record(size), offset)  # read past from now on, without a word
        self._skipped = (len(skipped), sum(FRAME.size + size for _, size in skipped))
        if version != VERSION:
            write_all(fd, HEADER_BYTES, 0)  # before any record of this version is appended
        # A record cut short, or garbage; the zeros past the records are space reserved ahead
        self._dropped = len(data[end:].rstrip(b"\0"))
        if end < len(data):
            os.ftruncate(fd, end)
            if self.sync != "off":
                os.fdatasync(fd)
        self._synced = end
        self._keep(left)
        return end

    def _keep(self, left: dict[int, Event]):
        """Hold the events a previous process left (by offset, oldest first), for left_over()."""
        for offset, event in left.items():
            self._live[id_key(event.id)] = offset
        self._left = list(left.values())

    def add(self, event: Event | tuple, awaited: bool = False) -> asyncio.Future | None:
        """
        Store an event: its record is written when this returns. With
        ``spool_sync`` full it is synced too: threads adding at once share a
        sync; an ``awaited`` add gets a future instead, done once the spool's sync
        thread has synced it (once for every awaited add waiting then), and the
        loop runs on meanwhile.

        :param event: The event ``put`` queued, or its record (:func:`evbus.types.make_record`)
        :param awaited: Called by an awaited ``put``, in the loop's thread
        :return: None; with ``spool_sync`` full and ``awaited``, the future to await
        :raises SpoolError: The event could not be written (it is queued, but not stored)
        """
        if event.__class__ is tuple:
            # encode_record, in line: this runs once per put
            profile, routing_key, body, content_type, key, timestamp = event
            meta = _META.get((profile, routing_key, content_type)) or _meta((profile, routing_key, content_type))
            payload = _ADD_OWN(ADDED_OWN, timestamp, OWN_ID_PREFIX, key) + meta + body
            record = _FRAME(len(payload), _crc32(payload)) + payload
        else:
            record, key = encode(event), id_key(event.id)
        size = len(record)
        while True:
            with self._lock:
                # No call in here while the file has room: a thread gives up the GIL only
                # between calls, so none holds the lock while it waits for the GIL (threads
                # that block on the lock would take it in turn, each then waiting for the
                # GIL while it holds the lock: a convoy that outlasts what started it)
                log = self._log
                start = log.end
                end = start + size
                if end <= log.mapped and not self._closed:
                    log.map[start:end] = record
                    log.end = end
                    self._live[key] = start
                    self._records += 1
                    if self.sync != "full":
                        return None
                    if awaited:
                        synced = asyncio.get_running_loop().create_future()
                        self._waiting.append(synced)
                        self._wanted.notify()
                        return synced
                    generation = self._generation
                    break
            self._make_room(log, end)
        self._sync_to(generation, end)
        return None

    def _make_room(self, log: "Log", end: int):
        """
        Not under the lock: map the file up to ``end`` at least; raise if the
        spool is closed or cannot grow. The file is reserved and mapped again
        outside the lock (system calls give up the GIL), and the larger map
        replaces the former under it.
        """
        if self._closed:
            raise SpoolError(f"The spool {self.path} is closed{self._failed}")
        try:
            larger, size = log.larger_map(end)
        except OSError as e:
            raise SpoolError(f"Cannot write to the spool {self.path}: {e}") from None
        with self._lock:
            if self._log is log and size > log.mapped and not self._closed:
                larger, log.map = log.map, larger  # the former map is closed below
                log.mapped = size
        larger.close()

    def routed(self, event: Event | tuple, lanes: int):
        """The listener handed the event (or its record) to ``lanes`` lanes (0: nobody takes it)."""
        if lanes == 1:
            return  # its one settle finishes it
        key = event[RECORD_NUMBER] if event.__class__ is tuple else id_key(event.id)
        if lanes:
            self._lanes[key] = lanes
        else:
            self._finish(key)

    def collect(self):
        """
        Account for the events the lanes settled since the last call (see
        ``settled``): an event is finished once every lane it went to settled
        it, and its "done" is written once DONE_BATCH events are finished, or
        DONE_SECONDS after the first of them (or the file emptied, when none
        is live then). In the loop's thread: the
        propagate hop calls it after each batch, a lane after its task settled.
        """
        settled = self._settled
        if not settled:
            return
        live, lanes, done = self._live, self._lanes, self._done
        for event in settled:
            key = event[RECORD_NUMBER] if event.__class__ is tuple else id_key(event.id)
            if lanes:  # events routed to more than one lane wait for all of them
                count = lanes.get(key)
                if count is not None:
                    if count > 1:
                        lanes[key] = count - 1
                        continue
                    del lanes[key]
            offset = live.pop(key, None)
            if offset is not None:
                done.append(offset)
        settled.clear()
        if done:
            self._done_added()

    def _finish(self, event_id: int | str):
        offset = self._live.pop(event_id, None)
        if offset is not None:
            self._done.append(offset)
            self._done_added()

    def _done_added(self):
        """Settled events wait for their "done": written now when a batch is full, else by the loop's timer."""
        if len(self._done) >= DONE_BATCH:
            self._write_done()
        elif self._done_timer is None:
            self._write_done_later()

    def _write_done_later(self):
        """Have the running loop write the "done" of what settled, DONE_SECONDS from now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the stop's flush writes it
        self._done_timer = loop.call_later(DONE_SECONDS, self._done_due)

    def _done_due(self):
        self._done_timer = None
        self.write_settled()

    def write_settled(self):
        """
        Write the "done" of every event settled so far (not synced: a process
        that exits now leaves it in the kernel, as a put's record). In the
        loop's thread.
        """
        self.collect()
        self._write_done()

    def _write_done(self):
        """Write the "done" of the settled events, or empty the file when none of its events is live."""
        done, self._done = self._done, []
        if not done:
            return
        record = encode_done(done)  # before the lock: no call under it while the file has room (see add)
        size = len(record)
        while True:
            with self._lock:
                if self._closed:
                    return
                log = self._log
                if not self._live:
                    if log.end > HEADER.size:
                        # A new file, even if the reset fails half way: nothing after it counts as synced
                        self._synced = HEADER.size
                        self._records = 0
                        self._generation += 1
                        try:
                            log.reset()
                        except OSError:
                            pass  # appends reserve the file again (or fail, saying why)
                    return
                start = log.end
                end = start + size
                if end <= log.mapped:
                    log.map[start:end] = record
                    log.end = end
                    due = end >= self._compact_at and len(self._live) * 4 <= self._records
                    break
            try:
                self._make_room(log, end)
            except SpoolError:
                return  # Not written: these events come again after a crash (at least once)
        if due:
            self._compact()

    def _compact(self):
        """Rewrite the file with the records of live events only."""
        with self._sync_lock, self._lock:
            if self._closed:
                return
            live = sorted((offset, event_id) for event_id, offset in self._live.items())
            old = self._log
            try:
                fd, offsets, end = self._rewrite(old.record(offset) for offset, _ in live)
            except OSError:
                # The file as it is stays valid; try again once it has grown as much again
                self._compact_at = old.end + COMPACT_BYTES
                return
            self._live.update(zip((event_id for _, event_id in live), offsets))
            old.close(trim=False)
            try:
                self._log = Log(fd, end)
            except OSError as e:
                os.close(fd)
                # Nothing to append to: add() fails from now on, saying why
                self._closed, self._failed = True, f": its compaction failed ({e})"
                return
            self._compact_at = max(COMPACT_BYTES, 2 * end)

    def _rewrite(self, records: Iterable[bytes]) -> tuple[int, list[int], int]:
        """
        Write a file that replaces the spool: ``<spool>.new``, synced unless
        ``spool_sync`` is off, renamed over the spool. Under both locks (or
        while opening); the caller closes the old file.

        :param records: The "add" records of the live events, oldest first
        :return: The new file, locked; where each record starts in it; where they end
        """
        temporary = self.path + ".new"
        new = private.open_fd(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
            offsets, end = write_records(new, records)
            if self.sync != "off":
                os.fdatasync(new)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(new)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        if self.sync != "off":
            sync_directory(self.path)
        self._synced = end if self.sync != "off" else HEADER.size
        self._records = len(offsets)
        self._done.clear()  # offsets in the old file
        self._generation += 1
        return new, offsets, end

    def _sync_to(self, generation: int | None, end: int):
        """
        Sync the file up to ``end`` at least (written in ``generation``; None: all
        written so far). One sync at a time: those who waited for it find their
        records synced by it.

        :raises SpoolError: The sync failed
        """
        with self._sync_lock:
            with self._lock:
                if self._closed:
                    return
                if generation is not None and (generation != self._generation or self._synced >= end):
                    # Synced meanwhile, or the event's file was compacted (synced) or emptied (settled)
                    return
                fd, target, synced_generation = self._log.fd, self._log.end, self._generation
                if self._synced >= target:
                    return
            try:
                os.fdatasync(fd)
            except OSError as e:
                raise SpoolError(f"Cannot sync the spool {self.path}: {e}") from None
            with self._lock:
                if self._generation == synced_generation:  # not emptied meanwhile
                    self._synced = max(self._synced, target)

    def flush(self):
        """Write the "done" of settled events, and sync the file (unless ``spool_sync`` is off)."""
        if self._done_timer is not None:  # (a timer of this loop, which may not run again)
            self._done_timer.cancel()
            self._done_timer = None
        self.write_settled()
        if self.sync != "off":
            self._sync_to(None, 0)

    def trim(self):
        """
        When no event is live (a stop that delivered everything): cut the file to
        its header, giving back the space reserved ahead; the next append reserves
        it again.
        """
        self.write_settled()
        with self._sync_lock, self._lock:
            log = self._log
            if self._closed or self._live or log.mapped == HEADER.size:
                return
            try:
                # Mapped before the cut: a map that fails leaves the file as it was, never
                # cut under the larger map (a store past the file's end is a SIGBUS)
                small = mmap.mmap(log.fd, HEADER.size)
            except OSError:
                return  # as it was: emptied, with its space reserved
            try:
                os.ftruncate(log.fd, HEADER.size)
            except OSError:
                small.close()
                return
            log.map, small = small, log.map
            log.end = log.mapped = HEADER.size
            self._synced = HEADER.size
            self._records = 0
            self._generation += 1
        small.close()

    def left_over(self) -> list[Event]:
        """
        :return: The events a previous process stored and did not settle, oldest
            first, once (events this process stored itself are on its queue already)
        """
        events, self._left = self._left, []
        self.redelivered += len(events)
        return events

    def dropped(self) -> int:
        """
        :return: The bytes of a torn or corrupt end of the file that the open
            dropped (a write cut short by a crash), once; then 0
        """
        dropped, self._dropped = self._dropped, 0
        return dropped

    def skipped(self) -> tuple[int, int]:
        """
        :return: How many corrupt records amid good ones the open skipped (the
            events they held, if any, are lost), and their bytes, once; then (0, 0)
        """
        skipped, self._skipped = self._skipped, (0, 0)
        return skipped

    def depth(self) -> int:
        """:return: How many events the spool holds that are not settled yet"""
        self.collect()
        return len(self._live)

    def close(self):
        """Write what is pending, sync it (unless ``spool_sync`` is off) and release the file."""
        if not self._closed:
            self.write_settled()
        with self._sync_lock, self._lock:
            try:
                if not self._closed and self.sync != "off":
                    os.fdatasync(self._log.fd)
            finally:
                if not self._closed:  # else closed already, or a compaction could not open the new file
                    self._closed = True
                    self._log.close()
                self._stop_syncer.set()
                self._wanted.notify()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()

    def __del__(self):
        # Dropped without close(): release the file (what is written stays valid)
        if not getattr(self, "_closed", True):
            self._closed = True
            self._stop_syncer.set()
            self._log.close(trim=False)

    def _sync_round(self, stop: threading.Event):
        """
        One round of the sync thread: ``normal``, sync what was written, after
        SYNC_SECONDS; ``full``, sync once for every awaited put waiting, and
        wake them in their loops.
        """
        if self.sync == "normal":
            if not stop.wait(SYNC_SECONDS):
                try:
                    self._sync_to(None, 0)
                except SpoolError:
                    pass  # tried again next time; the events stay in the kernel meanwhile
            return
        with self._lock:
            if not self._waiting and not self._closed:
                self._wanted.wait(SYNC_SECONDS)
            waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        error = None
        try:
            self._sync_to(None, 0)
        except SpoolError as e:
            error = e
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
        for synced in waiting:
            loops.setdefault(synced.get_loop(), []).append(synced)
        for loop, futures in loops.items():
            try:
                loop.call_soon_threadsafe(_wake, futures, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more


def _syncs(spool: weakref.ref, stop: threading.Event):
    """The sync thread of a spool (``spool_sync`` normal or full), until it is closed or dropped."""
    while not stop.is_set():
        current = spool()
        if current is None:
            return
        current._sync_round(stop)
        del current


def _wake(futures: list[asyncio.Future], error: BaseException | None):
    """In a loop: the puts that waited for a sync."""
    for synced in futures:
        if not synced.done():
            if error is None:
                synced.set_result(None)
            else:
                synced.set_exception(error)
