"""
What each broker receives, read back by a consumer of the test's own: the W3C
trace context (the consumer extracts it and finds the producer's trace), and
CloudEvents in binary and structured mode, decoded with the cloudevents SDK.

The cases are written once and run for every broker evbus ships; a
:class:`Receiver` per broker knows its profile, how to take what arrived,
and which of the SDK's converters decodes it (Kafka's; AMQP's; HTTP's for
NATS, whose binding names and encodes headers as HTTP's does; for MQTT 5,
which the SDK has no converter for, the binding's mapping; Kafka's for the
``ce_`` fields of a Redis stream entry).
"""
import dataclasses
import datetime
import json
from typing import Any

import pytest
from cloudevents.core.bindings import amqp
from cloudevents.core.bindings import http
from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from evbus.exc import ProfileError
from tests.brokers import NATS_URL
from tests.brokers import REDIS_URL
from tests.brokers import URL
from tests.brokers import close_mqtt_subscriber
from tests.brokers import consume
from tests.brokers import mqtt_subscriber
from tests.brokers import unique

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Received:
    """One message as a broker delivered it: its headers (as text), content type and body."""

    headers: dict[str, str]
    content_type: str | None
    body: bytes
    raw: Any = None


class Receiver:
    """A consumer of the test's own for one broker's destination."""

    provider = ""
    # The test id, where the provider is not enough
    name = ""
    # The broker fixtures it uses
    fixtures: tuple[str, ...] = ()

    def __init__(self, request):
        # asked for here, outside the test's loop: pytest-asyncio cannot set up an async fixture inside it
        for name in self.fixtures:
            setattr(self, name, request.getfixturevalue(name))

    async def start(self) -> dict:
        """Make the destination and subscribe; :return: the profile's data that publishes there"""
        raise NotImplementedError

    async def take(self, count: int) -> list[Received]:
        raise NotImplementedError

    def cloudevent(self, message: Received) -> CloudEvent:
        """Decode a CloudEvent (binary or structured mode) with the SDK's converter for this broker."""
        raise NotImplementedError

    async def close(self):
        pass


class KafkaReceiver(Receiver):
    provider = "kafka"
    fixtures = ("tansu",)

    async def start(self):
        self.bootstrap = self.tansu.bootstrap
        self.topic = unique()
        return {"topics": [self.topic], "connection": {"bootstrap_servers": self.bootstrap}}

    async def take(self, count):
        return [
            Received(
                {name: value.decode() for name, value in record.headers},
                dict(record.headers).get("content-type", b"").decode() or None,
                record.value,
                record,
            )
            for record in await consume(self.bootstrap, self.topic, count)
        ]

    def cloudevent(self, message):
        record = message.raw
        return kafka.from_kafka_event(kafka.KafkaMessage(dict(record.headers), record.key, record.value))


class RabbitReceiver(Receiver):
    provider = "pika"
    fixtures = ("amqp",)

    async def start(self):
        self.queue = await self.amqp.queue()
        return {"connection": {"url": URL}, "routing_key": self.queue}

    async def take(self, count):
        return [
            Received(
                {name: value.decode() if isinstance(value, bytes) else value for name, value in m.headers.items()},
                m.content_type,
                m.body,
                m,
            )
            for m in await self.amqp.take(self.queue, count)
        ]

    def cloudevent(self, message):
        return amqp.from_amqp_event(
            amqp.AMQPMessage(
                properties={"content-type": message.content_type},
                application_properties=message.headers,
                application_data=message.body,
            )
        )


class NatsReceiver(Receiver):
    provider = "nats"
    fixtures = ("nats_consumer",)

    async def start(self):
        subject = unique() + ".wire"
        self.queue = await self.nats_consumer.subscribe(subject)
        return {"connection": {"servers": NATS_URL}, "subject": subject}

    async def take(self, count):
        return [
            Received(dict(m.headers or {}), (m.headers or {}).get("Content-Type"), m.data, m)
            for m in await self.nats_consumer.take(self.queue, count)
        ]

    def cloudevent(self, message):
        return http.from_http_event(http.HTTPMessage(headers=message.headers, body=message.body))


