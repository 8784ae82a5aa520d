"""
The lane alone, with destinations of the test's own: the retry policy, the
attempts each dead letter counts, and which event a failure is charged to.
"""
import asyncio
import random
import time
import types

import pytest

from evbus.exc import LaneFullError
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


async def deliver(lane: Lane, bodies: list[bytes]):
    """Put events with these bodies, wait until the lane settled them all, and close it."""
    try:
        for body in bodies:
            lane.put(Event(body=body))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)


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
    await deliver(lane, (b"0", b"1", b"big", b"3", b"4"))
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"big", 1)]
    assert pipe.confirmed == [b"0", b"1", b"3", b"4"]
    assert pipe.sent.count(b"big") == 1


async def test_failure_shared_by_events_in_flight_is_sorted_out_one_at_a_time():
    pipe = Pipe(poison={b"poison"})
    recorder = Recorder()
    lane = make_lane(Destination(send=pipe.send, pipelined=True), RetryPolicy(), recorder, window=10)
    bodies = [b"0", b"1", b"poison", b"3", b"4"]
    await deliver(lane, bodies)
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
    await deliver(lane, bodies)
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
    await deliver(lane, bodies(95))
    assert batches.confirmed == bodies(95)
    assert batches.most_outstanding == 10
    assert batches.hand_offs[0] == ("send_many", bodies(10))


async def test_event_that_cannot_be_handed_off_in_a_batch_fails_alone():
    batches = Batches(too_large={b"big"})
    recorder = Recorder()
    lane = make_lane(batches.destination(), RetryPolicy(), recorder, window=100)
    sent = [b"0", b"1", b"big", b"3", b"4"]
    await deliver(lane, sent)
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
    await deliver(lane, sent)
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
    await deliver(lane, bodies(20))
    assert recorder.given_up == []
    assert batches.confirmed == bodies(20)
    assert batches.hand_offs == [("send_many", bodies(20)), ("send_many", bodies(20))]
    assert (lane.published, lane.failed, lane.retried) == (20, 0, 1)


class Broker:
    """
    A pipelined destination whose "broker" confirms each event soon after its
    hand-off, in order, and can fail chosen confirmations.

    :param fail: {body: how many of its confirmations fail} with ConnectionResetError
        (a retry can help); -1 for all of them
    :param hold: Whether confirmations wait for :meth:`release` instead of coming by themselves
    """

    def __init__(self, fail: dict[bytes, int] | None = None, hold: bool = False):
        self.fail = dict(fail or {})
        self.hold = hold
        self.sent: list[bytes] = []
        self.confirmed: list[bytes] = []
        self.unconfirmed: list[tuple[bytes, asyncio.Future]] = []
        self.most_unconfirmed = 0
        self.closed = 0

    async def send(self, ctx, routing_key, event):
        self.sent.append(event.body)
        future = asyncio.get_running_loop().create_future()
        self.unconfirmed.append((event.body, future))
        self.most_unconfirmed = max(self.most_unconfirmed, self._outstanding())
        if not self.hold:
            asyncio.get_running_loop().call_soon(self._answer, event.body, future)
        return future

    def _outstanding(self) -> int:
        return sum(1 for _, future in self.unconfirmed if not future.done())

    def _answer(self, body: bytes, future: asyncio.Future):
        self.unconfirmed.remove((body, future))
        if future.done():  # the lane let go of it (cancelled)
            return
        if self.fail.get(body, 0):
            self.fail[body] -= 1
            future.set_exception(ConnectionResetError(f"connection lost before {body!r} was confirmed"))
        else:
            self.confirmed.append(body)
            future.set_result(None)

    def release(self, count: int = 1):
        """Answer the ``count`` oldest held confirmations."""
        for body, future in list(self.unconfirmed[:count]):
            self._answer(body, future)

    async def close(self, ctx):
        self.closed += 1

    def destination(self) -> Destination:
        return Destination(send=self.send, pipelined=True, close=self.close)


class Settled:
    """The events a lane settled (published or given up), in order: ``on_settled``."""

    def __init__(self):
        self.bodies: list[bytes] = []

    def __call__(self, event):
        self.bodies.append(event.body)


async def test_pipelined_lane_never_has_more_than_the_window_unconfirmed():
    broker = Broker(hold=True)
    recorder = Recorder()
    lane = make_lane(broker.destination(), RetryPolicy(), recorder, window=4)
    try:
        for body in bodies(30):
            lane.put(Event(body=body))
        await wait_for(lambda: len(broker.sent) == 4, 10, "the first window handed off")
        # Nothing confirmed yet: the lane waits, with exactly the window in flight
        for _ in range(20):
            await asyncio.sleep(0)
        assert broker.sent == bodies(4) and lane.stats()["in_flight"] == 4
        while len(broker.confirmed) < 30:
            broker.release(1)
            await wait_for(lambda: broker.unconfirmed or len(broker.confirmed) == 30, 10, "the next hand-off")
            assert broker._outstanding() <= 4
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert broker.most_unconfirmed == 4
    assert broker.sent == bodies(30) and broker.confirmed == bodies(30)
    assert (lane.published, lane.failed, lane.retried) == (30, 0, 0)


