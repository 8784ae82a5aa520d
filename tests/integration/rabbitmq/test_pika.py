"""The pika ingress against a real RabbitMQ, checked with an independent aio-pika consumer."""
import asyncio
import contextlib
import json
import subprocess
import time

import msgpack
import pytest

from evbus.exc import LoginRefusedError
from evbus.exc import RefusedError
from tests.brokers import URL
from tests.brokers import unique
from tests.conftest import take_json
from tests.conftest import wait_for
from tests.integration.base import Arrived
from tests.integration.base import Reader
from tests.integration.base import RestartCase
from tests.integration.base import TransportCase

pytestmark = pytest.mark.integration


class AmqpReader(Reader):
    """Queues of the test's own on the default exchange, read by an aio-pika consumer."""

    def __init__(self, amqp):
        self.amqp = amqp

    async def destination(self) -> str:
        return await self.amqp.queue()

    async def take(self, destination: str, count: int) -> list[Arrived]:
        return [
            Arrived(m.body, m.content_type, m.message_id, m.timestamp.timestamp(), m)
            for m in await self.amqp.take(destination, count)
        ]


def _rabbitmqctl(*args: str):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


class RabbitApp:
    """The machine's RabbitMQ, whose app a test stops and starts again (``rabbitmqctl stop_app``/``start_app``)."""

    port = 5672

    def __init__(self):
        self.running = True

    def stop(self):
        _rabbitmqctl("stop_app")
        self.running = False

    def start(self):
        _rabbitmqctl("start_app")
        self.running = True


class TestRabbitMQ(TransportCase, RestartCase):
    """The pika plugin on the default exchange: the routing key (the profile's or the event's) names the queue."""

    provider = plugin = "pika"
    # No routing key: the default exchange has no queue for '' and returns the message
    no_destination_says = "no queue is bound to routing key '' on the default exchange (NO_ROUTE)"
    # aiormq's error names the address its own way; the log says 127.0.0.1:1
    wrong_port_says = ("cannot connect to amqp://127.0.0.1:1/",)

    @pytest.fixture
    def reader(self, amqp) -> AmqpReader:
        self.amqp = amqp
        return AmqpReader(amqp)

    def profile(self, destination: str | None, **options) -> dict:
        return {"connection": {"url": URL}, **({"routing_key": destination} if destination else {}), **options}

    def wrong_port_profile(self, secret: str) -> dict:
        return {"connection": {"url": f"amqp://guest:{secret}@127.0.0.1:1/"}, "routing_key": "x"}

    async def live_connection(self, hub):
        await wait_for(lambda: len(hub.ingress.pika.CONNECTIONS) == 1, 10, "the connection at start")
        [publisher] = hub.ingress.pika.CONNECTIONS.values()
        await wait_for(lambda: publisher.raw_channel is not None, 10, "the channel at start")
        return publisher, publisher.connection

    def still_open(self, holder, client) -> bool:
        return holder.connection is client and not client.is_closed

    def closed(self, holder, client) -> bool:
        return client.is_closed

    def nothing_kept(self, hub) -> bool:
        return hub.ingress.pika.CONNECTIONS == {}

    def check_ordered(self, arrived: list[Arrived], destination: str):
        assert all(m.raw.delivery_mode.value == 1 for m in arrived)  # transient unless the profile says persistent

    async def check_stored(self, reader: AmqpReader, destination: str, count: int):
        # Confirmed means in the queue: all there now, without waiting
        assert await reader.amqp.ready(destination) == count

    def check_routed(self, message: Arrived, destination: str):
        assert (message.raw.exchange, message.raw.routing_key) == ("", destination)

    @pytest.fixture
    def restart_server(self, rabbitmq):
        app = RabbitApp()
        yield app
        _rabbitmqctl("start_app")  # whatever happened

    async def restart_profile(self, server) -> dict:
        """A durable queue (it survives the restart of the app) and persistent messages."""
        import aio_pika

        self.restart_queue = f"evbus-restart-{time.time_ns()}"
        connection = await aio_pika.connect(URL)
        try:
            channel = await connection.channel()
            await channel.declare_queue(self.restart_queue, durable=True)
        finally:
            await connection.close()
        return {"connection": {"url": URL}, "routing_key": self.restart_queue, "persistent": True}

    @contextlib.asynccontextmanager
    async def restart_reader(self, server):
        """Reads the queue after the stop (every event arrives, at least once), and removes it."""
        import aio_pika

        taken: list = []
        connection = None

        async def seen() -> list:
            nonlocal connection
            if connection is None:
                connection = await aio_pika.connect(URL)
            queue = await (await connection.channel()).declare_queue(self.restart_queue, durable=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                taken.append(json.loads(message.body))
            return taken

        try:
            yield seen
        finally:
            if connection is not None:
                channel = await connection.channel()
                await channel.queue_delete(self.restart_queue)
                await connection.close()


async def test_routing_key_from_event_wins(hub, running, amqp):
    from_profile, from_event = await amqp.queue(), await amqp.queue()
    await running({"amqp": {"default": {"connection": {"url": URL}, "routing_key": from_profile}}})
    await hub.evbus.broker.put(routing_key=from_event, body="to-event-queue")
    await hub.evbus.broker.put(body="to-profile-queue")
    await hub.evbus.init.stop()
    assert [m.body for m in await amqp.take(from_event, 1)] == [b'"to-event-queue"']
    assert [m.body for m in await amqp.take(from_profile, 1)] == [b'"to-profile-queue"']


async def test_named_exchange_with_host_and_port(hub, running, amqp):
    import aio_pika

    exchange = await amqp.channel.declare_exchange("evbus-test-direct", aio_pika.ExchangeType.DIRECT, auto_delete=True)
    queue = await amqp.queue(exchange=exchange.name, binding="orders")
    await running(
        {
            "rabbitmq": {
                "default": {
                    "connection": {"host": "127.0.0.1", "port": 5672, "login": "guest", "password": "guest"},
                    "exchange": exchange.name,
                    "routing_key": "orders",
                    "persistent": True,
                }
            }
        }
    )
    for n in range(20):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    messages = await amqp.take(queue, 20)
    assert [json.loads(m.body) for m in messages] == list(range(20))
    assert all(m.delivery_mode.value == 2 for m in messages)


async def test_missing_exchange_is_reported(hub, running, error_sink, caplog):
    await running(
        {"pika": {"default": {"connection": {"url": URL}, "exchange": "evbus-no-such-exchange", "routing_key": "x"}}}
    )
    await wait_for(lambda: "Cannot connect" in caplog.text, 10, "the warning at start")
    assert "evbus-no-such-exchange" in caplog.text
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 20, "the give-up")
    assert "NOT_FOUND" in str(error_sink[0]["exception"])


