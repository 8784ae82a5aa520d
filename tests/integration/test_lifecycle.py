"""
The lifecycle matrix: every shipped plugin x broker state x moment of stop x
spool off/on, with the same three checks after each:

- ``stop()`` returned within its timeout plus the closing grace;
- every event put is accounted for: ``put == published + dead-lettered +
  still spooled`` (from ``stats()``), and the dead letters on file match;
- nothing of the client library goes on running (reconnecting, retrying,
  logging) once ``stop()`` returned.

Broker states: ``up`` (the machine's service, or the session's Tansu),
``down`` (a port nothing listens on), ``refusing`` (a server that refuses
the profile's credentials), ``late`` (a port that starts forwarding to the
real broker only after the bus started), ``lost`` (a port that forwards to
the real broker until the lane has published, then breaks every connection
and refuses new ones: the broker gone mid-stream). Stop moments: ``idle`` (right after
``join()``, nothing put: the lanes are still connecting), ``at_once`` (right
after the events were put), ``mid_stream`` (while a producer is putting),
``backoff`` (once the lane has retried).

Plus the transitions no broker can be made to show on demand: a plugin whose
``open`` swallows a cancel, and real NATS and Redis stops at several loop
turns after ``join()``.
"""
import asyncio
import json
import time

import pytest

from evbus.exc import BusClosedError
from evbus.exc import BusStoppedError
from evbus.lane import CLOSE_GRACE
from tests.brokers import NATS_URL
from tests.brokers import Proxy
from tests.brokers import REDIS_URL
from tests.brokers import URL
from tests.brokers import _binary
from tests.brokers import _free_port
from tests.brokers import ServerProcess
from tests.brokers import Tansu
from tests.brokers import service
from tests.brokers import unique
from tests.conftest import add_ingress
from tests.conftest import library_tasks
from tests.conftest import take_json
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

STOP_TIMEOUT = 2.0
# stop() waits for the lanes to drain, then gives each lane's task and its plugin the grace
BOUND = STOP_TIMEOUT + 2 * CLOSE_GRACE + 1
EVENTS = 20


def _mosquitto_refusing(tmp_path) -> ServerProcess:
    binary = _binary("mosquitto")
    conf = tmp_path / "refusing.conf"

    def argv(port: int) -> list[str]:
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\nlog_dest none\nuser root\n")
        return [binary, "-c", str(conf)]

    return ServerProcess("mosquitto", argv)


class Transport:
    """How one plugin's profile points at a host and port, with or without the right credentials."""

    name = ""
    port = 0
    auth = True  # whether a server that refuses credentials can be had

    def profile(self, port: int, wrong_password: bool = False) -> dict:
        raise NotImplementedError

    def refusing_server(self, tmp_path) -> ServerProcess | None:
        """A server of the test's own that refuses the profile's credentials; None: the shared one does."""
        return None

    async def prepare(self, request) -> None:
        """Make what the profile's destination needs on the real broker (a queue, a stream)."""

    async def cleanup(self) -> None:
        """Remove what :meth:`prepare` made."""

    async def behind(self, proxy_port: int) -> int:
        """:return: The broker's port that a proxy at ``proxy_port`` forwards to (the ``lost`` state)"""
        return self.port


class Kafka(Transport):
    name = "kafka"
    auth = False  # Tansu has no SASL

    async def prepare(self, request):
        self.tansu = request.getfixturevalue("tansu")
        self.port = self.tansu.port
        self.topic = unique()
        self.own: Tansu | None = None

    async def behind(self, proxy_port):
        # A client goes to the address the broker advertises: a broker of the test's own advertises the proxy
        self.own = Tansu(self.tansu.binary, advertised=f"127.0.0.1:{proxy_port}")
        await asyncio.get_running_loop().run_in_executor(None, self.own.start)
        return self.own.port

    async def cleanup(self):
        if self.own is not None:
            self.own.kill()

    def profile(self, port, wrong_password=False):
        return {
            "connection": {"bootstrap_servers": f"127.0.0.1:{port}", "request_timeout_ms": 3000},
            "topics": [self.topic],
        }