async def test_window_of_one_hands_off_one_event_at_a_time():
    broker = Broker()
    lane = make_lane(broker.destination(), RetryPolicy(), Recorder(), window=1)
    await deliver(lane, bodies(10))
    assert broker.most_unconfirmed == 1 and broker.confirmed == bodies(10)


async def test_failed_confirmation_goes_back_and_resends_it_and_those_after_in_order(monkeypatch):
    """
    Go-back: the confirmation of "2" fails with an error a retry can help; the
    lane hands off "2" and every event after it again, in order, and settles
    each event once.
    """
    jitter(monkeypatch, 0.01)
    broker = Broker(fail={b"2": 1})
    recorder = Recorder()
    settled = Settled()
    lane = make_lane(broker.destination(), RetryPolicy(), recorder, window=4, on_settled=settled)
    await deliver(lane, bodies(10))
    assert recorder.given_up == []
    assert broker.sent[:4] == bodies(4)  # "3" was in flight behind "2" when it failed
    again = broker.sent.index(b"2", 3)
    assert broker.sent[again:] == bodies(10)[2:]
    assert broker.sent[:again] == bodies(again)  # nothing skipped or reordered before the go-back
    assert settled.bodies == bodies(10)  # each settled once, in order
    assert (lane.published, lane.failed, lane.retried) == (10, 0, 1)


async def test_after_settled_follows_what_the_lanes_task_settled(monkeypatch):
    """
    ``after_settled`` is called after the events the lane's task settles,
    confirmed or given up: none is left settled without a call after it.
    """
    jitter(monkeypatch, 0.01)
    broker = Broker(fail={b"2": -1})
    settled = Settled()
    seen_at_calls = []
    lane = make_lane(
        broker.destination(),
        RetryPolicy(attempts=2, backoff=0.01),
        Recorder(),
        window=4,
        on_settled=settled,
        after_settled=lambda: seen_at_calls.append(len(settled.bodies)),
    )
    await deliver(lane, bodies(8))
    assert settled.bodies == bodies(8)
    assert seen_at_calls and seen_at_calls[-1] == 8 and seen_at_calls == sorted(seen_at_calls)


async def test_confirmation_failing_beyond_the_budget_dead_letters_that_event_and_goes_on(monkeypatch):
    """The attempts cap spent on "2": it alone is given up, with its attempts; the others are published once each."""
    jitter(monkeypatch, 0.01)
    broker = Broker(fail={b"2": -1})
    recorder = Recorder()
    settled = Settled()
    logged = []
    lane = make_lane(
        broker.destination(),
        RetryPolicy(attempts=3, backoff=0.01),
        recorder,
        window=4,
        on_settled=settled,
        log=logged.append,
    )
    await deliver(lane, bodies(8))
    [(body, error, attempts)] = recorder.given_up
    assert (body, attempts) == (b"2", 3) and isinstance(error, ConnectionResetError)
    assert broker.sent.count(b"2") == 3
    # The broker may have confirmed an event behind "2" that the lane then sent again
    # (at least once); the lane settles each event once, in order
    assert list(dict.fromkeys(broker.confirmed)) == [b for b in bodies(8) if b != b"2"]
    assert settled.bodies == bodies(8)
    assert (lane.published, lane.failed, lane.retried) == (7, 1, 2)
    # The budget spent made the lane down; the next confirmed publish made it up again
    assert any("is down" in message for message in logged) and any("up again" in message for message in logged)
    assert not lane.down


class Recording(RetryPolicy):
    """A retry policy that records each (attempts, elapsed) the lane asked about, and the delay it got."""

    asked: list

    def next_delay(self, attempts: int, elapsed: float) -> float | None:
        delay = super().next_delay(attempts, elapsed)
        self.asked.append((attempts, delay))
        return delay


async def test_backoff_doubles_up_to_its_ceiling_then_the_event_is_dead_lettered(monkeypatch):
    jitter(monkeypatch, 1.0)  # every delay is its ceiling
    policy = Recording(attempts=6, backoff=0.001, backoff_max=0.004)
    object.__setattr__(policy, "asked", [])
    destination = Outage(3600)
    recorder = Recorder()
    lane = make_lane(Destination(send=destination.send), policy, recorder)
    try:
        lane.put(Event(body=b"lost"))
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert policy.asked == [(1, 0.001), (2, 0.002), (3, 0.004), (4, 0.004), (5, 0.004), (6, None)]
    assert [(b, a) for b, _, a in recorder.given_up] == [(b"lost", 6)]
    assert len(destination.sends) == 6
    assert (lane.retried, lane.failed, lane.down) == (5, 1, True)