async def test_fan_out_to_internal_and_rabbitmq(hub, running, amqp):
    queue = await amqp.queue()
    await running({"internal": {"*": {}}, "pika": {"*": {"connection": {"url": URL}, "routing_key": queue}}})
    for n in range(50):
        await hub.evbus.broker.put(body=n, profile=f"p{n % 2}")
    assert await take_json(await hub.ingress.internal.get(), 50) == list(range(50))
    assert [json.loads(m.body) for m in await amqp.take(queue, 50)] == list(range(50))


async def test_profiles_sharing_a_connection_open_it_once(hub, running, amqp, monkeypatch):
    import aio_pika

    opened = []
    real_connect = aio_pika.connect

    async def counting_connect(*args, **kwargs):
        connection = await real_connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(aio_pika, "connect", counting_connect)
    queue = await amqp.queue()
    await running({"pika": {name: {"connection": {"url": URL}, "routing_key": queue} for name in ("a", "b", "c")}})
    for profile in ("a", "b", "c"):
        await hub.evbus.broker.put(body=profile, profile=profile)
    assert sorted(json.loads(m.body) for m in await amqp.take(queue, 3)) == ["a", "b", "c"]
    assert len(opened) == 1 and len(hub.ingress.pika.CONNECTIONS) == 1
    await hub.evbus.init.stop()
    assert opened[0].is_closed