class NatsJetStreamReceiver(NatsReceiver):
    """NATS JetStream: the messages as the stream holds them."""

    name = "nats-jetstream"

    async def start(self):
        self.stream, subject = await self.nats_consumer.stream()
        return {"connection": {"servers": NATS_URL}, "subject": subject, "jetstream": True, "stream": self.stream}

    async def take(self, count):
        return [
            Received(dict(m.headers or {}), (m.headers or {}).get("Content-Type"), m.data, m)
            for m in await self.nats_consumer.messages(self.stream, count)
        ]


class MqttReceiver(Receiver):
    provider = "mqtt"
    fixtures = ("mqtt_broker",)
    subscriber = None

    async def start(self):
        import aiomqtt

        self.topic = unique("evbus-test/wire")
        self.subscriber = await mqtt_subscriber(self.mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5)
        await self.subscriber.subscribe(self.topic)
        return {"connection": {**self.mqtt_broker, "protocol": 5}, "topic": self.topic}

    async def take(self, count):
        return [
            Received(
                dict(getattr(m.properties, "UserProperty", [])),
                getattr(m.properties, "ContentType", None),
                bytes(m.payload),
                m,
            )
            for m in await self.subscriber.take(self.topic, count)
        ]

    def cloudevent(self, message):
        """The MQTT binding: the content type says the mode; in binary mode every user property is an attribute."""
        if (message.content_type or "").startswith("application/cloudevents"):
            return JSONFormat().read(CloudEvent, message.body)
        attributes: dict[str, Any] = dict(message.headers)
        attributes["time"] = datetime.datetime.fromisoformat(attributes["time"])
        attributes["datacontenttype"] = message.content_type
        return CloudEvent(attributes, JSONFormat().read_data(message.body, message.content_type))

    async def close(self):
        if self.subscriber is not None:
            await close_mqtt_subscriber(self.subscriber)


class RedisReceiver(Receiver):
    provider = "redis"
    fixtures = ("redis_reader",)

    async def start(self):
        self.stream = self.redis_reader.key()
        return {"connection": {"url": REDIS_URL}, "stream": self.stream}

    async def take(self, count):
        entries = await self.redis_reader.entries(self.stream, count)
        received = []
        for _, fields in entries:
            text = {name.decode(): value.decode() for name, value in fields.items() if name != b"body"}
            received.append(Received(text, text["content_type"], fields[b"body"], fields))
        return received

    def cloudevent(self, message):
        """The entry's ``ce_`` fields as the Kafka binding's headers, ``content_type`` as its content-type."""
        headers = {name: value.encode() for name, value in message.headers.items() if name.startswith("ce_")}
        headers["content-type"] = message.content_type.encode()
        return kafka.from_kafka_event(kafka.KafkaMessage(headers, None, message.body))


RECEIVERS = [KafkaReceiver, RabbitReceiver, NatsReceiver, NatsJetStreamReceiver, MqttReceiver, RedisReceiver]


@pytest.fixture(params=RECEIVERS, ids=[receiver.name or receiver.provider for receiver in RECEIVERS])
def broker(request) -> Receiver:
    return request.param(request)


@pytest.fixture
async def receiver(broker):
    """:return: A receiver of each broker in turn"""
    yield broker
    await broker.close()


async def test_the_consumer_finds_the_producers_trace(hub, running, otel, receiver):
    profile = await receiver.start()
    await running({receiver.provider: {"default": profile}})
    with otel.tracer.start_as_current_span("request") as span:
        await hub.evbus.broker.put(body={"n": 1})
    await hub.evbus.init.stop()
    [message] = await receiver.take(1)
    extracted = trace.get_current_span(TraceContextTextMapPropagator().extract(message.headers))
    context = extracted.get_span_context()
    [producer] = otel.spans()
    assert context.is_remote and context.trace_id == span.get_span_context().trace_id
    assert context.span_id == producer.context.span_id
    assert producer.parent.span_id == span.get_span_context().span_id
    assert producer.attributes["messaging.system"] in ("kafka", "rabbitmq", "nats", "mqtt", "redis")
    assert json.loads(message.body) == {"n": 1}


