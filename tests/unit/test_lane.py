"""
The lane alone, with destinations of the test's own: the retry policy, the
attempts each dead letter counts, and which event a failure is charged to.
"""
import asyncio
import random
import time
import types

import pytest

from evbus.exc import MessageTooLargeError
from evbus.exc import RefusedError
from evbus.lane import Destination
from evbus.lane import Lane
from evbus.lane import RetryPolicy
from evbus.types import Event
from tests.conftest import wait_for


def jitter(monkeypatch, fraction: float):
    """Every retry delay becomes ``fraction`` of its ceiling."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low + (high - low) * fraction)


class Recorder:
    """What a lane gave up: (body, error, attempts)."""

    def __init__(self):
        self.given_up: list[tuple[bytes, BaseException, int]] = []

    async def on_failure(self, lane, event, error, attempts):
        self.given_up.append((event.body, error, attempts))


def make_lane(destination: Destination, policy: RetryPolicy, recorder: Recorder, **kwargs) -> Lane:
    return Lane(
        plugin="test",
        provider="test",
        profile="default",
        ctx=types.SimpleNamespace(acct={}),
        destination=destination,
        on_failure=recorder.on_failure,
        policy=policy,
        **kwargs,
    )


async def stop(lane: Lane):
    await lane.close(ConnectionError("the test ended"))


class Outage:
    """A destination that fails every publish until ``seconds`` after its first one, then records."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.until: float | None = None
        self.sends: list[float] = []
        self.delivered: list[bytes] = []

    def send(self, ctx, routing_key, event):
        now = time.monotonic()
        self.sends.append(now)
        if self.until is None:
            self.until = now + self.seconds
        if now < self.until:
            raise ConnectionRefusedError("connection refused")
        self.delivered.append(event.body)


def test_policy_default_has_no_cap_on_attempts():
    policy = RetryPolicy()
    assert policy.attempts == 0 and policy.seconds == 30.0
    # however many attempts failed, the seconds decide
    assert policy.next_delay(10**6, 29.0) is not None
    assert policy.next_delay(1, 30.0) is None


def test_policy_cap_on_attempts():
    policy = RetryPolicy(attempts=3)
    assert policy.next_delay(2, 0.0) is not None
    assert policy.next_delay(3, 0.0) is None


def test_policy_cuts_the_last_delay_to_the_budget(monkeypatch):
    jitter(monkeypatch, 1.0)
    policy = RetryPolicy(seconds=5, backoff=1, backoff_max=4)
    assert policy.next_delay(1, 0.0) == 1
    assert policy.next_delay(3, 0.0) == 4
    assert policy.next_delay(3, 4.5) == pytest.approx(0.5)
    assert policy.next_delay(3, 5.0) is None


@pytest.mark.parametrize("fraction", [0.01, 1.0, None], ids=["short-delays", "long-delays", "random"])
async def test_outage_shorter_than_the_budget_loses_nothing(monkeypatch, fraction):
    """Failing for 2 s with retry_seconds 5: delivered, never dead-lettered, whatever the jitter."""
    if fraction is not None:
        jitter(monkeypatch, fraction)
    destination = Outage(2.0)
    recorder = Recorder()
    lane = make_lane(Destination(send=destination.send), RetryPolicy(seconds=5), recorder)
    try:
        lane.put(Event(body=b"1"))
        lane.put(Event(body=b"2"))
        await asyncio.wait_for(lane.drained(), 20)
    finally:
        await stop(lane)
    assert recorder.given_up == []
    assert destination.delivered == [b"1", b"2"]
    assert len(destination.sends) > 2
    assert (lane.published, lane.failed, lane.down) == (2, 0, False)