async def test_a_receipt_cancelled_elsewhere_is_a_failed_publish_not_a_dead_lane(hub, amqp):
    """A confirmation task cancelled by someone else: the lane retries, it does not end."""
    queue = await amqp.queue()
    contexts = await hub.evbus.acct.profiles(
        acct_data={"pika": {"default": {"connection": {"url": URL}, "routing_key": queue}}}
    )
    # The router makes the lane and schedules its task; wrap its send before the task runs
    [lane] = hub.evbus.route.router(contexts).lanes
    send = lane._send
    cancelled = []

    async def send_and_cancel_once(ctx, routing_key, event):
        receipt = await send(ctx, routing_key, event)
        if not cancelled:
            receipt.cancel()
            cancelled.append(event.id)
        return receipt

    lane._send = send_and_cancel_once
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    for n in range(5):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 10)
    assert cancelled and lane.retried >= 1 and lane.published == 5
    assert sorted({json.loads(m.body) for m in await amqp.take(queue, 5)}) == [0, 1, 2, 3, 4]


async def test_refused_login_fails_at_once_saying_what_to_fix(hub, running, error_sink, caplog):
    """guest/wrong: RabbitMQ's ACCESS_REFUSED is dead-lettered after one attempt, not retried."""
    url = "amqp://guest:wrong-pw-123@127.0.0.1:5672/"
    await running({"pika": {"default": {"connection": {"url": url}, "routing_key": "x"}}})
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 20, "the give-up")
    [error] = error_sink
    assert error["attempts"] == 1
    assert isinstance(error["exception"], LoginRefusedError)
    text = str(error["exception"])
    assert "ACCESS_REFUSED" in text and "check the profile's login and password" in text
    assert "127.0.0.1:5672" in text and "wrong-pw-123" not in text + caplog.text
    [dead] = hub.evbus.deadletter.read()
    assert dead["attempts"] == 1 and "refused the login" in dead["error"]
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["retried"], lane["failed"], lane["down"]) == (0, 1, False)


