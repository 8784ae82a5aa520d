"""
The broker queue and the hot path of a put: records on the queue, their Events,
records in the lanes, and puts from other threads handed to the loop together.
"""
import asyncio
import gc
import json
import threading
import time
import types

import pytest

from evbus.lane import Destination
from evbus.lane import Lane
from evbus.types import Event
from evbus.types import event_of
from evbus.types import make_record
from tests.conftest import take_json
from tests.conftest import wait_for


async def test_a_backlog_of_events_is_no_work_for_the_garbage_collector(hub):
    bus = await hub.evbus.broker.init()
    for n in range(100):
        await hub.evbus.broker.put(body={"n": n})
    gc.collect()
    items = [bus.take_nowait() for _ in range(100)]
    assert all(item.__class__ is tuple and not gc.is_tracked(item) for item in items)


async def test_what_is_taken_from_the_queue_is_the_event_of_its_put(hub):
    bus = await hub.evbus.broker.init()
    before = time.time()
    await hub.evbus.broker.put(routing_key="rk", body={"n": 1}, profile="p")
    hub.evbus.broker.put_nowait(body={"n": 2})
    after = time.time()
    first, second = await hub.evbus.broker.get(), bus.get_nowait()
    assert type(first) is Event and type(second) is Event
    assert (first.profile, first.routing_key, first.body, first.content_type) == (
        "p", "rk", b'{"n": 1}', "application/json"
    )
    assert (second.profile, second.routing_key, second.body) == ("default", None, b'{"n": 2}')
    assert before <= first.timestamp <= second.timestamp <= after
    assert first.id != second.id and first.id.split("-")[0] == second.id.split("-")[0]
    assert first.trace_context is None and first.headers == ()
    with pytest.raises(AttributeError):
        first.body = b"x"  # frozen


def test_an_event_made_of_a_record_keeps_its_id_and_time():
    record = make_record("p", None, b"body", "application/json")
    event, again = event_of(record), event_of(record)
    assert event == again and event is not again
    assert (event.profile, event.routing_key, event.body, event.timestamp) == ("p", None, b"body", record[5])
    assert event.id.endswith(f"-{record[4]:x}")


class Published:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.bodies: list[tuple] = []
        self.events: list = []

    def publish_nowait(self, ctx, routing_key, body):
        if self.fail:
            raise ValueError("refused")
        self.bodies.append((routing_key, body))

    def send(self, ctx, routing_key, event):
        self.events.append(event)
        self.publish_nowait(ctx, routing_key, event.body)


def lane_of(published: Published, given_up: list, **kwargs) -> Lane:
    async def on_failure(lane, event, error, attempts):
        given_up.append((event, attempts))

    destination = Destination(send=published.send, inline=True, publish_nowait=published.publish_nowait)
    return Lane(
        "test", "test", "default", types.SimpleNamespace(acct={"routing_key": "profile-rk"}), destination,
        on_failure, **kwargs,
    )


async def test_a_lane_publishes_a_record_in_line_without_its_event():
    published, given_up = Published(), []
    lane = lane_of(published, given_up)
    try:
        assert lane.put(make_record("p", None, b"1", "application/json")) == 1
        assert lane.put(make_record("p", "own", b"2", "application/json")) == 2
        assert published.bodies == [("profile-rk", b"1"), ("own", b"2")]
        assert published.events == []  # no Event was made
        assert (lane.queued, lane.published, lane.failed) == (2, 2, 0)
        await asyncio.wait_for(lane.settled(2), 5)
    finally:
        await lane.close(ConnectionError("the test ended"))


async def test_a_record_whose_publish_fails_is_given_up_as_its_event():
    published, given_up = Published(fail=True), []
    lane = lane_of(published, given_up)
    record = make_record("p", None, b"1", "application/json")
    try:
        lane.put(record)
        await asyncio.wait_for(lane.drained(), 5)
    finally:
        await lane.close(ConnectionError("the test ended"))
    [(event, attempts)] = given_up
    assert event == event_of(record) and attempts == 1


