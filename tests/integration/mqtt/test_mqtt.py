"""The mqtt ingress against a real Mosquitto, checked with an independent aiomqtt client."""
import asyncio
import contextlib
import json

import pytest

from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from evbus.exc import RefusedError
from tests.brokers import close_mqtt_subscriber
from tests.brokers import MQTT_HOST
from tests.brokers import MQTT_PORT
from tests.brokers import mqtt_subscriber
from tests.brokers import unique
from tests.brokers import MqttSubscriber
from tests.conftest import wait_for
from tests.integration.base import Arrived
from tests.integration.base import Reader
from tests.integration.base import RestartCase
from tests.integration.base import TransportCase

pytestmark = pytest.mark.integration

CONNECTION = {"hostname": MQTT_HOST, "port": MQTT_PORT}


@pytest.fixture
async def mqtt5(mqtt_broker):
    """An MQTT 5 subscriber of the test's own: it sees the content type and user properties."""
    import aiomqtt

    subscriber = await mqtt_subscriber(mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5)
    yield subscriber
    await close_mqtt_subscriber(subscriber)


class Mqtt5Reader(Reader):
    """Topics of the test's own, subscribed to (QoS 2) before anything is published."""

    def __init__(self, subscriber: MqttSubscriber):
        self.subscriber = subscriber

    async def destination(self) -> str:
        return await self.subscriber.subscribe(unique("evbus-test/topic"), qos=2)

    async def take(self, destination: str, count: int) -> list[Arrived]:
        arrived = []
        for m in await self.subscriber.take(destination, count):
            properties = dict(m.properties.UserProperty)
            arrived.append(
                Arrived(
                    m.payload,
                    m.properties.ContentType,
                    properties["Evbus-Id"],
                    float(properties["Evbus-Timestamp"]),
                    m,
                )
            )
        return arrived


class TestMqtt(TransportCase, RestartCase):
    """MQTT 5 (the content type and evbus's metadata go in its properties); QoS and 3.1.1 have cases below."""

    provider = plugin = "mqtt"
    no_destination_says = "no MQTT topic"
    wrong_port_says = ("mqtt://127.0.0.1:1",)
    direct_options = {"qos": 1}  # acknowledged

    @pytest.fixture
    def reader(self, mqtt5) -> Mqtt5Reader:
        return Mqtt5Reader(mqtt5)

    def profile(self, destination: str | None, **options) -> dict:
        connection = {**CONNECTION, "protocol": 5}
        return {"connection": connection, **({"topic": destination} if destination else {}), **options}

    def wrong_port_profile(self, secret: str) -> dict:
        connection = {"hostname": "127.0.0.1", "port": 1, "username": "evbus", "password": secret}
        return {"connection": connection, "topic": "x"}

    async def live_connection(self, hub):
        await wait_for(lambda: any(p.ready for p in hub.ingress.mqtt.CONNECTIONS.values()), 10, "the connection at start")
        [publisher] = hub.ingress.mqtt.CONNECTIONS.values()
        return publisher, publisher.paho

    def still_open(self, holder, client) -> bool:
        return holder.paho is client and client.is_connected()

    def closed(self, holder, client) -> bool:
        return not client.is_connected()  # disconnected on stop

    def nothing_kept(self, hub) -> bool:
        return hub.ingress.mqtt.CONNECTIONS == {} and len(hub.ingress.mqtt.BY_CTX) == 0

    def check_ordered(self, arrived: list[Arrived], destination: str):
        assert not any(m.raw.retain for m in arrived)

    def check_routed(self, message: Arrived, destination: str):
        assert str(message.raw.topic) == destination

    def check_wrong_port(self, error: dict):
        assert error["ctx"]["acct"]["connection"]["password"] == "***"

    @pytest.fixture
    def restart_server(self, own_mosquitto):
        """A mosquitto of the test's own: persistence on, sessions and queued messages kept."""
        return own_mosquitto

    async def restart_profile(self, server) -> dict:
        return {"connection": {"hostname": "127.0.0.1", "port": server.port}, "topic": "evbus-test/restart", "qos": 1}

    @contextlib.asynccontextmanager
    async def restart_reader(self, server):
        """A reader with a persistent session at QoS 1 reads throughout (every event reaches it at least once)."""
        import aiomqtt

        from evbus.ingress.mqtt import abandon
        from evbus.ingress.mqtt import disconnect

        connection = {"hostname": "127.0.0.1", "port": server.port}
        seen: set = set()
        subscribed = asyncio.Event()
        stop_reading = asyncio.Event()

        async def read():
            # A connection that hears nothing for 5 s is opened again (the session keeps what
            # it missed): on uvloop a reset can leave aiomqtt's new connection deaf
            while not stop_reading.is_set():
                # Connected and closed as evbus does (abandon, disconnect): aiomqtt's own context
                # manager leaves its housekeeping task and socket to the loop's close
                client = aiomqtt.Client(**connection, identifier="evbus-test-reader", clean_session=False)
                try:
                    try:
                        await client.__aenter__()
                    except BaseException:
                        await abandon(client)
                        raise
                    try:
                        await client.subscribe("evbus-test/restart", qos=1)
                        subscribed.set()
                        messages = aiter(client.messages)
                        while not stop_reading.is_set():
                            message = await asyncio.wait_for(anext(messages), 5)
                            seen.add(json.loads(message.payload))
                    finally:
                        await disconnect(client)
                except (aiomqtt.MqttError, TimeoutError):
                    if not stop_reading.is_set():
                        await asyncio.sleep(0.1)

        async def arrived() -> list:
            return list(seen)

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            yield arrived
        finally:
            # The reader leaves its connection at its next wait: a cancel mid-connect would leave aiomqtt's task
            stop_reading.set()
            done, _ = await asyncio.wait([reader], timeout=30)
            if not done:
                reader.cancel()
                try:
                    await reader
                except asyncio.CancelledError:
                    pass


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_topic_from_profile_body_as_is_and_order(hub, running, mqtt, qos):
    topic = await mqtt.subscribe(unique("evbus-test/topic"), qos=2)
    await running({"mqtt": {"default": {"connection": CONNECTION, "topic": topic, "qos": qos}}})
    for n in range(500):
        await hub.evbus.broker.put(body={"n": n})
    await hub.evbus.init.stop()
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"]) == (500, 0)
    messages = await mqtt.take(topic, 500)
    assert [json.loads(m.payload) for m in messages] == [{"n": n} for n in range(500)]
    assert messages[0].payload == b'{"n": 0}'
    assert {m.qos for m in messages} == {qos}
    assert not any(m.retain for m in messages)


