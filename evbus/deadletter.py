"""
The dead-letter store: a JSON lines file of the events a lane gave up.

One line per given-up event and destination::

    {"record": "…", "failed_at": 1764350000.1, "plugin": "kafka", "provider": "kafka",
     "acct_profile": "default", "attempts": 10, "error": "KafkaConnectionError: … (masked)",
     "id": "…", "profile": "idem-run", "routing_key": null, "timestamp": 1764349990.0,
     "content_type": "application/json", "body": "{\\"n\\": 1}", "body_encoding": "utf-8"}

``body`` holds the exact serialized bytes: as text when they are UTF-8, else
base64 (``body_encoding``). Appends and rewrites hold the file's lock
(``flock``: other processes may write the same file), and a rewrite replaces
the file atomically, so a crash leaves either the old or the new file, never
half of one.

The file holds event bodies: it is private (0600, in directories evbus
makes 0700; see :mod:`evbus.private`).
"""
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import threading
import time
import uuid
from typing import Any
from collections.abc import Callable
from collections.abc import Iterator

from evbus import private
from evbus.types import Event


def default_path() -> str:
    """``$XDG_STATE_HOME/evbus/dead-letters.jsonl`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "evbus", "dead-letters.jsonl")


def to_record(event: Event, **destination: Any) -> dict[str, Any]:
    """
    :param event: The given-up event
    :param destination: plugin, provider, acct_profile, attempts, error
    :return: Its dead-letter record
    """
    try:
        body, encoding = event.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(event.body).decode(), "base64"
    return {
        "record": uuid.uuid4().hex,
        "failed_at": time.time(),
        **destination,
        "id": event.id,
        "profile": event.profile,
        "routing_key": event.routing_key,
        "timestamp": event.timestamp,
        "content_type": event.content_type,
        "body": body,
        "body_encoding": encoding,
    }


def to_event(record: dict[str, Any]) -> Event:
    """
    :param record: A dead-letter record (one :func:`is_record` accepts)
    :return: The event it holds, with its original id and time
    """
    body = record["body"]
    data = base64.b64decode(body, validate=True) if record.get("body_encoding") == "base64" else body.encode("utf-8")
    return Event(
        profile=record.get("profile", "default"),
        routing_key=record.get("routing_key"),
        body=data,
        content_type=record.get("content_type", "application/octet-stream"),
        id=record["id"],
        timestamp=record.get("timestamp", time.time()),
    )


def is_record(record: Any) -> bool:
    """
    :param record: What a line of the file holds, parsed
    :return: True when it is a whole dead letter: its ``id`` is text, its
        body text in its encoding (base64 that decodes), and its ``record`` and
        the event's other fields, when given, of their types. Anything else is
        a line that holds no dead letter: replay leaves it in the file as it is.
    """
    if not isinstance(record, dict):
        return False
    if not (isinstance(record.get("id"), str) and isinstance(record.get("body"), str)):
        return False
    optional = {
        "record": (str,),
        "profile": (str,),
        "routing_key": (str, type(None)),
        "content_type": (str,),
        "timestamp": (int, float),
        "body_encoding": (str,),
    }
    for key, types in optional.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            return False
    encoding = record.get("body_encoding", "utf-8")
    if encoding == "base64":
        try:
            base64.b64decode(record["body"], validate=True)
        except ValueError:
            return False
    elif encoding != "utf-8":
        return False
    return True


class DeadLetterStore:
    """
    :param path: The JSON lines file, private (0600); its directory is made (0700) when needed

    Other processes may use the same file (an app dead-lettering while
    ``evbus replay`` runs): every append and rewrite holds the file's lock
    (``flock``), and an append checks that the file it opened is still the one
    at ``path``, since a rewrite replaces it.
    """

    def __init__(self, path: str):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        # Within batch(): how deep, and the file kept open for it
        self._batching = 0
        self._batch_fd: int | None = None

    def append(self, record: dict[str, Any]):
        """
        Write one record: on disk (fsync) when this returns; within
        :meth:`batch`, in the file (the kernel has it: a crash of the process
        loses nothing) and on disk when the batch ends.
        """
        line = (json.dumps(record, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._batching:
                self._batch_fd = self._append(self._batch_fd, line)
                return
            fd = self._append(None, line)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _append(self, fd: int | None, line: bytes) -> int:
        """
        Append ``line`` under the file's lock, to the file at ``path`` now, and
        after a newline when the file's last line has none (a torn write, an
        edit): the record gets a line of its own.

        :param fd: The file as opened before, or None
        :return: The file it went to, open
        """
        while True:
            if fd is None:
                private.make_dirs(self.path.parent)
                fd = private.open_fd(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if self._is_current(fd):
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        _write_all(fd, b"\n")
                    _write_all(fd, line)
                    return fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            # Replaced by a rewrite (which holds what was written before): to the new file
            os.close(fd)
            fd = None

    def _is_current(self, fd: int) -> bool:
        """:return: True when ``fd`` is the file at ``path`` (no rewrite replaced it)"""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (opened.st_dev, opened.st_ino) == (now.st_dev, now.st_ino)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """
        Write the records appended within it with one fsync at its end instead of
        one each: a stop that gives up thousands of events would spend seconds
        in fsync calls otherwise.
        """
        with self._lock:
            self._batching += 1
        try:
            yield
        finally:
            with self._lock:
                self._batching -= 1
                fd = self._batch_fd
                if not self._batching and fd is not None:
                    self._batch_fd = None
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """:return: Every record, oldest first; lines that hold none are skipped"""
        with self._lock:
            return [record for _, record in self._lines() if record is not None]

    def unreadable(self) -> int:
        """:return: How many lines of the file hold no dead letter (not JSON, or not a record); blank ones aside"""
        with self._lock:
            return sum(1 for line, record in self._lines() if record is None and line.strip())

    def _lines(self) -> list[tuple[bytes, dict[str, Any] | None]]:
        """:return: Each line of the file, with its record, or None when it holds none"""
        try:
            fd = private.open_fd(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # no append half written
            return self._parse(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _parse(fd: int) -> list[tuple[bytes, dict[str, Any] | None]]:
        with open(fd, "rb", closefd=False) as lines:
            parsed = []
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:  # (not UTF-8 included)
                    record = None
                if not is_record(record):
                    record = None
                elif "record" not in record:  # (written by hand) known by its line, to be removed
                    record["record"] = "line-" + hashlib.sha256(line.strip()).hexdigest()[:32]
                parsed.append((line, record))
            return parsed

    def remove(self, drop: Callable[[dict[str, Any]], bool]) -> int:
        """
        Rewrite the file without the records ``drop`` selects, atomically.
        A symbolic link at ``path`` stays: the file it leads to is rewritten.

        :return: How many records were removed
        """
        with self._lock:
            try:
                fd = private.open_fd(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return 0
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                while not self._is_current(fd):  # replaced by another process's rewrite meanwhile
                    os.close(fd)
                    fd = private.open_fd(self.path, os.O_RDONLY)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                kept, removed = [], 0
                for line, record in self._parse(fd):
                    if record is not None and drop(record):
                        removed += 1
                    else:
                        kept.append(line if line.endswith(b"\n") else line + b"\n")  # as it was
                if removed:
                    self._replace(b"".join(kept))
                return removed
            finally:
                os.close(fd)  # (and the lock with it, once the new file is in place)

    def _replace(self, data: bytes):
        """Put a file holding ``data`` in place of the store's, atomically."""
        target = pathlib.Path(os.path.realpath(self.path))
        temporary = target.with_name(target.name + ".tmp")
        out = private.open_fd(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(out, data)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(temporary, target)


def _write_all(fd: int, data: bytes):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
