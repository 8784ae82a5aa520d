"""The kafka ingress against a real Kafka-compatible broker (Tansu), checked with an independent consumer."""
import asyncio
import contextlib
import json
import ssl

import pytest
from dict_tools.data import NamespaceDict

from evbus.exc import ListenError
from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from tests.brokers import Tansu
from tests.brokers import consume
from tests.brokers import unique
from tests.conftest import library_tasks
from tests.conftest import take_json
from tests.conftest import wait_for
from tests.integration.base import Arrived
from tests.integration.base import Reader
from tests.integration.base import TransportCase

pytestmark = pytest.mark.integration


class KafkaReader(Reader):
    """Topics of the test's own, read from the start by an aiokafka consumer."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap

    async def destination(self) -> str:
        return unique()

    async def take(self, destination: str, count: int) -> list[Arrived]:
        arrived = []
        for record in await consume(self.bootstrap, destination, count):
            headers = {name: value.decode() for name, value in record.headers}
            arrived.append(
                Arrived(record.value, headers.get("content-type"), headers.get("id"), float(headers["timestamp"]), record)
            )
        return arrived


class TestKafka(TransportCase):
    provider = plugin = "kafka"
    no_destination_says = "no Kafka topic"
    wrong_port_says = ("cannot connect to kafka://127.0.0.1:1",)
    # aiokafka waits for the broker up to the publish timeout on each attempt
    wrong_port_env = {"EVBUS_PUBLISH_TIMEOUT": "2"}
    ordered_options = {"key": "k1", "connection": {"acks": "all"}}

    @pytest.fixture
    def reader(self, tansu) -> KafkaReader:
        self.bootstrap = tansu.bootstrap
        return KafkaReader(tansu.bootstrap)

    def profile(self, destination: str | None, **options) -> dict:
        connection = {"bootstrap_servers": self.bootstrap, **options.pop("connection", {})}
        return {**({"topics": [destination]} if destination else {}), "connection": connection, **options}

    def wrong_port_profile(self, secret: str) -> dict:
        return {
            "topics": ["t"],
            "connection": {
                "bootstrap_servers": "127.0.0.1:1",
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "user",
                "sasl_plain_password": secret,
            },
        }

    async def live_connection(self, hub):
        await wait_for(lambda: any(p.ready for p in hub.ingress.kafka.CONNECTIONS.values()), 10, "the producer at start")
        [producer] = hub.ingress.kafka.CONNECTIONS.values()
        return producer, producer.producer

    def still_open(self, holder, client) -> bool:
        return holder.producer is client

    def closed(self, holder, client) -> bool:
        return holder.producer is None

    def nothing_kept(self, hub) -> bool:
        return hub.ingress.kafka.CONNECTIONS == {}

    def check_ordered(self, arrived: list[Arrived], destination: str):
        assert all(m.raw.key == b"k1" for m in arrived)

    def check_routed(self, message: Arrived, destination: str):
        # The routing key is the message key too
        assert message.raw.key == destination.encode()


async def test_several_topics(hub, running, tansu, topic):
    second = topic + "-2"
    profile = {"topics": [topic, second], "partition": 0, "connection": {"bootstrap_servers": tansu.bootstrap}}
    await running({"kafka": {"default": profile}})
    for n in range(10):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    for name in (topic, second):
        assert [json.loads(m.value) for m in await consume(tansu.bootstrap, name, 10)] == list(range(10))


async def test_fan_out_to_internal_rabbitmq_and_kafka(hub, running, tansu, topic, amqp):
    from tests.brokers import URL

    queue = await amqp.queue()
    await running(
        {
            "internal": {"*": {}},
            "pika": {"*": {"connection": {"url": URL}, "routing_key": queue}},
            "kafka": {"*": {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": tansu.bootstrap}}},
        }
    )
    for n in range(100):
        await hub.evbus.broker.put(body=n, profile="any")
    assert await take_json(await hub.ingress.internal.get(), 100) == list(range(100))
    assert [json.loads(m.body) for m in await amqp.take(queue, 100)] == list(range(100))
    assert [json.loads(m.value) for m in await consume(tansu.bootstrap, topic, 100)] == list(range(100))


async def test_broker_killed_and_restarted_mid_stream(hub, running, tansu, topic, monkeypatch):
    """
    Tansu killed and started again while events flow. Its memory storage forgets
    what it held, so a consumer reads throughout, and an event counts as lost
    only if evbus counted it published yet no consumer saw it while the broker lived.
    """
    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "1000")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "60")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.1")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "1")
    monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "3")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    import aiokafka

    seen: set = set()
    stop_reading = asyncio.Event()
    generation = [0]  # bumped when the broker restarted: the reader starts over from the beginning

    async def read():
        while not stop_reading.is_set():
            mine = generation[0]
            # The restarted broker makes the topic again when evbus first writes to it:
            # metadata refreshed each second lets a reader that started before that find it.
            consumer = aiokafka.AIOKafkaConsumer(
                topic, bootstrap_servers=tansu.bootstrap, auto_offset_reset="earliest", request_timeout_ms=3000,
                metadata_max_age_ms=1000,
            )
            try:
                await consumer.start()
                while not stop_reading.is_set() and generation[0] == mine:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        seen.update(json.loads(r.value) for r in records)
            except Exception:
                await asyncio.sleep(0.2)
            finally:
                try:
                    await consumer.stop()
                except Exception:
                    pass

    await running({"kafka": {"default": {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": tansu.bootstrap}}}})
    reader = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    total = 2000
    try:
        for n in range(total):
            await hub.evbus.broker.put(body=n)
            if n % 50 == 0:
                await asyncio.sleep(0.01)
            if n == 700:
                await wait_for(lambda: len(seen) >= 600, 30, "the reader before the kill")
                tansu.kill()
                await asyncio.sleep(1)
                await loop.run_in_executor(None, tansu.start)
                generation[0] += 1
        undelivered = await hub.evbus.init.stop(timeout=120)
        assert undelivered == 0
        await wait_for(lambda: any(n > 1000 for n in seen), 30, "an event put after the restart at the reader")
    finally:
        stop_reading.set()
        await asyncio.wait_for(reader, 20)
        if tansu.process.poll() is not None:
            tansu.start()
    lane = hub.evbus.broker.stats()["lanes"][0]
    # Every event was acknowledged by a broker: none given up, none left at stop.
    # (aiokafka's own retries may carry a short outage; evbus's retries take over beyond them.)
    assert lane["published"] == total and lane["failed"] == 0
    # Delivery went on after the restart. What the restarted memory broker kept
    # of its new log is not evbus's to assert: Tansu's memory storage has been
    # seen to drop acknowledged batches after a restart, for a raw aiokafka
    # producer too (losing nothing is shown against RabbitMQ and by the spool).
    assert any(n > 1000 for n in seen)


def test_ssl_context_from_any_subset_of_files(hub, tmp_path):
    import subprocess

    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=evbus-test"],
        check=True, capture_output=True, timeout=60,
    )
    build = hub.ingress.kafka.ssl_context
    assert build({}).check_hostname is True
    assert build({"ca_file": str(cert)}).verify_mode == ssl.CERT_REQUIRED
    assert isinstance(build({"cert_file": str(cert), "key_file": str(key)}), ssl.SSLContext)
    assert build({"ca_file": str(cert), "check_hostname": False}).check_hostname is False
    with pytest.raises(ValueError) as info:
        build({"ca_file": str(tmp_path / "missing.pem")})
    assert "missing.pem" in str(info.value) and "ca_file" in str(info.value)
    with pytest.raises(ValueError) as info:
        build({"cert_file": str(cert), "key_file": str(tmp_path / "nokey.key")})
    assert "nokey.key" in str(info.value)


async def test_broker_down_at_start_comes_up_within_the_budget(hub, running, topic, monkeypatch, caplog):
    from tests.brokers import Tansu
    from tests.brokers import _tansu_binary

    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "100")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "30")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.1")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "0.5")
    monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "2")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    late = Tansu(_tansu_binary())  # a port where nothing listens yet
    try:
        await running({"kafka": {"default": {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": late.bootstrap}}}})
        for n in range(200):
            await hub.evbus.broker.put(body=n)
        await wait_for(lambda: "Cannot connect" in caplog.text or "failed (attempt" in caplog.text, 10, "the broker reported down")
        await asyncio.get_running_loop().run_in_executor(None, late.start)
        assert await hub.evbus.init.stop(timeout=60) == 0
        lane = hub.evbus.broker.stats()["lanes"][0]
        assert (lane["published"], lane["failed"]) == (200, 0)
        assert [json.loads(m.value) for m in await consume(late.bootstrap, topic, 200)] == list(range(200))
    finally:
        late.kill()


async def test_refused_sasl_login_fails_at_once(hub, running, tansu, topic, error_sink, caplog):
    """Tansu refuses every SASL mechanism: one attempt, and a message that names the profile's options."""
    connection = {
        "bootstrap_servers": tansu.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "evbus",
        "sasl_plain_password": "sasl-s3cret",
    }
    await running({"kafka": {"default": {"topics": [topic], "connection": connection}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1
    assert isinstance(error["exception"], LoginRefusedError)
    text = str(error["exception"])
    assert f"kafka://{tansu.bootstrap}" in text and "refused the login" in text and "sasl_plain_password" in text
    assert "sasl-s3cret" not in caplog.text + repr(error_sink)
    assert hub.evbus.broker.stats()["lanes"][0]["retried"] == 0


async def test_message_over_max_request_size_fails_at_once_and_alone(hub, running, tansu, topic, error_sink):
    profile = {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": tansu.bootstrap, "max_request_size": 10000}}
    await running({"kafka": {"default": profile}})
    for body in (0, 1, "x" * 20000, 3, 4):
        await hub.evbus.broker.put(body=body)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1 and isinstance(error["exception"], MessageTooLargeError)
    assert "max_request_size" in str(error["exception"])
    assert [json.loads(m.value) for m in await consume(tansu.bootstrap, topic, 4)] == [0, 1, 3, 4]
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"], lane["retried"]) == (4, 1, 0)


def test_retriable_says_no_to_refusals_and_yes_to_timeouts(hub):
    import aiokafka.errors as errors

    retriable = hub.ingress.kafka.retriable
    for refusal in (
        errors.SaslAuthenticationFailed,
        errors.AuthenticationFailedError,
        errors.UnsupportedSaslMechanismError,
        errors.TopicAuthorizationFailedError,
        errors.ClusterAuthorizationFailedError,
        errors.MessageSizeTooLargeError,
        errors.RecordTooLargeError,
    ):
        assert not retriable(refusal("refused")), refusal
    for transient in (
        errors.KafkaConnectionError,
        errors.KafkaTimeoutError,
        errors.RequestTimedOutError,
        errors.NotLeaderForPartitionError,
        errors.UnknownTopicOrPartitionError,
        errors.UnknownError,
    ):
        assert retriable(transient("transient")), transient


async def test_listen_that_lost_its_broker_leaves_nothing_of_aiokafka_running(hub, tansu):
    """
    aiokafka's stop() ends at the first fetch under way when the broker is
    gone, before it closes its client: the listener closes the rest, so no
    metadata task goes on retrying (and logging) the broker after the error.
    """
    import aiokafka

    broker = Tansu(tansu.binary)
    broker.start()
    try:
        topic = unique()
        ctx = NamespaceDict(acct=NamespaceDict(topics=[topic], connection={"bootstrap_servers": broker.bootstrap}))
        arrived = asyncio.Queue()

        async def listen():
            try:
                async for message in hub.ingress.kafka.listen(ctx):
                    arrived.put_nowait(message)
            except ListenError as e:
                return e

        listener = asyncio.create_task(listen())
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for _ in range(60):  # the consumer reads from the end, once it has joined the topic
                await producer.send_and_wait(topic, b"1")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        assert await arrived.get() == (topic, b"1")
                        break
            else:
                pytest.fail("the listener got nothing in 30 s")
        finally:
            await producer.stop()
        broker.kill()
        error = await asyncio.wait_for(listener, 60)
    finally:
        broker.kill()
    assert "lost the connection" in str(error)
    assert not library_tasks()


async def test_stop_after_the_broker_was_lost_leaves_nothing_of_aiokafka_running(hub, running, tansu):
    """
    The broker gone while events wait in aiokafka's producer, with its own
    retries of 40 s (its default request timeout): stop() gives the producer
    its grace to flush, then ends what aiokafka's stop() left (its sender,
    its metadata task, its connections), which would otherwise go on
    retrying, and logging, for as long as the program runs.
    """
    broker = Tansu(tansu.binary)
    broker.start()
    try:
        topic = unique()
        await running({"kafka": {"default": {"topics": [topic], "connection": {"bootstrap_servers": broker.bootstrap}}}})
        await hub.evbus.broker.put(body=0)
        lane = hub.evbus.route.all_lanes()[0]
        await wait_for(lambda: lane.published == 1, 30, "the first event published")
        broker.kill()
        for n in range(1, 21):
            await hub.evbus.broker.put(body=n)
        await wait_for(lambda: lane.stats()["in_flight"] > 0, 10, "events handed to aiokafka")
        with contextlib.suppress(Exception):  # (a stop that timed out says so; what counts is what is left)
            await hub.evbus.init.stop(timeout=1)
    finally:
        broker.kill()
    stats = hub.evbus.broker.stats()
    assert stats["put"] == 21
    assert stats["lanes"][0]["published"] + stats["lanes"][0]["failed"] == 21, stats
    await wait_for(lambda: not library_tasks(), 2, "aiokafka's tasks to end")