async def test_a_lane_that_needs_the_event_makes_it():
    """A lane with an envelope (or telemetry, or the spool) hands its plugin the Event of a record."""
    published, given_up = Published(), []
    lane = lane_of(published, given_up, envelope=lambda event: event)
    record = make_record("p", None, b"1", "application/json")
    try:
        lane.put(record)
    finally:
        await lane.close(ConnectionError("the test ended"))
    assert published.events == [event_of(record)]


async def test_lanes_of_one_record_share_its_event(hub, running):
    seen: dict[str, list] = {}

    def capture(plugin, provider, profile):
        async def send(ctx, routing_key, event):
            seen.setdefault(profile, []).append(event)

        return Destination(send=send)

    hub.evbus.route.STATE.capture = capture
    await running({"internal": {"a*": {}, "*b": {}}})
    await hub.evbus.broker.put(body=1, profile="ab")
    await hub.evbus.init.stop()
    [first], [second] = seen["a*"], seen["*b"]
    assert first is second and first.body == b"1"


async def test_puts_from_a_thread_reach_the_loop_together(hub, running):
    """Events that threads put while the loop is busy cost the loop one wake-up, not one each."""
    await running({"internal": {"default": {}}})
    loop = asyncio.get_running_loop()
    calls = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        calls.append(callback)
        return call_soon_threadsafe(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting
    try:
        thread = threading.Thread(target=lambda: [hub.evbus.broker.put_nowait(body=n) for n in range(50)])
        thread.start()
        thread.join()  # the loop is busy (blocked) meanwhile
        assert len(hub.evbus.broker.STATE.handoff) == 50
        assert await take_json(await hub.ingress.internal.get(), 50) == list(range(50))
    finally:
        del loop.call_soon_threadsafe
    assert len(calls) == 1
    assert len(hub.evbus.broker.STATE.handoff) == 0


async def test_a_bounded_queue_keeps_the_places_of_threads_for_them(hub, running, monkeypatch):
    """
    Awaited puts wait while the room left is reserved for events threads put;
    each producer keeps its order.
    """
    monkeypatch.setenv("EVBUS_QUEUE_SIZE", "20")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    await running({"internal": {"*": {}}})
    created = []
    loop = asyncio.get_running_loop()
    loop.set_task_factory(lambda loop, coro, **kwargs: created.append(coro) or asyncio.Task(coro, loop=loop))
    accepted: dict[str, list[int]] = {"t0": [], "t1": []}

    def produce(name):
        for n in range(300):
            while True:
                try:
                    hub.evbus.broker.put_nowait(body=[name, n])
                    accepted[name].append(n)
                    break
                except asyncio.QueueFull:
                    time.sleep(0.0005)

    async def task(name):
        for n in range(300):
            await hub.evbus.broker.put(body=[name, n])

    try:
        threads = [threading.Thread(target=produce, args=(name,)) for name in accepted]
        for thread in threads:
            thread.start()
        await asyncio.gather(task("a"), task("b"))
        await loop.run_in_executor(None, lambda: [thread.join() for thread in threads])
        arrived = await take_json(await hub.ingress.internal.get(), 1200)
    finally:
        loop.set_task_factory(None)
    for name in ("t0", "t1", "a", "b"):
        assert [n for who, n in arrived if who == name] == list(range(300))
    # no task per event handed over from a thread (the queue had their places)
    assert len(created) < 50


def test_put_in_one_thread_follows_each_new_loop(hub):
    """A loop that ended leaves the bus to the next loop of the same thread, with what it queued."""

    async def first():
        await hub.evbus.broker.put(body="first")

    async def second():
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        await hub.evbus.init.join(timeout=5)
        await hub.evbus.broker.put(body="second")
        await hub.evbus.init.stop()
        await listener
        queue = await hub.ingress.internal.get()
        return [queue.get_nowait() for _ in range(queue.qsize())]

    def run_both():
        asyncio.run(first())
        return asyncio.run(second())

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(run_both()))
    thread.start()
    thread.join(30)
    assert outcome == [[b'"first"', b'"second"']]


