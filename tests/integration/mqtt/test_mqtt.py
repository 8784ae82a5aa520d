"""The mqtt ingress against a real Mosquitto, checked with an independent aiomqtt client."""
import asyncio
import json
import time

import msgpack
import pytest

from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from evbus.exc import RefusedError
from tests.brokers import close_mqtt_subscriber
from tests.brokers import MQTT_HOST
from tests.brokers import MQTT_PORT
from tests.brokers import mqtt_subscriber
from tests.brokers import put_through_a_restart
from tests.brokers import unique
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CONNECTION = {"hostname": MQTT_HOST, "port": MQTT_PORT}


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


async def test_mqtt5_content_type_and_user_properties(hub, running, mqtt_broker):
    import aiomqtt

    topic = unique("evbus-test/v5")
    subscriber = await mqtt_subscriber(mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5)
    try:
        await subscriber.subscribe(topic)
        hub.serialize.PLUGIN = "msgpack"
        await running({"mqtt": {"default": {"connection": {**CONNECTION, "protocol": 5}, "topic": topic}}})
        before = time.time()
        for n in range(20):
            await hub.evbus.broker.put(body=n)
        await hub.evbus.init.stop()
        messages = await subscriber.take(topic, 20)
    finally:
        await close_mqtt_subscriber(subscriber)
    assert [msgpack.unpackb(m.payload) for m in messages] == list(range(20))
    assert all(m.properties.ContentType == "application/msgpack" for m in messages)
    properties = [dict(m.properties.UserProperty) for m in messages]
    assert len({p["Evbus-Id"] for p in properties}) == 20
    assert all(before - 1 <= float(p["Evbus-Timestamp"]) <= time.time() + 1 for p in properties)


async def test_event_without_topic_is_an_error_not_retried(hub, running, mqtt_broker, error_sink):
    await running({"mqtt": {"default": {"connection": CONNECTION}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.broker.put(routing_key="evbus-test/#", body=2)  # no wildcards in a topic one publishes to
    await hub.evbus.init.stop()
    assert "no MQTT topic" in str(error_sink[0]["exception"])
    assert "wildcard" in str(error_sink[1]["exception"]).lower()
    assert hub.evbus.broker.stats()["lanes"][0]["retried"] == 0


async def test_one_connection_per_profile_reused_and_closed(hub, running, mqtt):
    topic = await mqtt.subscribe(unique("evbus-test/one"))
    await running(
        {"mqtt": {"default": {"connection": {**CONNECTION, "identifier": unique()}, "topic": topic}}}
    )
    await wait_for(
        lambda: any(p.ready for p in hub.ingress.mqtt.CONNECTIONS.values()), 10, "the connection at start"
    )
    [publisher] = hub.ingress.mqtt.CONNECTIONS.values()
    paho = publisher.paho
    for n in range(100):
        await hub.evbus.broker.put(body=n)
    await mqtt.take(topic, 100)
    assert publisher.paho is paho and paho.is_connected()
    await hub.evbus.init.stop()
    assert not paho.is_connected()  # disconnected on stop
    assert hub.ingress.mqtt.CONNECTIONS == {} and len(hub.ingress.mqtt.BY_CTX) == 0


async def test_wrong_port_is_a_clear_error_naming_host_and_port(hub, running, error_sink, caplog):
    await running(
        {
            "mqtt": {
                "default": {
                    "connection": {
                        "hostname": "127.0.0.1",
                        "port": 1,
                        "username": "evbus",
                        "password": "s3cret-pw",
                    },
                    "topic": "x",
                }
            }
        }
    )
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 30, "the give-up")
    exception = str(error_sink[0]["exception"])
    assert "127.0.0.1:1" in caplog.text and "mqtt://127.0.0.1:1" in exception
    assert "s3cret-pw" not in caplog.text + exception + repr(error_sink)
    assert error_sink[0]["ctx"]["acct"]["connection"]["password"] == "***"
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert lane["retried"] == 2 and lane["failed"] == 1


async def test_broker_restart_mid_stream_loses_nothing_acknowledged(hub, running, own_mosquitto, monkeypatch):
    """
    A mosquitto of the test's own (persistence on) stopped and started again
    while events flow at QoS 1. A reader with a persistent session reads
    throughout: every event reaches it (at least once).
    """
    import aiomqtt

    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "200")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "60")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "0.5")
    monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "5")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    connection = {"hostname": "127.0.0.1", "port": own_mosquitto.port}
    topic = "evbus-test/restart"
    seen: set = set()
    subscribed = asyncio.Event()
    stop_reading = asyncio.Event()

    async def read():
        # A connection that hears nothing for 5 s is opened again (the session keeps what
        # it missed): on uvloop a reset can leave aiomqtt's new connection deaf
        while not stop_reading.is_set():
            try:
                async with aiomqtt.Client(
                    **connection, identifier="evbus-test-reader", clean_session=False
                ) as client:
                    await client.subscribe(topic, qos=1)
                    subscribed.set()
                    messages = aiter(client.messages)
                    while not stop_reading.is_set():
                        message = await asyncio.wait_for(anext(messages), 5)
                        seen.add(json.loads(message.payload))
            except (aiomqtt.MqttError, TimeoutError):
                if not stop_reading.is_set():
                    await asyncio.sleep(0.1)

    reader = asyncio.create_task(read())
    await asyncio.wait_for(subscribed.wait(), 10)
    await running({"mqtt": {"default": {"connection": connection, "topic": topic, "qos": 1}}})
    [lane] = hub.evbus.route.all_lanes()
    total = 2000
    try:
        await put_through_a_restart(hub, lane, own_mosquitto, total)
        assert await hub.evbus.init.stop(timeout=90) == 0
        await wait_for(lambda: len(seen) == total, 60, "every event at the reader")
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
    assert seen == set(range(total))
    assert (lane.published, lane.failed) == (total, 0) and lane.retried >= 1


async def test_publish_of_the_ingress_contract_waits_for_the_ack(hub, mqtt):
    from dict_tools import data

    topic = await mqtt.subscribe(unique("evbus-test/direct"))
    ctx = data.NamespaceDict(acct=data.NamespaceDict(connection=CONNECTION, qos=1))
    await hub.ingress.mqtt.publish(ctx, topic, b'"direct"')
    await hub.ingress.mqtt.close(ctx)
    assert [m.payload for m in await mqtt.take(topic, 1)] == [b'"direct"']


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