@pytest.mark.parametrize("fraction", [0.01, 1.0], ids=["short-delays", "long-delays"])
async def test_outage_beyond_the_budget_is_dead_lettered_with_its_attempts(monkeypatch, fraction):
    jitter(monkeypatch, fraction)
    destination = Outage(3600)
    recorder = Recorder()
    policy = RetryPolicy(seconds=0.5, backoff=0.05, backoff_max=0.2)
    lane = make_lane(Destination(send=destination.send), policy, recorder)
    try:
        lane.put(Event(body=b"lost"))
        await asyncio.wait_for(lane.drained(), 20)
        [(body, error, attempts)] = recorder.given_up
        assert body == b"lost" and isinstance(error, ConnectionRefusedError)
        assert attempts == len(destination.sends) > 1
        # the last attempt started when the budget ended, not before
        assert destination.sends[-1] - destination.sends[0] >= policy.seconds - 0.001
        assert lane.down
        # a down lane: the next event gets one attempt
        lane.put(Event(body=b"next"))
        await asyncio.wait_for(lane.drained(), 20)
        assert [(b, a) for b, _, a in recorder.given_up] == [(b"lost", attempts), (b"next", 1)]
    finally:
        await stop(lane)


async def test_cap_on_attempts_ends_the_retries_first(monkeypatch):
    jitter(monkeypatch, 0.01)
    destination = Outage(3600)
    recorder = Recorder()
    lane = make_lane(Destination(send=destination.send), RetryPolicy(attempts=4, backoff=0.01), recorder)
    try:
        lane.put(Event(body=b"lost"))
        await asyncio.wait_for(lane.drained(), 20)
    finally:
        await stop(lane)
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"lost", 4)]
    assert len(destination.sends) == 4


async def test_attempts_of_the_event_in_backoff(monkeypatch):
    """While the oldest event waits for its next attempt, the lane knows how many failed."""
    jitter(monkeypatch, 1.0)
    destination = Outage(3600)
    recorder = Recorder()
    lane = make_lane(Destination(send=destination.send), RetryPolicy(backoff=60, backoff_max=60), recorder)
    event = Event(body=b"waiting")
    try:
        lane.put(event)
        await wait_for(lambda: lane.retried == 1, 10, "the first retry")
        assert lane.attempts_of(event) == 1
        assert lane.attempts_of(Event(body=b"other")) == 0
    finally:
        await stop(lane)


async def test_error_a_retry_cannot_help_gives_up_after_one_attempt():
    sends = []

    def send(ctx, routing_key, event):
        sends.append(event.body)
        raise MessageTooLargeError("too large: send smaller events")

    recorder = Recorder()
    lane = make_lane(Destination(send=send), RetryPolicy(), recorder)
    try:
        lane.put(Event(body=b"big"))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert sends == [b"big"]
    assert [(b, type(e), a) for b, e, a in recorder.given_up] == [(b"big", MessageTooLargeError, 1)]
    assert not lane.down


class Pipe:
    """
    A pipelined destination: send() hands off and returns a future that the
    "broker" confirms a moment later, in order.

    :param refuse_at_send: Bodies whose hand-off raises MessageTooLargeError
    :param refuse_at_confirm: Bodies whose own confirmation fails with RefusedError
        (as RabbitMQ returns a message)
    :param poison: Bodies that make the "broker" fail every event in flight,
        earlier ones included, with one shared MessageTooLargeError (as
        RabbitMQ closes a channel)
    """

    def __init__(self, refuse_at_send=(), refuse_at_confirm=(), poison=()):
        self.refuse_at_send = set(refuse_at_send)
        self.refuse_at_confirm = set(refuse_at_confirm)
        self.poison = set(poison)
        self.in_flight: list[tuple[bytes, asyncio.Future]] = []
        self.confirmed: list[bytes] = []
        self.sent: list[bytes] = []

    async def send(self, ctx, routing_key, event):
        self.sent.append(event.body)
        if event.body in self.refuse_at_send:
            raise MessageTooLargeError(f"{event.body!r} is too large")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.in_flight.append((event.body, future))
        if event.body in self.poison:
            loop.call_soon(self._close_channel, event.body)
        else:
            # Each its own confirmation, in the order sent (timers of one delay run in order)
            loop.call_later(0.005, self._confirm, event.body, future)
        return future

    def _confirm(self, body: bytes, future: asyncio.Future):
        if future.done():  # failed with the channel
            return
        self.in_flight.remove((body, future))
        if body in self.refuse_at_confirm:
            future.set_exception(RefusedError(f"{body!r} was returned"))
        else:
            self.confirmed.append(body)
            future.set_result(None)

    def _close_channel(self, body: bytes):
        error = MessageTooLargeError(f"the broker closed the channel: {body!r} is too large")
        for _, future in self.in_flight:
            if not future.done():
                future.set_exception(error)
        self.in_flight.clear()


