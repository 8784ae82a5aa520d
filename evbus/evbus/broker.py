"""
The broker: where events enter the bus and where they leave it for the lanes.

The path of one event, one function per hop::

    put() / put_nowait()          evbus.broker      (any thread, before or after the loop runs)
      -> serialize                serialize.<plugin>.apply   body -> bytes, at the call site
      -> Event                    evbus.types.Event          frozen: profile, routing_key, body, id, ...
                                  (its record, a plain tuple, until a lane needs the Event)
      -> broker queue             hub.evbus.BUS              a queue.Queue until init(), then an asyncio.Queue
      -> listener                 evbus.init.start           one task; takes events in order, in batches
      -> propagate                evbus.propagate.propagate  the lanes of the event's profile (evbus.route.Router,
                                  cached), room on a full lane, spool accounting; also
                                  for the spool's re-delivery, broker.propagate and replay
      -> lane                     evbus.lane.Lane            one per (ingress plugin, acct profile), ordered
      -> envelope, span           evbus.cloudevents, evbus.telemetry   per destination, when configured
      -> ingress publish          ingress.<plugin>.publish(ctx, routing_key, body)

A slow or failing destination only holds up its own lane.

``put`` and ``put_nowait`` are the hot path: they make no hub calls once the
bus is set up (a hub call costs microseconds in pop); what they need is
resolved once and kept in :class:`BrokerState`, bound to them. A put from
another thread than the loop's hands its event to the loop with the others
that threads put until the loop runs again (one ``call_soon_threadsafe``).
"""
import asyncio
import functools
import queue
import threading
from typing import Any

from evbus import hubfunc
from evbus.broker import BrokerState
from evbus.broker import BusQueue
from evbus.broker import Serializer
from evbus.broker import ThreadBusQueue
from evbus.exc import BusClosedError
from evbus.exc import BusFullError
from evbus.exc import SerializeError
from evbus.propagate import propagate as _propagate
from evbus.settings import Settings
from evbus.spool import Spool
from evbus.types import Event
from evbus.types import make_event
from evbus.types import make_record

# Marks a missing ``body`` argument: ``None`` is a legitimate body.
_MISSING = object()

_get_ident = threading.get_ident


# put() lets the loop run once every this many events waiting on the broker queue
YIELD_EVERY = 64


async def _queued():
    """What ``put`` returns when the event is already on the queue: a coroutine
    (not a bare awaitable), so that ``asyncio.create_task(put(...))`` works too."""


async def _queued_let_run():
    """
    What ``put`` returns when the event is on the queue behind ``YIELD_EVERY``
    others (and every multiple of it): the loop runs once before it returns,
    so that the listener and the lanes deliver while a producer puts in a
    tight loop, instead of after its last ``put``.
    """
    await asyncio.sleep(0)


def __init__(hub):
    # Start with a thread-safe queue; init() moves its events into an asyncio.Queue
    hub.evbus.BUS = ThreadBusQueue()
    hub.evbus.SERIAL_PLUGIN = "json"
    broker = hub.evbus.broker
    state = broker.STATE = BrokerState(hub)
    # Classes are not put on the hub; expose the Event dataclass as upstream did
    broker.Event = Event
    # The hot functions: kept in the module's own namespace (a dict hit instead
    # of pop's fallback through a failed module attribute lookup), and called
    # without pop's per-call wrapper where it has no contract to run, with the
    # broker's state at hand instead of looked up on the hub
    broker.put = hubfunc.direct(hub, broker._attrs["put"], _put, state)
    broker.put_nowait = hubfunc.direct(hub, broker._attrs["put_nowait"], _put_nowait, state)


async def init(hub) -> asyncio.Queue:
    """
    Bind the broker queue to the running loop and return it.

    Events put before (with ``put_nowait``) are moved over in order. Called
    again from another loop, the queue is rebuilt on that loop.
    """
    state: BrokerState = hub.evbus.broker.STATE
    _configure(hub, state, hub.evbus.settings.apply())
    return _bind(hub, state)


def configure(hub) -> Settings:
    """
    Apply the loaded config to the broker: the queue's bound (``queue_size``)
    and the spool (``spool``, ``spool_sync``).

    :return: The settings applied
    :raises ConfigError: for a config that cannot be used
    """
    settings = hub.evbus.settings.apply()
    _configure(hub, hub.evbus.broker.STATE, settings)
    return settings