async def test_without_tracing_messages_carry_no_trace_context(hub, running, receiver):
    profile = await receiver.start()
    await running({receiver.provider: {"default": profile}})
    await hub.evbus.broker.put(body={"n": 1})
    await hub.evbus.init.stop()
    [message] = await receiver.take(1)
    assert "traceparent" not in message.headers


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_cloudevents_decoded_with_the_sdk(hub, running, receiver, mode):
    profile = await receiver.start()
    options = {"mode": mode, "source": "/shop/ü {profile}", "type": "com.example.{profile}"}
    contexts = await running(
        {receiver.provider: {"orders": {**profile, "envelope": "cloudevents", "cloudevents": options}}}
    )
    # the event built as put() builds it, handed to the running bus's lanes: its id and time are known
    event = hub.evbus.broker.event(body={"n": 1, "text": "é"}, profile="orders")
    await hub.evbus.broker.propagate(contexts, event)
    await hub.evbus.init.stop()
    [message] = await receiver.take(1)
    decoded = receiver.cloudevent(message)
    assert decoded.get_specversion() == "1.0"
    assert decoded.get_id() == event.id
    assert decoded.get_source() == "/shop/ü orders"
    assert decoded.get_type() == "com.example.orders"
    assert decoded.get_time() == datetime.datetime.fromtimestamp(event.timestamp, datetime.timezone.utc)
    assert decoded.get_datacontenttype() == "application/json"
    assert decoded.get_data() == {"n": 1, "text": "é"}
    if mode == "structured":
        assert message.content_type == "application/cloudevents+json"
    else:
        assert message.body == event.body and message.content_type == "application/json"


@pytest.mark.parametrize(
    "provider,profile",
    [
        ("mqtt", {"connection": {"hostname": "127.0.0.1", "protocol": "3.1.1"}, "topic": "t"}),
        ("redis", {"connection": {"url": REDIS_URL}, "mode": "pubsub", "channel": "c"}),
        ("internal", {"routing_key": "q"}),
    ],
)
async def test_binary_mode_where_messages_carry_no_headers_is_refused_at_start(hub, provider, profile):
    contexts = await hub.evbus.acct.profiles(acct_data={provider: {"p": {**profile, "envelope": "cloudevents"}}})
    with pytest.raises(ProfileError, match=f"messages of ingress.{provider} with this profile carry none"):
        await hub.evbus.init.start(contexts)


async def test_structured_mode_on_mqtt_3_1_1(hub, running, mqtt):
    """MQTT 3.1.1 has no properties: the structured mode is its only one, the JSON format implied."""
    topic = unique("evbus-test/ce")
    await mqtt.subscribe(topic)
    profile = {"connection": {"hostname": "127.0.0.1"}, "topic": topic}
    await running({"mqtt": {"default": {**profile, "envelope": "cloudevents", "cloudevents": {"mode": "structured"}}}})
    await hub.evbus.broker.put(body={"n": 1})
    await hub.evbus.init.stop()
    [message] = await mqtt.take(topic, 1)
    decoded = JSONFormat().read(CloudEvent, bytes(message.payload))
    assert decoded.get_type() == "evbus.default" and decoded.get_source() == "evbus"
    assert decoded.get_data() == {"n": 1}


async def test_structured_mode_on_the_internal_queue(hub, running):
    await running({"internal": {"default": {"routing_key": "q", "envelope": "cloudevents",
                                            "cloudevents": {"mode": "structured"}}}})
    await hub.evbus.broker.put(body=[1, 2])
    queue = await hub.ingress.internal.get("q")
    decoded = JSONFormat().read(CloudEvent, await queue.get())
    assert decoded.get_data() == [1, 2] and decoded.get_type() == "evbus.default"
