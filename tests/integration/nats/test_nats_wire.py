"""
The nats ingress's messages and PubAcks against a real NATS server: the header
bytes a subscriber reads are the ones nats-py sends for the same headers, and
each JetStream event is settled by its own reply (a PubAck, the stream's
error, or "no responders"); replies that match no publish are ignored.
"""
import asyncio
import json
import sys

import pytest
from dict_tools import data

from evbus.types import Event
from tests.brokers import NATS_URL
from tests.brokers import unique
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


class RawSubscriber:
    """
    A NATS client of the test's own that speaks the protocol on a socket: the
    header block and the body of each message, byte for byte as the server
    delivers them.
    """

    async def start(self, subject: str):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", 4222)
        assert (await self.reader.readline()).startswith(b"INFO ")
        self.writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        self.writer.write(f"SUB {subject} 1\r\nPING\r\n".encode())
        await self.writer.drain()
        # the server has the subscription once it answers the PING
        assert await asyncio.wait_for(self.reader.readline(), 10) == b"PONG\r\n"

    async def take(self) -> tuple[bytes, bytes]:
        """:return: The next message's header block and body"""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if line == b"PING\r\n":
                self.writer.write(b"PONG\r\n")
                continue
            assert line.startswith(b"HMSG "), line
            header_size, total_size = (int(n) for n in line.split()[-2:])
            payload = await self.reader.readexactly(total_size + 2)
            return payload[:header_size], payload[header_size:total_size]

    async def close(self):
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def raw_subscriber(nats_server):
    subscriber = RawSubscriber()
    yield subscriber
    if hasattr(subscriber, "writer"):
        await subscriber.close()


def plugin(hub):
    """:return: The module of the hub's nats ingress (pop loads it under a name of its own)"""
    return sys.modules[hub.ingress.nats.send.func.__module__]


def nats_ctx(**profile) -> data.NamespaceDict:
    return data.NamespaceDict(acct=data.NamespaceDict(connection={"servers": NATS_URL}, **profile))


TRACE = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("tracestate", "k=v"))
CLOUDEVENT = (("ce-specversion", "1.0"), ("ce-id", "x-1"), ("ce-source", "%2Fshop%2F%C3%BC%20orders"))


@pytest.mark.parametrize("write", ["buffer", "Client.publish"])
@pytest.mark.parametrize("extra", [(), TRACE + CLOUDEVENT], ids=["evbus headers", "trace and cloudevent"])
@pytest.mark.parametrize("route", ["core", "jetstream", "jetstream with stream"])
async def test_a_subscriber_reads_the_header_bytes_nats_py_sends(
    hub, nats_consumer, raw_subscriber, monkeypatch, route, extra, write
):
    """
    The same event sent by evbus and by nats-py's ``Client.publish`` with
    evbus's headers as a dict: a raw subscriber reads the same header block,
    and nats-py's subscriber decodes evbus's headers.
    """
    if write == "Client.publish":  # a nats-py whose write buffer evbus does not find
        monkeypatch.setattr(plugin(hub), "_BUFFER", ("_no_such_buffer",))
    if route == "core":
        stream, subject = None, unique() + ".core"
        ctx = nats_ctx()
    else:
        stream, subject = await nats_consumer.stream()
        ctx = nats_ctx(jetstream=True, stream=stream if route == "jetstream with stream" else None)
    decoded = await nats_consumer.subscribe(subject)  # (its probe goes before the raw subscription)
    await raw_subscriber.start(subject)
    event = Event(profile="p", routing_key=subject, body=b'{"n": 1}', headers=extra)
    try:
        receipt = await hub.ingress.nats.send(ctx, subject, event)
        ack = await asyncio.wait_for(receipt, 10)
        route_of_ctx = hub.ingress.nats.BY_CTX.get(ctx)
        assert route_of_ctx.holder.session._buffered is (write == "buffer")
        mapping = route_of_ctx.headers.mapping(event)
        await nats_consumer.client.publish(subject, event.body, headers=dict(mapping))
    finally:
        await hub.ingress.nats.close(ctx)
    by_evbus, by_nats_py = await raw_subscriber.take(), await raw_subscriber.take()
    assert by_evbus == by_nats_py
    block, body = by_evbus
    assert body == b'{"n": 1}'
    assert block.startswith(b"NATS/1.0\r\nEvbus-Id: " + event.id.encode() + b"\r\n")
    [message, _] = await nats_consumer.take(decoded, 2)
    assert message.headers == mapping
    if route == "core":
        assert ack is None and "Nats-Msg-Id" not in mapping
    else:
        assert (ack.stream, bool(ack.duplicate)) == (stream, False)  # (the probe is the stream's first)
        assert mapping["Nats-Msg-Id"] == event.id
        assert mapping.get("Nats-Expected-Stream") == (stream if route == "jetstream with stream" else None)


async def test_each_event_is_settled_by_its_own_reply(hub, running, nats_consumer, error_sink):
    """
    A stream that refuses one message (over its max_msg_size): that event
    fails with the stream's error, not with a timeout, and alone; the events
    around it are acknowledged, once each and in order.
    """
    from nats.js.errors import APIError

    name = unique("EVBUS_TEST").replace("-", "_").upper()
    subject = unique("evbus-test") + ".small"
    await nats_consumer.js.add_stream(name=name, subjects=[subject], max_msg_size=512)
    nats_consumer.streams.append(name)
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": subject, "jetstream": True}}})
    bodies = [{"n": n} for n in range(100)]
    bodies.insert(50, {"big": "x" * 1000})
    for body in bodies:
        await hub.evbus.broker.put(body=body)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert json.loads(error["body"]) == {"big": "x" * 1000}
    assert isinstance(error["exception"], APIError) and error["exception"].err_code == 10054  # too large
    assert error["attempts"] == 3  # the stream's error is the lane's to retry, as before
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"]) == (100, 1)
    messages = await nats_consumer.messages(name, 100)
    assert [json.loads(m.data) for m in messages] == [{"n": n} for n in range(100)]