class Pika(Transport):
    name = "pika"
    port = 5672

    async def prepare(self, request):
        import aio_pika

        service("127.0.0.1", 5672, "RabbitMQ")
        self.queue = unique()
        self.connection = await aio_pika.connect(URL)
        channel = await self.connection.channel()
        await channel.declare_queue(self.queue, exclusive=True)

    async def cleanup(self):
        await self.connection.close()

    def profile(self, port, wrong_password=False):
        password = "wrong" if wrong_password else "guest"
        return {"connection": {"url": f"amqp://guest:{password}@127.0.0.1:{port}/"}, "routing_key": self.queue}


class Nats(Transport):
    name = "nats"
    port = 4222

    async def prepare(self, request):
        service("127.0.0.1", 4222, "NATS")
        self.subject = unique()

    def profile(self, port, wrong_password=False):
        connection = {"servers": f"nats://127.0.0.1:{port}", "connect_timeout": 2}
        if wrong_password:
            connection.update(user="evbus", password="wrong")
        return {"connection": connection, "subject": self.subject}

    def refusing_server(self, tmp_path):
        binary = _binary("nats-server")
        return ServerProcess(
            "nats-server", lambda port: [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "evbus", "--pass", "right"]
        )


class Redis(Transport):
    name = "redis"
    port = 6379

    async def prepare(self, request):
        service("127.0.0.1", 6379, "Redis")
        self.stream = unique()

    def profile(self, port, wrong_password=False):
        connection = {"host": "127.0.0.1", "port": port, "socket_connect_timeout": 2}
        if wrong_password:
            connection["password"] = "wrong"
        return {"connection": connection, "stream": self.stream, "maxlen": 1000}

    def refusing_server(self, tmp_path):
        binary = _binary("redis-server")
        return ServerProcess(
            "redis-server",
            lambda port: [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--requirepass", "right"],
        )


class Mqtt(Transport):
    name = "mqtt"
    port = 1883

    async def prepare(self, request):
        service("127.0.0.1", 1883, "Mosquitto")
        self.topic = unique()

    def profile(self, port, wrong_password=False):
        connection = {"hostname": "127.0.0.1", "port": port, "timeout": 2}
        if wrong_password:
            connection.update(username="evbus", password="wrong")
        return {"connection": connection, "topic": self.topic, "qos": 1}

    def refusing_server(self, tmp_path):
        return _mosquitto_refusing(tmp_path)


TRANSPORTS = {t.name: t for t in (Kafka, Pika, Nats, Redis, Mqtt)}
STATES = ("up", "down", "refusing", "late", "lost")
MOMENTS = ("idle", "at_once", "mid_stream", "backoff")


def _cells():
    for name, transport in TRANSPORTS.items():
        for state in STATES:
            if state == "refusing" and not transport.auth:
                continue
            for moment in MOMENTS:
                if state == "up" and moment == "backoff":
                    continue  # a broker that is up gives no backoff to stop in
                for spool in (False, True):
                    yield pytest.param(name, state, moment, spool, id=f"{name}-{state}-{moment}-{'spool' if spool else 'nospool'}")
    for moment in ("idle", "at_once", "mid_stream"):
        for spool in (False, True):
            yield pytest.param("internal", "up", moment, spool, id=f"internal-up-{moment}-{'spool' if spool else 'nospool'}")


@pytest.fixture
def lifecycle_config(hub, monkeypatch, tmp_path):
    """Retries that outlast a late broker; the spool in the test's directory when asked."""

    def configure(spool: bool):
        monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "1000")
        monkeypatch.setenv("EVBUS_RETRY_SECONDS", "20")
        monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.05")
        monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "0.2")
        monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "3")
        if spool:
            monkeypatch.setenv("EVBUS_SPOOL", str(tmp_path / "spool.db"))
        hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)

    return configure