def _configure(hub, state: BrokerState, settings: Settings):
    _resize(hub, state, settings.queue_size)
    state.spool = hub.evbus.spool.current()
    state.configured = getattr(hub, "OPT", None)


def close_puts(hub):
    """Refuse puts from now on (the bus stops), until :func:`open_puts`."""
    hub.evbus.broker.STATE.closed = True


async def puts_settled(hub, timeout: float | None):
    """
    After :func:`close_puts`: wait (``timeout`` seconds at most) for the
    ``put_nowait`` calls that other threads started before it to end, and
    queue what they put, so that a stop queued now comes after every event
    a put was accepted for.
    """
    state: BrokerState = hub.evbus.broker.STATE
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    # Once at least: the puts other threads scheduled (and a start() task made just before) run first
    await asyncio.sleep(0)
    delay = 0.0
    while state.putting and (deadline is None or loop.time() < deadline):
        delay = min(0.01, delay + 0.001)
        await asyncio.sleep(delay)  # (a thread storing its event in the spool, say)
    if state.loop is loop:
        _hand_over(state, loop)


def open_puts(hub):
    """Take puts again (the listener started)."""
    hub.evbus.broker.STATE.closed = False


def use_telemetry(hub, current: Any):
    """
    Build the events of puts from now on for the telemetry in use.

    :param current: An :class:`evbus.telemetry.Telemetry`, or None: no telemetry
    """
    hub.evbus.broker.STATE.make_event = current.event_maker() if current is not None else make_event


def _bind(hub, state: BrokerState) -> asyncio.Queue:
    loop = asyncio.get_running_loop()
    if state.loop is loop:
        state.loop_thread = _get_ident()
        return hub.evbus.BUS
    with state.lock:
        # Events other threads put for a loop that is gone come after what its queue holds
        handed_off = _take_handoff(state)
        new_bus = _moved(hub.evbus.BUS, functools.partial(BusQueue, state=state), state.maxsize, handed_off)
        hub.evbus.BUS = new_bus
        state.loop = loop
        state.loop_thread = _get_ident()
    return new_bus


def _take_handoff(state: BrokerState) -> list:
    """
    Under the lock: the events other threads put, taken off the handoff (and
    counted as put). The flag is cleared first: a thread that appends after
    the events are taken finds it cleared and asks the loop again.
    """
    handoff = state.handoff
    state.handoff_scheduled = False
    events = [handoff.popleft() for _ in range(len(handoff))]
    state.put_count += len(events)
    return events


def _moved(old, kind, maxsize: int, more: list = ()):
    """
    A new queue, ``kind(maxsize)``, holding the events of ``old``, then ``more``,
    in order; never smaller than they need.
    """
    items = []
    while not old.empty():
        items.append(old.get_nowait())
    items.extend(more)
    new = kind(maxsize=maxsize if not maxsize or maxsize >= len(items) else len(items))
    for item in items:
        new.put_nowait(item)
    return new


def _resize(hub, state: BrokerState, size: int):
    """
    Bound the broker queue (config ``queue_size``), keeping what it holds.

    :param size: Events it holds at most; 0 for no bound
    """
    if size == state.maxsize:
        return
    with state.lock:
        state.maxsize = size
        bus = hub.evbus.BUS
        if isinstance(bus, queue.Queue):
            hub.evbus.BUS = _moved(bus, ThreadBusQueue, size)
        elif state.loop is None or state.loop_thread == _get_ident():
            hub.evbus.BUS = _moved(bus, functools.partial(BusQueue, state=state), size)
        # else: the loop's queue is rebound with the new size by the next init() in its loop


async def get(hub) -> Event:
    """
    :return: The next event from the broker queue
    """
    bus = await hub.evbus.broker.init()
    return await bus.get()