async def test_routing_key_from_event_wins_over_topic(hub, running, mqtt):
    from_profile = await mqtt.subscribe(unique("evbus-test/profile"))
    from_event = await mqtt.subscribe(unique("evbus-test/event"))
    await running({"mqtt": {"default": {"connection": CONNECTION, "topic": from_profile}}})
    await hub.evbus.broker.put(routing_key=from_event, body="to-event-topic")
    await hub.evbus.broker.put(body="to-profile-topic")
    await hub.evbus.init.stop()
    assert [m.payload for m in await mqtt.take(from_event, 1)] == [b'"to-event-topic"']
    assert [m.payload for m in await mqtt.take(from_profile, 1)] == [b'"to-profile-topic"']


async def test_retained_message_reaches_a_later_subscriber(hub, running, mqtt_broker):
    topic = unique("evbus-test/retained")
    await running({"mqtt": {"default": {"connection": CONNECTION, "topic": topic, "retain": True}}})
    await hub.evbus.broker.put(body="last-known")
    await hub.evbus.init.stop()
    later = await mqtt_subscriber(mqtt_broker)
    try:
        await later.subscribe(topic)
        [message] = await later.take(topic, 1)
        assert message.payload == b'"last-known"' and message.retain
        await later.client.publish(topic, b"", qos=1, retain=True)  # clears the retained message
    finally:
        await close_mqtt_subscriber(later)


async def test_topic_with_a_wildcard_is_an_error_not_retried(hub, running, mqtt_broker, error_sink):
    """No wildcards in a topic one publishes to: one attempt, dead-lettered (no topic at all: the shared case)."""
    await running({"mqtt": {"default": {"connection": CONNECTION}}})
    await hub.evbus.broker.put(routing_key="evbus-test/#", body=2)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert "wildcard" in str(error["exception"]).lower() and error["attempts"] == 1
    assert not hub.ingress.mqtt.retriable(error["exception"])
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["retried"], lane["failed"]) == (0, 1)