async def _library_tasks_left(before: set[asyncio.Task], within: float = 2.0) -> list[asyncio.Task]:
    """
    The client library's tasks, but those ``before``, still running ``within`` seconds from now (a task
    that a close cancelled ends in a few loop turns).
    """
    deadline = time.monotonic() + within
    while (left := [task for task in library_tasks() if task not in before]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return left


def _dead_letters(hub) -> list[dict]:
    path = hub.evbus.deadletter.store().path
    try:
        with open(path, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        return []


async def _produce(hub, count: int, put: list):
    """Put events until ``count`` or until the bus is stopped; ``put`` collects what was accepted."""
    for n in range(count):
        try:
            await hub.evbus.broker.put(body={"n": n})
        except BusClosedError:
            return
        put.append(n)
        if n % 10 == 9:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("name,state,moment,spool", list(_cells()))
async def test_lifecycle(hub, request, tmp_path, lifecycle_config, name, state, moment, spool):
    lifecycle_config(spool)
    proxy = server = transport = None
    if name == "internal":
        acct_data = {"internal": {"default": {"routing_key": "lifecycle"}}}
    else:
        transport = TRANSPORTS[name]()
        await transport.prepare(request)
        port, wrong = transport.port, False
        if state == "down":
            port = _free_port()
        elif state == "late":
            proxy = Proxy(transport.port, _free_port())
            port = proxy.port
        elif state == "lost":
            port = _free_port()
            proxy = await Proxy(await transport.behind(port), port).start()
        elif state == "refusing":
            server = transport.refusing_server(tmp_path)
            if server is not None:
                await asyncio.get_running_loop().run_in_executor(None, server.start)
                port = server.port
            wrong = True
        acct_data = {name: {"default": transport.profile(port, wrong_password=wrong)}}

    contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
    before = set(library_tasks())  # (the test's own connection)
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    put: list[int] = []
    producer = None
    try:
        await hub.evbus.init.join(timeout=10)
        if state == "late":
            asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(proxy.start()))
        elif state == "lost":
            # One event through, then the broker is gone
            await hub.evbus.broker.put(body={"n": -1})
            put.append(-1)
            lane = hub.evbus.route.all_lanes()[0]
            await wait_for(lambda: lane.published == 1, 20, "the first event published")
            await proxy.cut()
        if moment == "idle":
            pass
        elif moment == "mid_stream":
            producer = asyncio.create_task(_produce(hub, 400, put))
            await wait_for(lambda: len(put) >= 100 or producer.done(), 20, "100 events put")
        else:
            for n in range(EVENTS):
                await hub.evbus.broker.put(body={"n": n})
                put.append(n)
            if moment == "backoff":
                lane = hub.evbus.route.all_lanes()[0]
                await wait_for(
                    lambda: lane.retried >= 1 or lane.failed >= 1 or lane.published == EVENTS,
                    20,
                    "a retry, a failure or every event published",
                )
        started = time.monotonic()
        await hub.evbus.init.stop(timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
        if producer is not None:
            await asyncio.wait_for(producer, 5)
        await asyncio.wait_for(listener, 5)
        left = await _library_tasks_left(before)
    finally:
        if not listener.done():
            listener.cancel()
        if producer is not None and not producer.done():
            producer.cancel()
        if proxy is not None:
            await proxy.cut()
        if server is not None:
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
        if transport is not None:
            await transport.cleanup()

    assert took <= BOUND, f"stop() took {took:.1f} s"
    assert not left, f"left running after stop(): {left}"
    stats = hub.evbus.broker.stats()
    lanes = stats["lanes"]
    assert len(lanes) == 1
    published, failed = lanes[0]["published"], lanes[0]["failed"]
    spooled = stats["spool_depth"] or 0
    assert stats["put"] == len(put)
    assert stats["put"] == published + failed + spooled, stats
    if spool:
        # everything settled is off the spool: a clean stop leaves nothing to re-deliver
        assert spooled == 0
    dead = _dead_letters(hub)
    assert len(dead) == failed
    if state == "up":
        assert failed == 0 and published == len(put)
    elif state == "lost":
        assert published >= 1
    elif state in ("down", "refusing"):
        assert published == 0 and failed == len(put)
        # each dead letter says what the destination answered, not only that time ran out
        assert all("stop timeout" not in d["error"] or "the last publish to it failed" in d["error"] for d in dead)


@pytest.mark.parametrize("name", ["nats", "redis"])
@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("events", [0, 1])
async def test_stop_at_loop_turns_after_join(hub, name, turns, events):
    """
    A stop that reaches the lanes while they connect: nats-py and redis-py
    wait with asyncio.wait_for, which can lose the cancel on Python 3.11.
    """
    if name == "nats":
        service("127.0.0.1", 4222, "NATS")
        acct_data = {"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": unique()}}}
    else:
        service("127.0.0.1", 6379, "Redis")
        acct_data = {"redis": {"default": {"connection": {"url": REDIS_URL}, "stream": unique(), "maxlen": 100}}}
    contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    for _ in range(events):
        await hub.evbus.broker.put(body={"n": 1})
    for _ in range(turns):
        await asyncio.sleep(0)
    started = time.monotonic()
    try:
        await asyncio.wait_for(hub.evbus.init.stop(timeout=STOP_TIMEOUT), BOUND + 5)
    finally:
        took = time.monotonic() - started
        if not listener.done():
            listener.cancel()
    await asyncio.wait_for(listener, 5)
    assert took <= BOUND, f"stop() took {took:.1f} s"
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert lane["published"] == events and lane["failed"] == 0


