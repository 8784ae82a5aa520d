"""
The dead-letter store: a JSON lines file of the events a lane gave up.

One line per given-up event and destination::

    {"record": "…", "failed_at": 1764350000.1, "plugin": "kafka", "provider": "kafka",
     "acct_profile": "default", "attempts": 10, "error": "KafkaConnectionError: … (masked)",
     "id": "…", "profile": "idem-run", "routing_key": null, "timestamp": 1764349990.0,
     "content_type": "application/json", "body": "{\\"n\\": 1}", "body_encoding": "utf-8"}

``body`` holds the exact serialized bytes: as text when they are UTF-8, else
base64 (``body_encoding``). Appends and rewrites are serialized by a lock, and
a rewrite replaces the file atomically, so a crash leaves either the old or
the new file, never half of one.

The file holds event bodies: it is private (0600, in directories evbus
makes 0700; see :mod:`evbus.private`).
"""
import base64
import contextlib
import json
import os
import pathlib
import threading
import time
import uuid
from typing import Any
from typing import TextIO
from collections.abc import Callable
from collections.abc import Iterable
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
    :param record: A dead-letter record
    :return: The event it holds, with its original id and time
    """
    body = record["body"]
    data = base64.b64decode(body) if record.get("body_encoding") == "base64" else body.encode("utf-8")
    return Event(
        profile=record.get("profile", "default"),
        routing_key=record.get("routing_key"),
        body=data,
        content_type=record.get("content_type", "application/octet-stream"),
        id=record["id"],
        timestamp=record.get("timestamp", time.time()),
    )


class DeadLetterStore:
    """
    :param path: The JSON lines file, private (0600); its directory is made (0700) when needed
    """

    def __init__(self, path: str):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        # Within batch(): how deep, and the file kept open for it
        self._batching = 0
        self._batch_file: TextIO | None = None

    def append(self, record: dict[str, Any]):
        """
        Write one record: on disk (fsync) when this returns; within
        :meth:`batch`, in the file (the kernel has it: a crash of the process
        loses nothing) and on disk when the batch ends.
        """
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            if self._batching:
                if self._batch_file is None:
                    private.make_dirs(self.path.parent)
                    self._batch_file = self._open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a")
                self._batch_file.write(line)
                self._batch_file.flush()
                return
            private.make_dirs(self.path.parent)
            with self._open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())

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
                out = self._batch_file
                if not self._batching and out is not None:
                    self._batch_file = None
                    try:
                        os.fsync(out.fileno())
                    finally:
                        out.close()

    def read(self) -> list[dict[str, Any]]:
        """:return: Every record, oldest first; lines that are not JSON records are skipped"""
        with self._lock:
            return list(self._read())

    def unreadable(self) -> int:
        """:return: How many lines of the file hold no dead letter (not JSON, or not a record); blank ones aside"""
        with self._lock:
            return sum(1 for line, record in self._lines() if record is None and line.strip())

    def _read(self) -> Iterable[dict[str, Any]]:
        for _, record in self._lines():
            if record is not None:
                yield record

    def _lines(self) -> Iterable[tuple[str, dict[str, Any] | None]]:
        """:return: Each line of the file, with its record, or None when it holds none"""
        if not self.path.exists():
            return
        with self._open(self.path, os.O_RDONLY, "r") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not (isinstance(record, dict) and "id" in record and "body" in record):
                    record = None
                yield line, record

    def remove(self, drop: Callable[[dict[str, Any]], bool]) -> int:
        """
        Rewrite the file without the records ``drop`` selects, atomically.

        :return: How many records were removed
        """
        with self._lock:
            kept, removed = [], 0
            for line, record in self._lines():
                if record is not None and drop(record):
                    removed += 1
                else:
                    kept.append(line)  # as it was, records and lines that are none alike
            if not removed:
                return 0
            temporary = self.path.with_name(self.path.name + ".tmp")
            with self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "w") as out:
                for line in kept:
                    out.write(line if line.endswith("\n") else line + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            return removed

    @staticmethod
    def _open(path: pathlib.Path, flags: int, mode: str) -> TextIO:
        """The store's file (or its rewrite), private: made 0600, tightened to 0600 when wider."""
        return open(private.open_fd(path, flags), mode, encoding="utf-8")