async def test_full_lane_makes_the_listener_wait_for_room():
    """limit 3, ``wait``: a producer that waits for room never has more than 3 events in the lane."""
    broker = Broker(hold=True)
    lane = make_lane(broker.destination(), RetryPolicy(), Recorder(), window=2, limit=3, when_full="wait")
    most = 0

    async def producer():
        nonlocal most
        for body in bodies(20):
            await lane.room()
            lane.put(Event(body=body))
            most = max(most, lane.depth)

    task = asyncio.create_task(producer())
    try:
        await wait_for(lambda: lane.full, 10, "a full lane")
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and lane.depth == 3  # waiting for room, not piling up
        while not task.done() or broker.unconfirmed:
            broker.release(1)
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 10)
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        task.cancel()
        await stop(lane)
    assert most == 3
    assert broker.confirmed == bodies(20)
    assert (lane.published, lane.failed) == (20, 0)


async def test_full_lane_that_dead_letters_drops_the_oldest_not_handed_off():
    """limit 3, ``dead-letter``: put never waits; the oldest event not yet handed off is given up, never tried."""
    broker = Broker(hold=True)
    recorder = Recorder()
    lane = make_lane(broker.destination(), RetryPolicy(), recorder, window=1, limit=3, when_full="dead-letter")
    try:
        lane.put(Event(body=b"0"))
        await wait_for(lambda: broker.sent == [b"0"], 10, "the first hand-off")
        for body in (b"1", b"2", b"3", b"4", b"5"):
            lane.put(Event(body=body))
            assert lane.depth <= 3
        assert not lane.full  # it never makes the listener wait
        assert lane.depth == 3
        # (the lane's task reports the dropped events once it is done waiting for "0")
        while broker.unconfirmed or lane.depth:
            broker.release(1)
            await asyncio.sleep(0)
        await asyncio.wait_for(lane.drained(), 10)
    finally:
        await stop(lane)
    assert [(b, type(e), a) for b, e, a in recorder.given_up] == [
        (b"1", LaneFullError, 0), (b"2", LaneFullError, 0), (b"3", LaneFullError, 0)
    ]
    assert "held 3 events" in str(recorder.given_up[0][1])
    assert broker.sent == broker.confirmed == [b"0", b"4", b"5"]
    assert (lane.published, lane.failed) == (3, 3)


async def test_close_reports_every_event_not_confirmed_and_closes_the_plugin():
    """A broker that never confirms: close gives up the events in flight and those waiting, and returns."""
    broker = Broker(hold=True)
    recorder = Recorder()
    settled = Settled()
    lane = make_lane(broker.destination(), RetryPolicy(), recorder, window=2, on_settled=settled)
    for body in bodies(5):
        lane.put(Event(body=body))
    await wait_for(lambda: len(broker.sent) == 2, 10, "the window handed off")
    undelivered = await asyncio.wait_for(lane.close(ConnectionError("the bus stopped"), grace=1), 10)
    assert undelivered == 5
    assert [b for b, _, _ in recorder.given_up] == bodies(5) == settled.bodies
    assert all(isinstance(e, ConnectionError) and "the bus stopped" in str(e) for _, e, _ in recorder.given_up)
    assert all(future.cancelled() for _, future in broker.unconfirmed)  # the lane let go of them
    assert broker.closed == 1
    assert (lane.published, lane.failed, lane.depth) == (0, 5, 0)
    # closed is closed: a second close has nothing to report and does not hang
    assert await asyncio.wait_for(lane.close(ConnectionError("again"), grace=1), 10) == 0


async def test_close_during_backoff_says_why_the_event_was_not_delivered(monkeypatch):
    jitter(monkeypatch, 1.0)
    destination = Outage(3600)
    recorder = Recorder()
    lane = make_lane(Destination(send=destination.send), RetryPolicy(backoff=60, backoff_max=60), recorder)
    lane.put(Event(body=b"waiting"))
    await wait_for(lambda: lane.retried == 1, 10, "the first retry's backoff")
    assert await asyncio.wait_for(lane.close(ConnectionError("the bus stopped"), grace=1), 10) == 1
    [(body, error, attempts)] = recorder.given_up
    assert body == b"waiting" and attempts == 1
    assert "the bus stopped" in str(error) and "ConnectionRefusedError: connection refused" in str(error)


async def test_close_leaves_behind_a_plugin_that_ignores_cancellation():
    """A publish that swallows every cancel, and a close that never returns: close still ends, and says so."""
    release = asyncio.Event()
    finished = []

    async def stubborn():
        try:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass  # a plugin that swallows the cancel
        finally:
            finished.append(True)

    def send(ctx, routing_key, event):
        return stubborn()

    async def close(ctx):
        await asyncio.Event().wait()  # never returns

    logged = []
    recorder = Recorder()
    lane = make_lane(Destination(send=send, close=close), RetryPolicy(), recorder, log=logged.append)
    lane.put(Event(body=b"stuck"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    try:
        undelivered = await asyncio.wait_for(lane.close(ConnectionError("the bus stopped"), grace=0.2), 10)
    finally:
        release.set()
    assert undelivered == 1
    assert [b for b, _, _ in recorder.given_up] == [b"stuck"]
    assert any("did not end" in message and "ignores cancellation" in message for message in logged)
    assert any("Closing" in message and "took longer" in message for message in logged)
    # The publish left behind ends too, and nothing is left pending (the suite fails on stray tasks)
    await wait_for(lambda: finished, 10, "the stubborn publish to end")