async def test_unroutable_message_is_returned_and_dead_lettered(hub, running, amqp, error_sink):
    """
    mandatory (the default): a message no queue is bound to take fails, once, naming
    the exchange and the routing key; the events around it are delivered once each.
    ``mandatory: false``: RabbitMQ drops it, and it counts as published.
    """
    bound, unbound = unique("bound"), unique("unbound")
    queue = await amqp.queue(exchange="amq.direct", binding=bound)
    connection = {"url": URL}
    await running(
        {
            "pika": {
                "strict": {"connection": connection, "exchange": "amq.direct", "routing_key": bound},
                "lenient": {"connection": connection, "exchange": "amq.direct", "mandatory": False},
            }
        }
    )
    for n in range(10):
        await hub.evbus.broker.put(routing_key=unbound if n % 3 == 0 else None, body=n, profile="strict")
    await hub.evbus.broker.put(routing_key=unbound, body="dropped", profile="lenient")
    await hub.evbus.init.stop()
    assert [json.loads(e["body"]) for e in error_sink] == [0, 3, 6, 9]
    assert {e["attempts"] for e in error_sink} == {1}
    text = str(error_sink[0]["exception"])
    assert isinstance(error_sink[0]["exception"], RefusedError)
    assert f"no queue is bound to routing key '{unbound}' on exchange 'amq.direct' (NO_ROUTE)" in text
    assert "mandatory: false" in text
    assert [json.loads(m.body) for m in await amqp.take(queue, 6)] == [1, 2, 4, 5, 7, 8]
    assert await amqp.empty(queue)  # none sent twice
    lanes = {lane["profile"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert (lanes["strict"]["published"], lanes["strict"]["failed"], lanes["strict"]["retried"]) == (6, 4, 0)
    assert (lanes["lenient"]["published"], lanes["lenient"]["failed"]) == (1, 0)


async def test_returned_message_on_the_default_exchange(hub, running, error_sink):
    missing = unique("no-such-queue")
    await running({"pika": {"default": {"connection": {"url": URL}, "routing_key": missing}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1
    assert f"routing key '{missing}' on the default exchange (NO_ROUTE)" in str(error["exception"])


def test_retriable_says_no_to_refusals(hub):
    import aiormq.exceptions

    retriable = hub.ingress.pika.retriable
    assert not retriable(aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"))
    assert not retriable(aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED - write access refused"))
    assert not retriable(
        aiormq.exceptions.ChannelPreconditionFailed(
            "PRECONDITION_FAILED - message size 209715200 is larger than configured max size 134217728"
        )
    )
    assert retriable(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure"))
    assert retriable(ConnectionResetError("reset"))


def _properties_before(event, persistent: bool):
    """The AMQP properties the plugin gave aiormq's basic_publish before it wrote the frames itself."""
    import datetime

    from aiormq import spec

    return spec.Basic.Properties(
        content_type=event.content_type,
        message_id=event.id,
        timestamp=datetime.datetime.fromtimestamp(int(event.timestamp), tz=datetime.timezone.utc),
        delivery_mode=2 if persistent else 1,
        headers=dict(event.headers) if event.headers else None,
    )


async def _get(channel, queue: str, count: int) -> list:
    """``count`` messages of a queue as aiormq delivers them (raw properties), in order."""
    from aiormq import spec

    messages = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(messages) < count:
        message = await channel.basic_get(queue, no_ack=True)
        if isinstance(message.delivery, spec.Basic.GetEmpty):
            assert loop.time() < deadline, f"only {len(messages)} of {count} messages arrived in {queue}"
            await asyncio.sleep(0.01)
            continue
        messages.append(message)
    return messages


@pytest.mark.parametrize("persistent", [False, True])
async def test_messages_on_the_wire_are_those_aiormq_wrote(hub, amqp, persistent):
    """
    Events sent through the plugin and the same events published with aiormq's
    basic_publish and the properties the plugin built before: a consumer
    decodes the same properties, routing and body.
    """
    from dict_tools import data

    from evbus.types import Event

    queue = await amqp.queue()
    ctx = data.NamespaceDict(
        acct=data.NamespaceDict({"connection": {"url": URL}, "routing_key": queue, "persistent": persistent})
    )
    trace = (
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "k=v"),
    )
    cloudevents = (
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "e-1"),
        ("cloudEvents_source", "/ünï"),
    )
    events = [
        Event(routing_key=queue, body=b'{"n": 1}'),
        Event(routing_key=queue, body=msgpack.packb({"n": 2}), content_type="application/msgpack"),
        Event(routing_key=queue, body=b'{"n": 3}', headers=trace),
        Event(routing_key=queue, body=b'{"n": 4}', headers=trace + cloudevents, timestamp=1764650000.999),
        Event(routing_key=queue, body=b""),
        Event(routing_key=queue, body=bytes(range(256)) * 2000),  # several body frames
    ]
    try:
        receipts = [await hub.ingress.pika.send(ctx, queue, event) for event in events]
        await asyncio.wait_for(asyncio.gather(*receipts), 20)
    finally:
        await hub.ingress.pika.close(ctx)
    raw = await amqp.channel.get_underlay_channel()
    for event in events:
        await raw.basic_publish(
            event.body, routing_key=queue, properties=_properties_before(event, persistent), mandatory=True
        )
    got = await _get(raw, queue, 2 * len(events))
    mine, before = got[: len(events)], got[len(events):]
    for event, message, expected in zip(events, mine, before):
        assert message.header.properties == expected.header.properties
        assert message.header.properties.message_id == event.id
        assert message.body == expected.body == event.body
        assert (message.delivery.exchange, message.delivery.routing_key) == ("", queue)


async def test_a_nacked_event_mid_window_fails_alone(hub, running, amqp, error_sink, monkeypatch):
    """
    RabbitMQ nacks the message that would overflow a reject-publish queue: that
    event fails (one attempt allowed), the events before and after it in the
    same window are confirmed and delivered, in order.
    """
    import aiormq.exceptions

    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "1")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    queue = unique("reject-publish")
    await amqp.channel.declare_queue(
        queue, auto_delete=False, arguments={"x-max-length-bytes": 1000, "x-overflow": "reject-publish"}
    )
    amqp.kept.append(queue)
    await running({"pika": {"default": {"connection": {"url": URL}, "routing_key": queue}}})
    big = "x" * 2000
    for body in [0, 1, 2, 3, 4, big, 5, 6, 7, 8, 9]:
        await hub.evbus.broker.put(body=body)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert json.loads(error["body"]) == big and error["attempts"] == 1
    assert isinstance(error["exception"], aiormq.exceptions.DeliveryError)
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"]) == (10, 1)
    # The events behind the nacked one may have been sent again (at least once)
    delivered = [json.loads(m.body) for m in await amqp.take(queue, await amqp.ready(queue))]
    assert list(dict.fromkeys(delivered)) == list(range(10))
