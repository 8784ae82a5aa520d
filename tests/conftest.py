"""
Fixtures shared by every test: a fresh hub per test, its loop set for pop,
and helpers that wait with a timeout instead of sleeping.
"""
import asyncio
import gc
import json
import logging
import pathlib
import sqlite3
import sys

import pop.hub
import pytest

pytest_plugins = ["tests.brokers"]

PLUGINS = pathlib.Path(__file__).parent / "plugins"
# What asyncio (and libraries on it) log when a task, a future or a loop was left unfinished
STRAY = (
    "Task was destroyed",
    "Task exception was never retrieved",
    "Future exception was never retrieved",
    "Event loop is closed",
)


class StrayErrors(logging.Handler):
    """Collects log records that say a task, a future or a loop was left unfinished."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord):
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        if any(phrase in text for phrase in STRAY):
            self.records.append(f"{record.name}: {text.splitlines()[0]}")


STRAY_ERRORS = StrayErrors()


def pytest_configure(config):
    logging.getLogger().addHandler(STRAY_ERRORS)


def pytest_sessionfinish(session, exitstatus):
    """Stray errors that surfaced after their test ended (at garbage collection) fail the run too."""
    gc.collect()
    if STRAY_ERRORS.records and session.exitstatus == 0:
        print("\nStray asyncio errors:\n  " + "\n  ".join(STRAY_ERRORS.records), file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _no_stray_asyncio_errors():
    """A test fails when asyncio logs a task, future or loop it left unfinished."""
    before = len(STRAY_ERRORS.records)
    yield
    gc.collect()
    stray = STRAY_ERRORS.records[before:]
    if stray:
        del STRAY_ERRORS.records[before:]
        pytest.fail("stray asyncio errors:\n  " + "\n  ".join(stray))
RETRY_ENV = {"EVBUS_RETRY_ATTEMPTS": "3", "EVBUS_RETRY_BACKOFF": "0.001", "EVBUS_RETRY_BACKOFF_MAX": "0.01"}


@pytest.fixture(name="hub")
def fresh_hub(monkeypatch, tmp_path):
    """A new hub per test with the evbus dyne and its config loaded (no CLI parsing)."""
    monkeypatch.setattr(sys, "argv", ["evbus"])
    # Retries as in production, but quick: 3 attempts, millisecond backoff
    for name, value in RETRY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EVBUS_DEAD_LETTER_FILE", str(tmp_path / "dead-letters.jsonl"))
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    yield hub


@pytest.fixture(autouse=True)
async def _pop_loop(hub):
    """pop's loop helpers need the running loop."""
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    yield
    # Lanes that a test made with propagate() alone end with the test
    await hub.evbus.route.close(timeout=1)


def add_ingress(hub, *names: str):
    """App-merge test ingress plugins from tests/plugins/<name>/ into hub.ingress."""
    for name in names:
        hub.pop.sub.extend(subname="ingress", static=[str(PLUGINS / name)])


async def take(queue: asyncio.Queue, count: int, timeout: float = 10.0) -> list:
    """Take ``count`` items from a queue, failing after ``timeout`` seconds."""
    items = []

    async def _take():
        while len(items) < count:
            items.append(await queue.get())

    try:
        await asyncio.wait_for(_take(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"only {len(items)} of {count} items arrived within {timeout} s")
    return items


async def take_json(queue: asyncio.Queue, count: int, timeout: float = 10.0) -> list:
    """Take ``count`` JSON bodies from a queue and decode them."""
    return [json.loads(body) for body in await take(queue, count, timeout)]


async def wait_for(condition, timeout: float = 10.0, message: str = "condition"):
    """Wait until ``condition()`` is true, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"{message} not reached within {timeout} s")
        await asyncio.sleep(0.005)


@pytest.fixture
async def running(hub):
    """
    Start the listener on the contexts a test gives; stop it at the end.

    Usage: ``await running({"internal": {"default": {}}})``
    """
    tasks = []

    async def _start(acct_data: dict):
        contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
        task = asyncio.create_task(hub.evbus.init.start(contexts))
        tasks.append(task)
        await hub.evbus.init.join(timeout=10)
        return contexts

    yield _start
    for task in tasks:
        if not task.done():
            await hub.evbus.init.stop(timeout=10)
            await asyncio.wait_for(task, 20)


@pytest.fixture
def error_sink(hub, monkeypatch):
    """
    Point error_callback_ref at tests/plugins/my_app/errors.py:handle, through
    the environment as a user would; returns the list of error dicts it receives.
    """
    hub.pop.sub.add(static=[str(PLUGINS / "my_app")], subname="my_app")
    monkeypatch.setenv("EVBUS_ERROR_CALLBACK_REF", "my_app.errors.handle")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    return hub.my_app.errors.RECEIVED


# The SQLite spool of evbus before the log (migrated at open)
OLD_SCHEMA = """
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


def sqlite_spool(path, rows: list[tuple]) -> sqlite3.Connection:
    """
    A spool in the SQLite format of older evbus (WAL mode), left open.

    :param rows: (id, profile, routing_key, content_type, timestamp, body) of its events
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO events (id, profile, routing_key, content_type, timestamp, body) VALUES (?, ?, ?, ?, ?, ?)", rows
    )
    return db
