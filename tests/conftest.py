"""
Fixtures shared by every test: a fresh hub per test, its loop set for pop,
and helpers that wait with a timeout instead of sleeping.
"""
import asyncio
import gc
import json
import logging
import os
import pathlib
import sqlite3
import sys

import pop.hub
import pytest

pytest_plugins = ["tests.brokers", "pytester"]

PLUGINS = pathlib.Path(__file__).parent / "plugins"
# What asyncio (and libraries on it) log when a task, a future or a loop was left unfinished
STRAY = (
    "Task was destroyed",
    # "Task ...", "Future ..." and "<a Future subclass> exception was never retrieved"
    "exception was never retrieved",
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

# Tests of their own sessions (noxfile.py), not collected by the plain test command:
# idem's needs idem installed beside evbus (nox -s idem), the mixed installs
# build throwaway environments (nox -s mixed)
collect_ignore = []
try:
    import idem  # noqa: F401
except ImportError:
    collect_ignore.append("idem")
if os.environ.get("EVBUS_MIXED") != "1":
    collect_ignore.append("mixed")


def pytest_addoption(parser):
    parser.addoption(
        "--uvloop",
        action="store_true",
        default=False,
        help="run every test's event loop on uvloop (the loop idem runs on)",
    )


def pytest_configure(config):
    logging.getLogger().addHandler(STRAY_ERRORS)
    if config.getoption("uvloop"):
        # Before any fixture makes a loop: pytest-asyncio 0.18 makes each test's
        # loop with the policy in force, and it knows no event_loop_policy fixture
        try:
            import uvloop
        except ImportError:
            raise pytest.UsageError("--uvloop needs uvloop: pip install uvloop") from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """The policy of every test's loop (uvloop's with ``--uvloop``), for pytest-asyncio 0.23 and later."""
    return asyncio.get_event_loop_policy()


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


@pytest.fixture
def evbus_hub(hub):
    """evbus.testing's capture bus runs on the suite's hub."""
    return hub


@pytest.fixture(autouse=True)
async def _pop_loop(hub):
    """pop's loop helpers need the running loop."""
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    yield
    # Lanes that a test made with propagate() alone end with the test
    await hub.evbus.shutdown.close(timeout=1)


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


# The client libraries' packages: a task of theirs still running after stop() is a connection left behind
LIBRARIES = ("aiokafka", "aio_pika", "aiormq", "nats", "redis", "aiomqtt", "paho")


def library_tasks() -> list[asyncio.Task]:
    """The running tasks whose coroutine is a client library's (its readers, its reconnects, its retries)."""
    left = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and any(f"/{name}/" in code.co_filename for name in LIBRARIES):
            left.append(task)
    return left


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



class Otel:
    """
    OpenTelemetry SDK providers of a test's own: spans to an in-memory
    exporter, metrics to an in-memory reader.
    """

    def __init__(self):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def spans(self, name_prefix: str = "send") -> list:
        """:return: The finished spans whose name starts with ``name_prefix``, in the order they ended"""
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith(name_prefix)]

    def metrics(self) -> dict[str, list[tuple[dict, object]]]:
        """
        :return: {metric name: [(attributes, value), ...]}: the value of a counter
            or gauge, the data point of a histogram
        """
        found: dict[str, list[tuple[dict, object]]] = {}
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        value = point.value if hasattr(point, "value") else point
                        found.setdefault(metric.name, []).append((dict(point.attributes), value))
        return found

    def shutdown(self):
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel(hub):
    """Tracer and meter providers of the test's own, given to the hub (``hub.evbus.TRACER_PROVIDER``, ...)."""
    providers = Otel()
    hub.evbus.TRACER_PROVIDER = providers.tracer_provider
    hub.evbus.METER_PROVIDER = providers.meter_provider
    yield providers
    providers.shutdown()


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