async def test_what_the_listener_took_but_did_not_hand_on_stays_queued(hub, monkeypatch):
    """
    The listener takes what is queued at once; cancelled while a full lane makes it
    wait, it queues again what it did not hand on.
    """
    from tests.conftest import add_ingress

    add_ingress(hub, "slow")
    monkeypatch.setenv("EVBUS_LANE_SIZE", "1")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    for n in range(5):
        hub.evbus.broker.put_nowait(body=n)
    contexts = await hub.evbus.acct.profiles(acct_data={"slow": {"default": {"delay": 30}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    [lane] = hub.evbus.route.all_lanes()
    while lane.queued < 1 or not lane._room:  # the second event waits for room
        await asyncio.sleep(0.01)
    listener.cancel()
    await asyncio.wait([listener])
    bus = hub.evbus.BUS
    assert [json.loads(bus.get_nowait().body) for _ in range(bus.qsize())] == [2, 3, 4]


async def test_events_queued_behind_the_stop_wait_for_the_next_start(hub):
    from evbus.init import Stop

    bus = await hub.evbus.broker.init()
    hub.evbus.broker.put_nowait(body="before")
    # The queue as a stop() leaves it while the listener is busy: its stop, then a later event
    stop_item = Stop(5, asyncio.get_running_loop().create_future())
    bus.put_nowait(stop_item)
    bus.put_nowait(make_record("default", None, b'"after"', "application/json"))
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    await asyncio.wait_for(hub.evbus.init.start(contexts), 10)  # takes all three at once, ends at the stop
    assert stop_item.done.result() == 0
    queue = await hub.ingress.internal.get()
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [b'"before"']
    assert [bus.get_nowait().body for _ in range(bus.qsize())] == [b'"after"']


async def test_an_event_the_spool_cannot_store_leaves_no_place_reserved(hub, running):
    """
    put_nowait from a thread with a spool that fails: the error reaches the
    caller, and nothing is queued or held.
    """
    from evbus.exc import SpoolError

    await running({"internal": {"default": {}}})

    class FailingSpool:
        def add(self, event, awaited=False):
            raise SpoolError("the disk is full")

    state = hub.evbus.broker.STATE
    real, state.spool = state.spool, FailingSpool()
    errors = []

    def produce():
        try:
            hub.evbus.broker.put_nowait(body="lost")
        except SpoolError as e:
            errors.append(e)

    try:
        thread = threading.Thread(target=produce)
        thread.start()
        thread.join()
    finally:
        state.spool = real
    assert len(errors) == 1
    assert len(state.handoff) == 0 and hub.evbus.BUS.qsize() == 0


async def test_threads_putting_at_once_keep_the_bound_within_one_event_each(hub, running, monkeypatch):
    """
    Eight threads put while the loop is busy: they take no lock, so each can
    pass the bound by at most its own event; every event they were told was
    accepted arrives once, in each thread's order, and the others were refused.
    """
    from evbus.exc import BusFullError

    threads_count, bound = 8, 100
    monkeypatch.setenv("EVBUS_QUEUE_SIZE", str(bound))
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    await running({"internal": {"*": {}}})
    accepted: dict[int, list[int]] = {t: [] for t in range(threads_count)}
    refused = []
    start = threading.Barrier(threads_count)

    def produce(t):
        start.wait()
        for n in range(50):
            try:
                hub.evbus.broker.put_nowait(body=[t, n])
            except BusFullError:
                refused.append((t, n))
            else:
                accepted[t].append(n)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # the loop is blocked meanwhile: nothing is queued yet
    state = hub.evbus.broker.STATE
    held = len(state.handoff) + hub.evbus.BUS.qsize()
    assert bound <= held < bound + threads_count
    assert held + len(refused) == threads_count * 50
    arrived = await take_json(await hub.ingress.internal.get(), held)
    for t, numbers in accepted.items():
        assert [n for who, n in arrived if who == t] == numbers
    assert hub.evbus.broker.stats()["put"] == held


def test_a_thread_putting_while_loops_end_and_start_loses_nothing(hub):
    """
    A thread puts throughout while the bus's loop ends and the next one takes
    it over: every event it put arrives in the second loop, in order.
    """
    from evbus.exc import BusFullError

    done = threading.Event()
    first_ran = threading.Event()
    put: list[int] = []

    def produce():
        n = 0
        while not done.is_set():
            try:
                hub.evbus.broker.put_nowait(body=n)
            except BusFullError:
                time.sleep(0.001)
                continue
            put.append(n)
            n += 1
            if n % 50 == 0:
                time.sleep(0.0005)

    async def first():
        await hub.evbus.broker.put(body="first")  # binds the bus to this loop
        first_ran.set()
        # the thread's events are handed over to this loop meanwhile
        more = len(put) + 100
        await wait_for(lambda: len(put) >= more, 10, "events put in the first loop")

    async def second():
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        await hub.evbus.init.join(timeout=5)
        more = len(put) + 100
        await wait_for(lambda: len(put) >= more, 10, "events put in the second loop")
        done.set()
        await asyncio.to_thread(thread.join)
        await hub.evbus.init.stop()
        await listener
        queue = await hub.ingress.internal.get()
        return [json.loads(queue.get_nowait()) for _ in range(queue.qsize())]

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        asyncio.run(first())
        assert first_ran.is_set()
        arrived = asyncio.run(second())
    finally:
        done.set()
        thread.join(10)
    assert arrived.count("first") == 1 and len(put) > 100
    assert [n for n in arrived if n != "first"] == put


@pytest.mark.parametrize("queue_class", ["asyncio", "lean"])
async def test_the_lean_queue_behaves_as_asyncio_s(queue_class):
    """
    LeanQueue (the internal ingress's queues, and the broker queue's base) does
    asyncio.Queue's work in line: the same cases, checked against both.
    """
    from evbus.broker import LeanQueue

    make = asyncio.Queue if queue_class == "asyncio" else LeanQueue
    queue = make(maxsize=2)
    queue.put_nowait(1)
    queue.put_nowait(2)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(3)
    # a put waiting for room is woken by get_nowait
    waiting_put = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0)
    assert not waiting_put.done()
    assert queue.get_nowait() == 1
    await asyncio.wait_for(waiting_put, 1)
    assert [queue.get_nowait(), queue.get_nowait()] == [2, 3]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    # a get waiting for an item is woken by put_nowait
    waiting_get = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")
    assert await asyncio.wait_for(waiting_get, 1) == "x"
    # join() waits for task_done() of every item put, again after more puts
    for _ in range(4):
        queue.task_done()
    await asyncio.wait_for(queue.join(), 1)
    queue.put_nowait("y")
    joined = asyncio.create_task(queue.join())
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    if hasattr(queue, "shutdown"):  # Python 3.13
        queue.put_nowait("left")
        queue.shutdown()
        assert queue.get_nowait() == "left"
        with pytest.raises(asyncio.QueueShutDown):
            queue.put_nowait("z")
        with pytest.raises(asyncio.QueueShutDown):
            queue.get_nowait()


async def test_a_listener_cancelled_while_one_lane_is_full_leaves_no_lane_without_its_event(hub, monkeypatch):
    """
    Two lanes take every event; the slow one is full and the listener waits for
    room when it is cancelled: the event it had started goes to both lanes
    (the full one past its bound), and the events behind it are queued again.
    """
    from tests.conftest import add_ingress

    add_ingress(hub, "slow")
    monkeypatch.setenv("EVBUS_LANE_SIZE", "1")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    for n in range(5):
        hub.evbus.broker.put_nowait(body=n)
    contexts = await hub.evbus.acct.profiles(
        acct_data={"slow": {"default": {"delay": 30}}, "internal": {"default": {}}}
    )
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    lanes = hub.evbus.route.all_lanes()
    [slow] = [lane for lane in lanes if lane.plugin == "slow"]
    await wait_for(lambda: slow._room, 10, "the listener waiting for room on the slow lane")
    listener.cancel()
    await asyncio.wait([listener])
    queue = await hub.ingress.internal.get()
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == [0, 1]
    assert slow.queued == 2
    bus = hub.evbus.BUS
    assert [json.loads(bus.get_nowait().body) for _ in range(bus.qsize())] == [2, 3, 4]
