"""
The frames of a publish (evbus.amqp) next to those aiormq's ``basic_publish``
builds with pamqp, byte for byte.
"""
import datetime
import itertools
import types

import pytest

aiormq = pytest.importorskip("aiormq")

from aiormq import spec  # noqa: E402
from aiormq.abc import ChannelFrame  # noqa: E402
from aiormq.channel import Channel  # noqa: E402
from pamqp import frame as pamqp_frame  # noqa: E402
from pamqp.body import ContentBody  # noqa: E402
from pamqp.header import ContentHeader  # noqa: E402

from evbus import amqp  # noqa: E402

FRAME_MAX = 131072
MAX_BODY = FRAME_MAX - 8

TRACE = (
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("tracestate", "a=1,b=2"),
)
CLOUDEVENTS = (
    ("cloudEvents_specversion", "1.0"),
    ("cloudEvents_id", "5f2c-1"),
    ("cloudEvents_source", "/evbus/ünïcode"),
    ("cloudEvents_type", "evbus.event"),
)


def aiormq_frames(
    channel, exchange, routing_key, mandatory, body, content_type, delivery_mode, message_id, ts, headers
):
    """
    The bytes that aiormq's ``basic_publish`` writes for a publish with the
    properties the pika ingress gave it before it encoded frames itself.
    """
    aiormq.channel._check_routing_key(routing_key)
    properties = spec.Basic.Properties(
        content_type=content_type,
        message_id=message_id,
        timestamp=datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc),
        delivery_mode=delivery_mode,
        headers=dict(headers) if headers else None,
    )
    frames = [
        spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ContentHeader(properties=properties, body_size=len(body)),
    ]
    frames += Channel._split_body(types.SimpleNamespace(max_content_size=MAX_BODY), body)
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


def evbus_frames(
    channel, exchange, routing_key, mandatory, body, content_type, delivery_mode, message_id, ts, headers
):
    out = bytearray()
    amqp.Frames(channel, exchange, MAX_BODY).write(
        out, routing_key, mandatory, body, content_type, delivery_mode, message_id, ts, headers
    )
    return bytes(out)


def outcome(make, *args):
    try:
        return make(*args)
    except Exception as e:  # both ways must refuse alike
        return type(e)


BODIES = [
    b"",
    b"x",
    b'{"n": 1}',
    bytes(range(256)) * 4,
    b"a" * (MAX_BODY - 1),
    b"b" * MAX_BODY,
    b"c" * (MAX_BODY + 1),
    b"d" * (3 * MAX_BODY + 5),
]


@pytest.mark.parametrize("body", BODIES, ids=[f"{len(b)}B" for b in BODIES])
@pytest.mark.parametrize("headers", [(), TRACE, TRACE + CLOUDEVENTS], ids=["none", "trace", "cloudevents"])
@pytest.mark.parametrize("delivery_mode", [1, 2])
def test_frames_are_aiormqs_byte_for_byte(body, headers, delivery_mode):
    args = (1, "", "orders", True, body, "application/json", delivery_mode, "a1b2c3d4e5f6-1f", 1764650000.75)
    args += (headers,)
    assert evbus_frames(*args) == aiormq_frames(*args)


@pytest.mark.parametrize(
    "channel, exchange, routing_key, mandatory",
    [
        (1, "", "", True),
        (7, "amq.direct", "orders", False),
        (65535, "évents", "ключ.маршрута", True),
        (2, "x", "r" * 255, True),
        (2, "x", "r" * 256, True),  # aiormq's ValueError
        (2, "x", "é" * 200, True),  # over 255 bytes: pamqp's TypeError
    ],
)
def test_publish_method_frames(channel, exchange, routing_key, mandatory):
    args = (channel, exchange, routing_key, mandatory, b"{}", "application/json", 1, "id-1", 1.0, ())
    assert outcome(evbus_frames, *args) == outcome(aiormq_frames, *args)


@pytest.mark.parametrize(
    "content_type, message_id, ts",
    [
        ("application/msgpack", "abc-1", 0),
        ("application/cloudevents+json; charset=utf-8", "abc-2", 1764650000),
        ("text/plain; charset=ütf-8", "ünïcode-id", 2**33 + 0.999),
        ("application/json", "abc-5", 2**40),  # past year 9999: no datetime, as before
        ("application/json", "abc-6", -1),
        ("", "abc-3", 5),  # pamqp leaves an empty content type out
        ("t" * 255, "i" * 255, 7),
        ("t" * 256, "abc-4", 7),  # too long: pamqp's TypeError
        ("application/json", "i" * 256, 7),
        ("application/json", "", 7),  # no message id: left out
        ("application/json", 12345, 7),  # not a string: pamqp's TypeError
    ],
)
def test_content_headers(content_type, message_id, ts):
    for headers in ((), CLOUDEVENTS):
        args = (3, "", "q", True, b"body", content_type, 2, message_id, ts, headers)
        assert outcome(evbus_frames, *args) == outcome(aiormq_frames, *args)


def test_frames_decode_to_the_properties_of_the_event():
    out = bytearray()
    amqp.Frames(5, "amq.topic", MAX_BODY).write(
        out, "a.b", True, b"hello", "application/json", 2, "e-1", 1764650000.2, TRACE
    )
    decoded = []
    data = bytes(out)
    while data:
        used, channel, value = pamqp_frame.unmarshal(data)
        decoded.append((channel, value))
        data = data[used:]
    (_, method), (_, content), (_, body) = decoded
    assert {channel for channel, _ in decoded} == {5}
    assert (method.exchange, method.routing_key, method.mandatory) == ("amq.topic", "a.b", True)
    assert content.body_size == 5 and isinstance(body, ContentBody) and body.value == b"hello"
    assert content.properties == amqp.properties("application/json", 2, "e-1", 1764650000.2, TRACE)
    expected = datetime.datetime(2025, 12, 2, 4, 33, 20, tzinfo=datetime.timezone.utc)
    assert content.properties.timestamp == expected


def test_publish_frames_are_kept_per_routing_key_within_a_bound():
    frames = amqp.Frames(1, "", MAX_BODY)
    first = frames.method("a", True)
    assert frames.method("a", True) is first
    for n in itertools.islice(itertools.count(), 3000):
        frames.method(f"key-{n}", True)
    assert len(frames._methods) <= 1024
