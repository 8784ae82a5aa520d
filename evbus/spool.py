"""
The durable spool: events stored locally (SQLite, WAL mode, one file) before
``put`` returns, and removed once every lane they went to has settled them
(published, or given up to the dead letters).

After a crash, ``start()`` re-delivers what the spool still holds: nothing
that ``put`` returned for is lost (at least once; an event a lane had
published before the crash, but whose removal was not yet written, comes
again, and is counted as redelivered).

The file survives the process (a crash, SIGKILL); what a power loss may do
depends on ``spool_sync`` (see :class:`Spool`). One process uses a spool file
at a time (the file is locked exclusively).

The spool holds event bodies: its file and SQLite's ``-wal`` (and ``-shm``)
beside it are private (0600, in directories evbus makes 0700; see
:mod:`evbus.private`).
"""
import os
import sqlite3
import threading
from typing import Any

from evbus import private
from evbus.exc import ConfigError
from evbus.types import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    profile TEXT NOT NULL,
    routing_key TEXT,
    content_type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    body BLOB NOT NULL
)
"""


SYNC_MODES = ("normal", "full", "off")


def _make_private(path: str):
    """
    Make the spool file 0600 (its directory 0700) before SQLite opens it, or
    tighten it to 0600.

    SQLite makes its ``-wal`` and ``-shm`` files with the mode of the
    database file (its unix VFS copies it, whatever the umask), so a private
    database file is enough for those SQLite makes; ``Spool`` tightens those
    an earlier process left. The umask is not used: it is process-wide, and
    changing it around the connect would race with other threads making files.

    :raises ConfigError: The file or its directory cannot be made or opened
    """
    try:
        private.make_dirs(os.path.dirname(os.path.abspath(path)))
        os.close(private.open_fd(path, os.O_RDWR | os.O_CREAT))  # closed before SQLite takes its locks
    except OSError as e:
        raise ConfigError(f"Cannot use the spool {path}: {e}") from None


class Spool:
    """
    :param path: The SQLite file; made (0600, and its directory 0700) when missing
    :param sync: SQLite's ``synchronous`` in WAL mode: ``normal`` (a process
        crash loses nothing; a power loss may take the last transactions, and
        never corrupts the file), ``full`` (a power loss loses nothing; slower),
        ``off`` (a process crash loses nothing; a power loss may corrupt the
        file; fastest)
    """

    def __init__(self, path: str, sync: str = "normal"):
        self.path = path
        self.sync = sync
        self._closed = False
        _make_private(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1)
        # One process per spool: an exclusive lock saves two file-lock calls per transaction
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            self._db.close()
            raise ConfigError(f"Cannot use the spool {path}: {e} (another process has it open?)") from None
        self._db.execute(f"PRAGMA synchronous={SYNC_MODES[SYNC_MODES.index(sync)].upper()}")
        # Fewer checkpoints (each one syncs the file): every 20000 pages of WAL instead of 1000
        self._db.execute("PRAGMA wal_autocheckpoint=20000")
        self._db.execute(SCHEMA)
        for suffix in ("-wal", "-shm"):
            private.tighten(path + suffix)  # left, wider, by an evbus before 0600 spools
        self._lock = threading.Lock()
        # event id -> [spool seq, lanes still to settle it (None until routed)]
        self._live: dict[str, list[Any]] = {}
        self._done: list[tuple[int]] = []
        self.redelivered = 0

    def add(self, event: Event):
        """Store an event; returns once it is written (each insert is its own transaction)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO events (id, profile, routing_key, content_type, timestamp, body) VALUES (?, ?, ?, ?, ?, ?)",
                (event.id, event.profile, event.routing_key, event.content_type, event.timestamp, event.body),
            )
            self._live[event.id] = [cursor.lastrowid, None]

    def routed(self, event: Event, lanes: int):
        """The listener handed the event to ``lanes`` lanes (0: nobody takes it)."""
        entry = self._live.get(event.id)
        if entry is None:
            return
        if lanes == 0:
            self._finish(event.id, entry)
        else:
            entry[1] = lanes

    def settled(self, event: Event):
        """One lane published the event or gave it up."""
        entry = self._live.get(event.id)
        if entry is None or entry[1] is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self._finish(event.id, entry)

    def _finish(self, event_id: str, entry: list):
        del self._live[event_id]
        self._done.append((entry[0],))
        if len(self._done) >= 256:
            self.flush()

    def flush(self):
        """Write the removals of settled events."""
        with self._lock:
            done, self._done = self._done, []
            if done and not self._closed:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM events WHERE seq = ?", done)
                self._db.execute("COMMIT")

    def left_over(self) -> list[Event]:
        """
        :return: The events a previous process stored and did not settle, oldest
            first (events this process stored itself are on its queue already)
        """
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, profile, routing_key, content_type, timestamp, body FROM events ORDER BY seq"
            ).fetchall()
        events = []
        for seq, event_id, profile, routing_key, content_type, timestamp, body in rows:
            if event_id in self._live:
                continue
            self._live[event_id] = [seq, None]
            events.append(Event(profile, routing_key, bytes(body), content_type, event_id, timestamp))
        self.redelivered += len(events)
        return events

    def depth(self) -> int:
        """:return: How many events the spool file holds"""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self):
        """Write what is pending and release the file."""
        self.flush()
        with self._lock:
            self._closed = True
            self._db.close()
