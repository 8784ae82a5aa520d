"""
The pika ingress's outbox on a channel of the test's own: one write per turn
of the loop, in delivery-tag order, confirmations resolved by aiormq's own
code, returns, the profile's timeout, a full write queue, a closed channel.
"""
import asyncio
import collections
import gc
import types

import pytest

aiormq = pytest.importorskip("aiormq")

from aiormq import spec  # noqa: E402
from aiormq.abc import ChannelFrame  # noqa: E402
from aiormq.channel import Channel  # noqa: E402
from pamqp import frame as pamqp_frame  # noqa: E402
from pamqp.body import ContentBody  # noqa: E402
from pamqp.header import ContentHeader  # noqa: E402

from evbus.exc import LoginRefusedError  # noqa: E402
from evbus.exc import RefusedError  # noqa: E402
from evbus.ingress import pika  # noqa: E402
from evbus.types import Event  # noqa: E402

MAX_BODY = 131072 - 8


class FakeChannel:
    """
    What the outbox uses of an aiormq channel; confirmations are resolved by
    aiormq's own ``Channel._on_confirm_frame`` and ``_confirm_delivery``.
    """

    def __init__(self, write_queue_size: int = 10):
        self.loop = asyncio.get_running_loop()
        self.number = 1
        self.max_content_size = MAX_BODY
        self.publisher_confirms = True
        self.confirmations = collections.OrderedDict()
        self.message_id_delivery_tag = {}
        self.delivery_tag = 0
        self.write_queue = asyncio.Queue(maxsize=write_queue_size)
        self.closing = self.loop.create_future()

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    def _confirm_delivery(self, delivery_tag, frame):
        Channel._confirm_delivery(self, delivery_tag, frame)

    async def answer(self, frame):
        """RabbitMQ's basic.ack or basic.nack, as aiormq's channel reader hands it over."""
        await Channel._on_confirm_frame(self, frame)
        await asyncio.sleep(0)  # multiple=True: aiormq confirms each tag at the loop's next turn
        await asyncio.sleep(0)

    def returned(self, message_id: str, routing_key: str):
        """RabbitMQ's basic.return, as aiormq hands it over when the channel does not raise on returns."""
        tag = self.message_id_delivery_tag[message_id]
        confirmation = self.confirmations.pop(tag)
        self.confirmations[tag] = aiormq.channel.Returning()
        frame = spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key=routing_key)
        confirmation.set_result(types.SimpleNamespace(delivery=frame))

    def written(self) -> list:
        """The frames handed to the connection's writer so far, one list per write."""
        writes = []
        while not self.write_queue.empty():
            data = bytes(self.write_queue.get_nowait().payload)
            frames = []
            while data:
                used, _, value = pamqp_frame.unmarshal(data)
                frames.append(value)
                data = data[used:]
            writes.append(frames)
        return writes


def events(count: int) -> list[Event]:
    return [Event(routing_key="q", body=str(n).encode()) for n in range(count)]


async def test_one_write_per_turn_in_delivery_tag_order():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    batch = events(50)
    confirmations = [outbox.publish("q", event, 1, True, None) for event in batch]
    assert channel.write_queue.empty()  # written at the loop's next turn, all at once
    await asyncio.sleep(0)
    [write] = channel.written()
    publishes = [f for f in write if isinstance(f, spec.Basic.Publish)]
    headers = [f for f in write if isinstance(f, ContentHeader)]
    bodies = [f.value for f in write if isinstance(f, ContentBody)]
    assert len(publishes) == 50 and bodies == [e.body for e in batch]
    assert [h.properties.message_id for h in headers] == [e.id for e in batch]
    assert [c.tag for c in confirmations] == list(range(1, 51)) and channel.delivery_tag == 50
    assert list(channel.confirmations) == list(range(1, 51))
    assert channel.message_id_delivery_tag == {e.id: n for n, e in enumerate(batch, 1)}

    await channel.answer(spec.Basic.Ack(delivery_tag=20, multiple=True))
    assert all(c.done() and c.result() for c in confirmations[:20])
    assert not any(c.done() for c in confirmations[20:])
    await channel.answer(spec.Basic.Ack(delivery_tag=21))
    await channel.answer(spec.Basic.Nack(delivery_tag=22))
    await channel.answer(spec.Basic.Ack(delivery_tag=50, multiple=True))
    assert confirmations[20].result()
    with pytest.raises(aiormq.exceptions.DeliveryError):
        confirmations[21].result()
    assert all(c.result() for c in confirmations[22:])
    # nothing is kept for a confirmed publish
    assert channel.confirmations == {} and channel.message_id_delivery_tag == {}


async def test_a_return_fails_that_publish_alone_naming_exchange_and_routing_key():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    batch = events(3)
    confirmations = [outbox.publish("q", event, 1, True, None) for event in batch]
    channel.returned(batch[1].id, "q")
    await channel.answer(spec.Basic.Ack(delivery_tag=3, multiple=True))
    assert confirmations[0].result() and confirmations[2].result()
    error = confirmations[1].exception()
    assert isinstance(error, RefusedError)
    assert "no queue is bound to routing key 'q' on the default exchange (NO_ROUTE)" in str(error)
    assert channel.message_id_delivery_tag == {}


async def test_not_mandatory_keeps_no_message_id():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    confirmation = outbox.publish("q", events(1)[0], 1, False, None)
    assert channel.message_id_delivery_tag == {}
    await channel.answer(spec.Basic.Ack(delivery_tag=1))
    assert confirmation.result()