async def test_stop_while_a_plugin_swallows_a_cancel(hub, running):
    """The lane's open loses the first cancel: the lane is cancelled again and ends at once."""
    add_ingress(hub, "swallow")
    await running({"swallow": {"default": {"connect": 0.3}}})
    started = time.monotonic()
    assert await hub.evbus.init.stop(timeout=STOP_TIMEOUT) == 0
    assert time.monotonic() - started <= BOUND
    assert hub.ingress.swallow.SWALLOWED == 1
    assert hub.ingress.swallow.CLOSED == 1


async def test_events_of_a_lane_that_swallows_cancels_are_dead_lettered(hub, running, monkeypatch):
    """Connecting outlasts the stop timeout and loses every cancel for a while: stop still returns in bound."""
    add_ingress(hub, "swallow")
    await running({"swallow": {"default": {"connect": 60, "swallow": 1000}}})
    for n in range(5):
        await hub.evbus.broker.put(body={"n": n})
    started = time.monotonic()
    try:
        undelivered = await hub.evbus.init.stop(timeout=0.2)
    finally:
        took = time.monotonic() - started
        await hub.ingress.swallow.release()
    assert took <= 0.2 + 2 * CLOSE_GRACE + 1
    # open() never ends on its own here: it was left behind, and every event is accounted for
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert undelivered == 5 and lane["failed"] == 5 and lane["published"] == 0
    assert len(_dead_letters(hub)) == 5


async def test_a_cancelled_stop_is_not_swallowed(hub, running):
    """Cancelling the task that waits in stop() cancels it, even while a lane swallows cancels."""
    add_ingress(hub, "swallow")
    await running({"swallow": {"default": {"connect": 60, "swallow": 1000}}})
    await hub.evbus.broker.put(body={"n": 1})
    stopping = asyncio.create_task(hub.evbus.init.stop(timeout=0.2))
    try:
        # the drain times out; the lane's task then loses every cancel
        await wait_for(lambda: hub.ingress.swallow.SWALLOWED >= 2, 5, "cancels lost while closing")
        stopping.cancel()
        done, _ = await asyncio.wait([stopping], timeout=2)
        assert done and stopping.cancelled()
    finally:
        await hub.ingress.swallow.release()


async def test_a_listener_cancelled_while_closing_ends(hub):
    """The listener's own cancel reaches it while a lane it closes swallows cancels; stop() says so."""
    add_ingress(hub, "swallow")
    contexts = await hub.evbus.acct.profiles(acct_data={"swallow": {"default": {"connect": 60, "swallow": 1000}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    await hub.evbus.broker.put(body={"n": 1})
    stopping = asyncio.create_task(hub.evbus.init.stop(timeout=0.2))
    try:
        await wait_for(lambda: hub.ingress.swallow.SWALLOWED >= 2, 5, "cancels lost while closing")
        listener.cancel()
        done, _ = await asyncio.wait([listener], timeout=2)
        assert done and listener.cancelled()
        with pytest.raises(BusStoppedError):
            await asyncio.wait_for(stopping, 2)
    finally:
        await hub.ingress.swallow.release()


async def test_a_listener_cancelled_instead_of_stopped_says_what_stays_queued(hub, caplog):
    """Events queued when the listener is cancelled stay for the next start(), with a warning that counts them."""
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    for n in range(5):
        hub.evbus.broker.put_nowait(body={"n": n})
    listener.cancel()  # before the listener takes them
    done, _ = await asyncio.wait([listener], timeout=5)
    assert done and listener.cancelled()
    assert "ended without stop(): 5 event(s) stay queued, for the next start(): lost if the process ends now" in (
        caplog.text
    )
    hub.evbus.broker.put_nowait(body={"n": 5})  # still taken
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    assert await take_json(await hub.ingress.internal.get(), 6) == [{"n": n} for n in range(6)]
    assert await hub.evbus.init.stop(timeout=5) == 0
    await asyncio.wait([listener], timeout=5)
    assert caplog.text.count("ended without stop()") == 1