async def test_failed_hand_off_behind_events_in_flight_is_charged_to_its_event():
    pipe = Pipe(refuse_at_send={b"big"})
    recorder = Recorder()
    lane = make_lane(Destination(send=pipe.send, pipelined=True), RetryPolicy(), recorder, window=10)
    try:
        for body in (b"0", b"1", b"big", b"3", b"4"):
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"big", 1)]
    assert pipe.confirmed == [b"0", b"1", b"3", b"4"]
    assert pipe.sent.count(b"big") == 1


async def test_failure_shared_by_events_in_flight_is_sorted_out_one_at_a_time():
    pipe = Pipe(poison={b"poison"})
    recorder = Recorder()
    lane = make_lane(Destination(send=pipe.send, pipelined=True), RetryPolicy(), recorder, window=10)
    bodies = [b"0", b"1", b"poison", b"3", b"4"]
    try:
        for body in bodies:
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    # all five failed at once; sent one at a time, only the poison failed
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"poison", 1)]
    assert pipe.confirmed == [b"0", b"1", b"3", b"4"]
    assert (lane.published, lane.failed) == (4, 1)


async def test_own_refusal_of_an_event_leaves_the_events_behind_it_in_flight():
    """Not a go-back: the events handed off behind a refused one are confirmed, not sent twice."""
    pipe = Pipe(refuse_at_confirm={b"2", b"5"})
    recorder = Recorder()
    lane = make_lane(Destination(send=pipe.send, pipelined=True), RetryPolicy(), recorder, window=10)
    bodies = [str(n).encode() for n in range(8)]
    try:
        for body in bodies:
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"2", 1), (b"5", 1)]
    assert pipe.confirmed == [b for b in bodies if b not in (b"2", b"5")]
    assert pipe.sent == bodies  # each handed off once
    assert lane.retried == 0


async def test_inline_failure_counts_one_attempt():
    """A plugin that never waits, failing in put() itself: dead-lettered after that one attempt."""
    sends = []

    def send(ctx, routing_key, event):
        sends.append(event.body)
        raise ValueError("rejected")

    recorder = Recorder()
    lane = make_lane(Destination(send=send, inline=True), RetryPolicy(), recorder)
    try:
        lane.put(Event(body=b"1"))
        assert sends == [b"1"]  # published by put(), not by the task
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"1", 1)]