def event(hub, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default") -> Event:
    """
    Serialize a body and build its Event, checking every argument first.

    :param routing_key: The routing key; None to use the matched profile's routing_key
    :param body: The message body, serialized by the configured serialize plugin
    :param profile: The profile name the event is for
    :raises TypeError: when an argument has the wrong type
    :raises SerializeError: when the serializer cannot encode the body
    """
    return _accept(hub.evbus.broker.STATE, routing_key, body, profile, put=False)


def _accept(state: BrokerState, routing_key, body, profile, put: bool = True) -> Event | tuple:
    """
    Check the arguments of a put, serialize its body and make its event.

    :param put: For a put: refused once the bus is stopped, and a record (see
        :class:`BusQueue`) unless tracing needs the Event now;
        else the Event
    """
    if body is _MISSING:
        raise TypeError("put() needs a body: put(routing_key=..., body=..., profile=...)")
    if profile.__class__ is not str and not isinstance(profile, str):
        raise TypeError(f"profile must be a str, not {type(profile).__name__}")
    if routing_key is not None and not isinstance(routing_key, str):
        raise TypeError(f"routing_key must be a str or None, not {type(routing_key).__name__}")
    serializer = state.serializer
    if (
        state.opt is not state.hub_attrs["OPT"]
        or serializer.name != state.evbus_attrs["SERIAL_PLUGIN"]
        or serializer.name != state.serialize_attrs["PLUGIN"]
    ):
        serializer = _current_serializer(state)
    try:
        data = serializer.apply(body)
    except RecursionError as e:
        raise SerializeError(serializer.name, type(body).__name__, f"circular or too deeply nested ({e})") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise SerializeError(serializer.name, type(body).__name__, str(e)) from None
    if data.__class__ is not bytes:
        data = data.encode() if isinstance(data, str) else bytes(data)
    if put:
        if state.closed:
            raise BusClosedError("The event bus was stopped; start() it again before putting events")
        if state.make_event is make_event:
            return make_record(profile, routing_key, data, serializer.content_type)
    return state.make_event(profile, routing_key, data, serializer.content_type)


def _current_serializer(state: BrokerState) -> Serializer:
    """
    The serializer of a put after the config was (re)loaded or the program
    named another serialize plugin: the config applied first.
    """
    hub = state.hub
    opt = hub.OPT
    if state.configured is not opt:
        _configure(hub, state, hub.evbus.settings.apply())
    state.serialize_attrs = vars(hub.serialize)
    found = serializer(hub)
    state.opt = opt
    return found


def serializer(hub) -> Serializer:
    """
    Resolve the serialize plugin in use.

    ``hub.evbus.SERIAL_PLUGIN`` (pop-evbus 6.x/7.x) and ``hub.serialize.PLUGIN``
    (5.x) both name it; whichever was changed last wins and the other is set
    to match.

    :raises ConfigError: when the name is no loaded serialize plugin
    """
    state: BrokerState = hub.evbus.broker.STATE
    current = state.serializer
    if current.apply is not None and current.name == hub.evbus.SERIAL_PLUGIN == hub.serialize.PLUGIN:
        return current
    serial, legacy = hub.evbus.SERIAL_PLUGIN, hub.serialize.PLUGIN
    # The attribute that differs from what was last resolved was set by the program
    name = serial if serial != current.name and serial is not None else legacy
    plugin = hub.evbus.settings.plugin("serialize", name)
    hub.evbus.SERIAL_PLUGIN = hub.serialize.PLUGIN = name
    state.serializer = Serializer(
        name, hubfunc.direct(hub, plugin.apply), getattr(plugin, "CONTENT_TYPE", "application/octet-stream")
    )
    return state.serializer


def direct(hub, contracted, implementation=None, *bound) -> Any:
    """
    A hub function to call without pop's per-call wrapper: the hub face of
    :func:`evbus.hubfunc.direct`, for plugins.
    """
    return hubfunc.direct(hub, contracted, implementation, *bound)


def put_nowait(hub, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"):
    """
    Put an event on the bus without waiting; safe from any thread, before or
    after the loop runs.

    :param routing_key: The routing key; None to use the matched profile's routing_key
    :param body: The message body, serialized here by the configured serialize plugin
    :param profile: The profile name (matched against profile patterns)
    :raises SerializeError: when the body cannot be serialized (nothing is queued)
    :raises BusClosedError: after stop(), until the bus is started again
    :raises BusFullError: when the bounded queue (config ``queue_size``) is full (nothing is queued);
        it is also a ``queue.Full`` and an ``asyncio.QueueFull``
    """
    _put_nowait(hub.evbus.broker.STATE, routing_key, body, profile)


def _put_nowait(
    state: BrokerState, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"
):
    ident = _get_ident()
    if state.loop_thread != ident:
        # Marked before the check for a closed bus (a dict's item set and delete are atomic):
        # a stop() that closed the bus and then finds no thread marked has every accepted event
        putting = state.putting
        putting[ident] = True
        try:
            _put_from_thread(state, _accept(state, routing_key, body, profile))
        finally:
            del putting[ident]
        return
    new_event = _accept(state, routing_key, body, profile)
    # The loop's own thread: nothing can swap the queue under us
    try:
        state.evbus_attrs["BUS"].put_nowait(new_event)
    except (asyncio.QueueFull, queue.Full):
        raise _full(state) from None
    if state.spool is not None:
        state.spool.add(new_event)
    state.put_count += 1


def _put_from_thread(state: BrokerState, new_event):
    """
    ``put_nowait`` from another thread than the loop's (or before any loop):
    the event is stored in the spool (when on), then waits with the others
    that threads put (``state.handoff``) until the loop queues them all at
    once; the loop is asked once for the events handed off until it takes them.

    While the loop runs, this takes no lock: a thread can lose the GIL while
    it holds one, and every other thread then queues up behind it, a context
    switch each (four threads putting at once ran at a third of the events/s
    of one). The handoff is a deque, whose ``append`` and ``popleft`` are
    atomic, and the loop clears ``handoff_scheduled`` before it takes the
    events (see :func:`_take_handoff`), so an event appended after it takes
    them sees the flag cleared and asks again. The bound is checked without a
    lock too: threads that put at once can pass it by as many events as there
    are threads, and the loop queues those past the bound, in order.
    """
    loop = state.loop
    if loop is None or loop.is_closed():
        _put_unbound(state, new_event)
        return
    if state.evbus_attrs["BUS"].full():  # the events queued and those handed off fill the bound
        raise _full(state)
    if state.spool is not None:
        state.spool.add(new_event)  # stored before the listener can take it
    state.handoff.append(new_event)
    if not state.handoff_scheduled:
        state.handoff_scheduled = True
        try:
            loop.call_soon_threadsafe(_hand_over, state, loop)
        except RuntimeError:  # the loop closed meanwhile
            with state.lock:
                _left_behind(state, loop)


def _put_unbound(state: BrokerState, new_event):
    """``put_nowait`` from another thread while no loop runs the bus: its queue is thread-safe."""
    with state.lock:
        if state.loop is not None and state.loop.is_closed():
            _drop_loop(state)
        if state.loop is None:
            try:
                state.evbus_attrs["BUS"].put_nowait(new_event)
            except (asyncio.QueueFull, queue.Full):
                raise _full(state) from None
            if state.spool is not None:
                state.spool.add(new_event)
            state.put_count += 1
            return
    # Bound to a running loop meanwhile (its queue is an asyncio.Queue): the handoff takes it
    _put_from_thread(state, new_event)


def _left_behind(state: BrokerState, loop: asyncio.AbstractEventLoop):
    """
    Under the lock: a thread handed events off to ``loop``, which closed or
    was replaced before it took them: they go where the bus is now, in order.
    """
    if state.loop is loop:
        _drop_loop(state)
    elif state.loop is None:  # another thread moved the queue meanwhile: these follow
        bus = state.evbus_attrs["BUS"]
        for new_event in _take_handoff(state):
            bus.put_nowait(new_event)
    elif not state.handoff_scheduled:  # bound to another loop: it takes them
        state.handoff_scheduled = True
        state.loop.call_soon_threadsafe(_hand_over, state, state.loop)


def _full(state: BrokerState) -> BusFullError:
    return BusFullError(
        f"The event bus queue is full ({state.maxsize} events, config queue_size); nothing was queued"
    )


def _hand_over(state: BrokerState, loop: asyncio.AbstractEventLoop):
    """In the loop: queue the events other threads put, in order (past the bound, if they passed it)."""
    with state.lock:
        if state.loop is not loop:
            _left_behind(state, loop)  # bound to another loop since
            return
        bus = state.evbus.BUS
        for new_event in _take_handoff(state):
            bus.put_over(new_event)


def _drop_loop(state: BrokerState):
    """
    Under the lock: the bus's loop is closed. Its queue and the events threads
    put for it move to a thread-safe queue, in order, for the next loop.
    """
    state.loop = state.loop_thread = None
    state.evbus.BUS = _requeue(state.evbus.BUS, _take_handoff(state))


def _requeue(bus, events: list) -> queue.Queue:
    """A thread-safe queue of the events of a bus whose loop has closed, then ``events``."""
    fallback = ThreadBusQueue()
    if isinstance(bus, queue.Queue):
        fallback = bus
    else:
        while not bus.empty():
            fallback.put_nowait(bus.get_nowait())
    for new_event in events:
        fallback.put_nowait(new_event)
    return fallback


def put(hub, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"):
    """
    Put an event on the bus; await the result.

    Both call styles work: ``put(routing_key=..., body=..., profile=...)``
    (positional in that order) and ``put(body=..., profile=...)``; without a
    routing key, the matched profile's ``routing_key`` is used.

    The body is serialized and checked when ``put`` is called; the awaitable
    it returns finishes once the event is on the broker queue, which waits for
    room when the queue is bounded (config ``queue_size``) and full, and, with
    the spool on (config ``spool``), once the event is stored there (with
    ``spool_sync`` full: synced to the disk, one sync for every put waiting).

    :param routing_key: The routing key; None to use the matched profile's routing_key
    :param body: The message body, serialized here by the configured serialize plugin
    :param profile: The profile name (matched against profile patterns)
    :raises SerializeError: when the body cannot be serialized (nothing is queued)
    :raises BusClosedError: after stop(), until the bus is started again
    """
    return _put(hub.evbus.broker.STATE, routing_key, body, profile)


def _put(state: BrokerState, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"):
    new_event = _accept(state, routing_key, body, profile)
    loop = state.loop
    # In the loop the bus is bound to: its thread, while it runs (asyncio.get_running_loop()
    # tells as well, but makes a system call on every put)
    if state.loop_thread == _get_ident() and loop.is_running():
        bus = state.evbus_attrs["BUS"]
        try:
            bus.put_nowait(new_event)
        except asyncio.QueueFull:
            # Full (with the events other threads put, not queued yet): wait for room (backpressure)
            return _put_waiting(state, bus, new_event)
        state.put_count += 1
        if state.spool is not None:
            synced = state.spool.add(new_event, True)  # (awaited; positional: cheaper)
            if synced is not None:
                return _synced(synced)
        if bus.qsize() % YIELD_EVERY:
            return _queued()
        return _queued_let_run()
    return _put_binding(state.hub, state, new_event)


async def _put_binding(hub, state: BrokerState, new_event: Event):
    """The first put in a loop: bind the queue to it, then queue the event."""
    bus = _bind(hub, state)
    await _put_waiting(state, bus, new_event)


async def _put_waiting(state: BrokerState, bus: asyncio.Queue, new_event: Event):
    """
    Queue an event once there is room; spool it before the listener can take
    it. Counted once queued: a put cancelled while it waits for room is not.
    """
    await bus.put(new_event)
    state.put_count += 1
    if state.spool is not None:
        synced = state.spool.add(new_event, awaited=True)
        if synced is not None:
            await synced


async def _synced(synced: asyncio.Future):
    """What ``put`` returns with ``spool_sync`` full: done once the spool has synced the event."""
    await synced


async def propagate(hub, contexts: dict[str, Any], event: Event, wait: bool = True):
    """
    Hand one event to the lane of every (ingress plugin, profile) whose profile
    name pattern matches ``event.profile``: the hop the listener takes with
    every event (:func:`evbus.propagate.propagate`), so a full lane makes this
    wait for room, the spool learns the lanes that settle the event, and an
    event no lane takes is counted as unrouted.

    :param contexts: The output of ``hub.evbus.acct.profiles``
    :param event: The event to deliver
    :param wait: Return once every lane has published the event (or failed to);
        else once the lanes took it
    """
    router = hub.evbus.route.router(contexts)
    settle = [] if wait else None
    await _propagate([event], router, hub.evbus.spool.current(), settle=settle)
    if settle:
        await asyncio.gather(*(lane.settled(seq) for lane, seq in settle))


def stats(hub) -> dict[str, Any]:
    """
    :return: Counts of the bus and of each lane: events queued, published and
        failed, and the queue depths
    """
    state: BrokerState = hub.evbus.broker.STATE
    bus = hub.evbus.BUS
    spool = state.spool
    return {
        "put": state.put_count,
        "queue_depth": bus.qsize(),
        "spool_depth": spool.depth() if spool is not None else None,
        "redelivered": spool.redelivered if spool is not None else 0,
        "unrouted": hub.evbus.route.STATE.unrouted,
        "lanes": [lane.stats() for lane in hub.evbus.route.all_lanes()],
    }