async def test_a_receipt_let_go_of_forgets_its_message_id():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    event = events(1)[0]
    first = outbox.publish("q", event, 1, True, None)
    first.cancel()
    assert channel.message_id_delivery_tag == {}
    again = outbox.publish("q", event, 1, True, None)  # the lane hands it off again
    assert channel.message_id_delivery_tag == {event.id: 2}
    await channel.answer(spec.Basic.Ack(delivery_tag=2, multiple=True))
    assert again.result() and channel.message_id_delivery_tag == {}


async def test_no_answer_within_the_profiles_timeout():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    slow, other = events(2)
    late = outbox.publish("q", slow, 1, True, 0.05)
    answered = outbox.publish("q", other, 1, True, 0.05)
    untimed = outbox.publish("q", other, 1, True, None)
    await channel.answer(spec.Basic.Ack(delivery_tag=2))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(late, 5)
    assert answered.result() and not untimed.done()
    assert outbox.timer is None
    # The answer that comes too late is ignored (aiormq finds a cancelled confirmation)
    await channel.answer(spec.Basic.Ack(delivery_tag=3, multiple=True))
    assert untimed.result() and channel.confirmations == {}


async def test_timeouts_of_two_profiles_on_one_channel():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    long, short = events(2)
    waits_long = outbox.publish("q", long, 1, True, 30)
    waits_short = outbox.publish("q", short, 1, True, 0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waits_short, 5)
    assert not waits_long.done()
    await channel.answer(spec.Basic.Ack(delivery_tag=1))
    assert waits_long.result()


async def test_a_full_write_queue_is_waited_for_in_order():
    channel = FakeChannel(write_queue_size=1)
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))  # the writer is behind
    batch = events(30)
    for event in batch[:10]:
        outbox.publish("q", event, 1, True, None)
    await asyncio.sleep(0)
    assert outbox.writer is not None  # waits for room
    for event in batch[10:]:
        outbox.publish("q", event, 1, True, None)
    await asyncio.sleep(0)
    bodies = []
    while len(bodies) < 30:
        frame = await asyncio.wait_for(channel.write_queue.get(), 5)
        data = bytes(frame.payload)
        while data:
            used, _, value = pamqp_frame.unmarshal(data)
            if isinstance(value, ContentBody):
                bodies.append(value.value)
            data = data[used:]
    assert bodies == [e.body for e in batch]
    await asyncio.sleep(0)
    assert outbox.writer is None and not outbox.buffer


async def test_big_batches_are_written_without_waiting_for_the_turn():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    big = Event(routing_key="q", body=b"x" * (700 * 1024))
    outbox.publish("q", big, 1, True, None)
    assert channel.write_queue.empty()
    outbox.publish("q", big, 1, True, None)
    assert channel.write_queue.qsize() == 1  # over 1 MiB: handed over at once
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1 and not outbox.buffer


@pytest.mark.parametrize("refused", [False, True], ids=["lost", "access-refused"])
async def test_a_closed_channel_fails_what_awaits_an_answer(refused):
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    confirmations = [outbox.publish("q", event, 1, True, 10) for event in events(3)]
    await channel.answer(spec.Basic.Ack(delivery_tag=1))
    if refused:
        reason = aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED - write access to exchange 'x'")
    else:
        reason = ConnectionResetError("connection lost")
    channel.closing.set_exception(reason)
    pending = confirmations[1:]
    await asyncio.wait(pending, timeout=5)
    assert confirmations[0].result()
    errors = [c.exception() for c in pending]
    if refused:
        # each its own refusal, saying what to fix (as when every publish raised its own)
        assert all(isinstance(e, LoginRefusedError) and e.__cause__ is reason for e in errors)
        assert errors[0] is not errors[1] and "write permission" in str(errors[0])
    else:
        assert all(e is reason for e in errors)
    assert outbox.timer is None


async def test_frames_not_yet_written_when_the_channel_closes_are_not_written():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    confirmation = outbox.publish("q", events(1)[0], 1, True, None)
    channel.closing.set_exception(ConnectionResetError("connection lost"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert channel.written() == [] and isinstance(confirmation.exception(), ConnectionResetError)


async def test_a_cleanly_closed_channel_is_a_connection_error():
    channel = FakeChannel()
    outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
    confirmation = outbox.publish("q", events(1)[0], 1, True, None)
    channel.closing.set_result(None)
    await asyncio.wait([confirmation], timeout=5)
    assert isinstance(confirmation.exception(), ConnectionError)
    assert "amqp://127.0.0.1:5672/" in str(confirmation.exception())


async def test_confirmations_no_one_awaits_any_more_leave_no_stray_error(caplog):
    """Failed by a timeout or a closed channel and never read: asyncio logs nothing when they go."""

    async def abandon():
        channel = FakeChannel()
        outbox = pika.Outbox(channel, "", "amqp://127.0.0.1:5672/")
        timed = [outbox.publish("q", event, 1, True, 0.01) for event in events(2)]
        await asyncio.wait(timed, timeout=5)
        for event in events(3):
            outbox.publish("q", event, 1, True, None)
        channel.closing.set_exception(ConnectionResetError("connection lost"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    await abandon()
    gc.collect()
    assert "never retrieved" not in caplog.text