class Batches:
    """
    A pipelined destination that also takes several events at once
    (``send_many``), as the Kafka plugin does: the events of one hand-off
    share one confirmation, which the "broker" gives a moment later, in order.

    :param too_large: Bodies that cannot be handed off (MessageTooLargeError)
    :param poison: Bodies that fail their whole batch with one shared error a retry cannot help
    :param flaky: How many batches fail first with an error a retry can help
    """

    def __init__(self, too_large=(), poison=(), flaky=0):
        self.too_large = set(too_large)
        self.poison = set(poison)
        self.flaky = flaky
        # ("send" or "send_many", [bodies]) of each hand-off
        self.hand_offs: list[tuple[str, list[bytes]]] = []
        self.confirmed: list[bytes] = []
        self.outstanding = 0
        self.most_outstanding = 0

    async def send(self, ctx, routing_key, event):
        if event.body in self.too_large:
            raise MessageTooLargeError(f"{event.body!r} is too large")
        return self._hand_off("send", [event])[0]

    async def send_many(self, ctx, events):
        assert len(events) > 1  # a lone event goes to send
        handed = []
        for _, event in events:
            if event.body in self.too_large:
                if not handed:
                    raise MessageTooLargeError(f"{event.body!r} is too large")
                break
            handed.append(event)
        return self._hand_off("send_many", handed)

    def _hand_off(self, how: str, events: list) -> list:
        loop = asyncio.get_running_loop()
        self.hand_offs.append((how, [event.body for event in events]))
        self.outstanding += len(events)
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        future = loop.create_future()
        loop.call_later(0.005, self._confirm, future, [event.body for event in events])
        return [future] * len(events)

    def _confirm(self, future: asyncio.Future, bodies: list[bytes]):
        self.outstanding -= len(bodies)
        if future.done():
            return
        if self.poison.intersection(bodies):
            future.set_exception(MessageTooLargeError("the broker refused the batch"))
        elif self.flaky:
            self.flaky -= 1
            future.set_exception(ConnectionResetError("connection lost"))
        else:
            self.confirmed += bodies
            future.set_result(None)

    def destination(self) -> Destination:
        return Destination(send=self.send, send_many=self.send_many, pipelined=True)


def bodies(count: int) -> list[bytes]:
    return [str(n).encode() for n in range(count)]


async def test_events_that_wait_go_in_one_hand_off_and_a_lone_one_alone():
    batches = Batches()
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=100)
    try:
        lane.put(Event(body=b"lone"))
        await asyncio.wait_for(lane.drained(), 10)
        for body in bodies(50):
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert batches.hand_offs == [("send", [b"lone"]), ("send_many", bodies(50))]
    assert batches.confirmed == [b"lone"] + bodies(50)
    assert (lane.published, lane.failed, lane.retried) == (51, 0, 0)


async def test_hand_offs_of_several_keep_to_the_window():
    batches = Batches()
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=10)
    try:
        for body in bodies(95):
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert batches.confirmed == bodies(95)
    assert batches.most_outstanding == 10
    assert batches.hand_offs[0] == ("send_many", bodies(10))


async def test_event_that_cannot_be_handed_off_in_a_batch_fails_alone():
    batches = Batches(too_large={b"big"})
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=100)
    sent = [b"0", b"1", b"big", b"3", b"4"]
    try:
        for body in sent:
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, type(e), a) for b, e, a in recorder.given_up] == [(b"big", MessageTooLargeError, 1)]
    assert batches.confirmed == [b"0", b"1", b"3", b"4"]
    # the events before it went together, and so did those after it, once it was given up
    assert batches.hand_offs == [("send_many", [b"0", b"1"]), ("send_many", [b"3", b"4"])]
    assert (lane.published, lane.failed, lane.retried) == (4, 1, 0)


async def test_batch_refused_for_one_event_is_sorted_out_one_at_a_time():
    batches = Batches(poison={b"poison"})
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=100)
    sent = [b"0", b"1", b"poison", b"3", b"4"]
    try:
        for body in sent:
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"poison", 1)]
    assert batches.confirmed == [b"0", b"1", b"3", b"4"]
    # all five failed with the batch; then each was sent on its own
    assert batches.hand_offs == [("send_many", sent)] + [("send", [body]) for body in sent]
    assert (lane.published, lane.failed) == (4, 1)


async def test_batch_lost_with_the_connection_is_sent_again_in_order(monkeypatch):
    jitter(monkeypatch, 0.01)
    batches = Batches(flaky=1)
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=100)
    try:
        for body in bodies(20):
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert recorder.given_up == []
    assert batches.confirmed == bodies(20)
    assert batches.hand_offs == [("send_many", bodies(20)), ("send_many", bodies(20))]
    assert (lane.published, lane.failed, lane.retried) == (20, 0, 1)