@pytest.mark.parametrize("own_mosquitto", [{"users": {"evbus": "right-pw"}}], indirect=True)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_refused_login_fails_at_once(hub, running, own_mosquitto, error_sink, caplog, protocol):
    """A CONNACK refusing wrong credentials, or none: one attempt each, saying what to fix."""
    connection = {"hostname": "127.0.0.1", "port": own_mosquitto.port, "protocol": protocol}
    await running(
        {
            "mqtt": {
                "wrong": {"connection": {**connection, "username": "evbus", "password": "wrong-pw"}, "topic": "t"},
                "anonymous": {"connection": connection, "topic": "t"},
                "right": {"connection": {**connection, "username": "evbus", "password": "right-pw"}, "topic": "t"},
            }
        }
    )
    for profile in ("wrong", "anonymous", "right"):
        await hub.evbus.broker.put(body=profile, profile=profile)
    await hub.evbus.init.stop()
    assert sorted(e["acct_profile"] for e in error_sink) == ["anonymous", "wrong"]
    assert [e["attempts"] for e in error_sink] == [1, 1]
    for error in error_sink:
        assert isinstance(error["exception"], LoginRefusedError)
        text = str(error["exception"])
        assert "refused the connection" in text and "check the profile's username and password" in text
        assert f"mqtt://127.0.0.1:{own_mosquitto.port}" in text
    assert "wrong-pw" not in caplog.text + repr(error_sink)
    lanes = {lane["profile"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert [lanes[p]["retried"] for p in ("wrong", "anonymous")] == [0, 0]
    assert (lanes["right"]["published"], lanes["right"]["failed"]) == (1, 0)


@pytest.mark.parametrize("own_mosquitto", [{"config": ["max_packet_size 2000"]}], indirect=True)
async def test_message_over_the_maximum_packet_size_fails_at_once(hub, running, own_mosquitto, error_sink):
    """MQTT 5: the broker declares its Maximum Packet Size; a larger message fails at once, alone."""
    connection = {"hostname": "127.0.0.1", "port": own_mosquitto.port}
    subscriber = await mqtt_subscriber(connection)
    try:
        topic = await subscriber.subscribe(unique())
        await running({"mqtt": {"default": {"connection": {**connection, "protocol": "5"}, "topic": topic}}})
        for body in (0, 1, "x" * 3000, 3, 4):
            await hub.evbus.broker.put(body=body)
        await hub.evbus.init.stop()
        assert [json.loads(m.payload) for m in await subscriber.take(topic, 4)] == [0, 1, 3, 4]
    finally:
        await close_mqtt_subscriber(subscriber)
    [error] = error_sink
    assert error["attempts"] == 1 and isinstance(error["exception"], MessageTooLargeError)
    assert "Maximum Packet Size of 2000 bytes" in str(error["exception"])
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"], lane["retried"]) == (4, 1, 0)


def test_publish_refusals_a_retry_cannot_help(hub):
    """MQTT 5 PUBACK reason codes: not authorized and malformed messages are refused; a quota is retried."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from evbus.ingress.mqtt import _puback_error

    mqtt = hub.ingress.mqtt

    def error(code: int) -> Exception:
        return _puback_error(ReasonCode(PacketTypes.PUBACK, identifier=code), "mqtt://127.0.0.1:1883")

    assert isinstance(error(0x87), LoginRefusedError) and not mqtt.retriable(error(0x87))
    assert "allow the profile's user to publish" in str(error(0x87))
    assert isinstance(error(0x90), RefusedError) and not mqtt.retriable(error(0x90))
    assert mqtt.retriable(error(0x97))  # quota exceeded
    assert mqtt.retriable(ConnectionError("the MQTT connection was lost"))



class SilentServer:
    """Accepts MQTT clients and never sends a CONNACK (what a real broker cannot be made to do)."""

    def __init__(self):
        self.accepted = asyncio.Event()
        self.closed = asyncio.Event()  # a client closed its socket
        self.server = None

    async def serve(self, reader, writer):
        self.accepted.set()
        await reader.read()  # until the client closes its socket
        self.closed.set()
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc):
        self.server.close()


@pytest.mark.parametrize("path", ["publisher", "listen"])
async def test_a_connect_cancelled_mid_handshake_leaves_nothing_open(hub, path):
    """
    A connect cancelled while it waits for the CONNACK closes its socket and
    ends aiomqtt's housekeeping task before the cancel is raised: nothing is
    left for the loop's close ("Task was destroyed but it is pending", paho's
    "Event loop is closed").
    """
    from dict_tools import data

    silent = SilentServer()
    async with silent as port:
        connection = {"hostname": "127.0.0.1", "port": port, "timeout": 30}
        if path == "publisher":
            from evbus.ingress.mqtt import Publisher

            connecting = asyncio.create_task(Publisher(connection, where=f"mqtt://127.0.0.1:{port}").open())
        else:
            ctx = data.NamespaceDict(acct=data.NamespaceDict({"connection": connection, "topic": "t"}))
            connecting = asyncio.create_task(anext(hub.ingress.mqtt.listen(ctx)))
        await asyncio.wait_for(silent.accepted.wait(), 10)
        def misc_tasks() -> list[asyncio.Task]:
            return [t for t in asyncio.all_tasks() if "_misc_loop" in repr(t.get_coro())]

        # aiomqtt starts its housekeeping task once its socket is open
        await wait_for(misc_tasks, 10, "aiomqtt's housekeeping task")
        misc = misc_tasks()
        assert misc and not connecting.done(), "no CONNACK came: the client waits, its task running"
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert all(task.done() for task in misc)
        await asyncio.wait_for(silent.closed.wait(), 5)  # the socket was closed