async def test_no_responders_fails_the_event_and_its_subject_is_checked_again(hub, nats_consumer):
    """
    A stream deleted under a running profile: the next publish gets "no
    responders" (retriable: a restarting server answers so too), and the
    publish after it finds, by checking the subject again, that no stream
    takes it (not retriable).
    """
    from nats.js.errors import NoStreamResponseError

    stream, subject = await nats_consumer.stream()
    ctx = nats_ctx(jetstream=True)
    try:
        first = await hub.ingress.nats.send(ctx, subject, Event(profile="p", body=b"1"))
        assert (await asyncio.wait_for(first, 10)).seq == 1
        await nats_consumer.js.delete_stream(stream)
        nats_consumer.streams.remove(stream)
        second = await hub.ingress.nats.send(ctx, subject, Event(profile="p", body=b"2"))
        with pytest.raises(NoStreamResponseError) as raised:
            await asyncio.wait_for(second, 10)
        assert hub.ingress.nats.retriable(raised.value)
        with pytest.raises(plugin(hub).NoStreamError, match=f"no JetStream stream .* takes subject '{subject}'"):
            await hub.ingress.nats.send(ctx, subject, Event(profile="p", body=b"3"))
        [connection] = hub.ingress.nats.CONNECTIONS.values()
        assert connection.session.acks.futures == {}
    finally:
        await hub.ingress.nats.close(ctx)


async def test_replies_that_match_no_publish_are_ignored(hub, nats_consumer):
    """
    Replies on the inbox of the PubAcks that no publish waits for (an unknown
    token, a publish already acknowledged, one given up on): ignored, and the
    next publish gets its own PubAck.
    """
    stream, subject = await nats_consumer.stream()
    ctx = nats_ctx(jetstream=True)
    try:
        first = await hub.ingress.nats.send(ctx, subject, Event(profile="p", body=b"1"))
        assert (await asyncio.wait_for(first, 10)).seq == 1
        [connection] = hub.ingress.nats.CONNECTIONS.values()
        acks = connection.session.acks
        given_up, future = acks.expect()
        future.cancel()  # as a lane drops the receipt of a publish that timed out
        fake = json.dumps({"stream": stream, "seq": 99}).encode()
        for reply in (acks.prefix + "999999", acks.prefix + "1", given_up, acks.prefix + "garbage"):
            await nats_consumer.client.publish(reply, fake)
        await nats_consumer.client.publish(acks.prefix + "1", b"not json")
        await nats_consumer.client.flush()
        second = await hub.ingress.nats.send(ctx, subject, Event(profile="p", body=b"2"))
        ack = await asyncio.wait_for(second, 10)
        assert (ack.stream, ack.seq, bool(ack.duplicate)) == (stream, 2, False)
        await wait_for(lambda: given_up not in acks.futures, 10, "the given-up reply forgotten")
        assert acks.futures == {}
        assert connection.last_error is None  # nothing reached nats-py's error callback
    finally:
        await hub.ingress.nats.close(ctx)
    assert (await nats_consumer.js.stream_info(stream)).state.messages == 2


async def test_replies_of_abandoned_publishes_are_swept(hub, nats_server):
    """Futures given up on whose reply never comes are forgotten once the inbox holds many."""
    ctx = nats_ctx(jetstream=True)
    try:
        await hub.ingress.nats.open(ctx)
        [connection] = hub.ingress.nats.CONNECTIONS.values()
        acks = connection.session.acks
        waiting = []
        for n in range(plugin(hub).SWEEP_AT):
            _, future = acks.expect()
            if n % 2:
                future.cancel()
            else:
                waiting.append(future)
        waiting.append(acks.expect()[1])
        assert len(acks.futures) == len(waiting)
    finally:
        await hub.ingress.nats.close(ctx)
    # a closed connection fails what still waits
    assert all(isinstance(future.exception(), Exception) for future in waiting)


async def test_profiles_sharing_a_connection_get_their_own_acks(hub, running, nats_consumer):
    """Two profiles on one connection publishing to two streams at once: every event acknowledged, in order."""
    (first, first_subject), (second, second_subject) = await nats_consumer.stream(), await nats_consumer.stream()
    connection = {"servers": NATS_URL}
    await running(
        {
            "nats": {
                "one": {"connection": connection, "subject": first_subject, "jetstream": True},
                "two": {"connection": connection, "subject": second_subject, "jetstream": True},
            }
        }
    )
    for n in range(300):
        await hub.evbus.broker.put(body={"n": n}, profile="one")
        await hub.evbus.broker.put(body={"n": n}, profile="two")
    lanes = hub.evbus.route.all_lanes()
    await wait_for(lambda: all(lane.published for lane in lanes), 10, "a publish on each lane")
    assert len(hub.ingress.nats.CONNECTIONS) == 1
    await hub.evbus.init.stop()
    lanes = hub.evbus.broker.stats()["lanes"]
    assert sorted((lane["published"], lane["failed"]) for lane in lanes) == [(300, 0), (300, 0)]
    for stream in (first, second):
        assert (await nats_consumer.js.stream_info(stream)).state.messages == 300
        messages = await nats_consumer.messages(stream, 300)
        assert [json.loads(m.data) for m in messages] == [{"n": n} for n in range(300)]
