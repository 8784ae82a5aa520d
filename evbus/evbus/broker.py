"""
The broker: where events enter the bus and where they leave it for the lanes.

The path of one event, one function per hop::

    put() / put_nowait()          evbus.broker      (any thread, before or after the loop runs)
      -> serialize                serialize.<plugin>.apply   body -> bytes, at the call site
      -> Event                    evbus.types.Event          frozen: profile, routing_key, body, id, ...
                                  (its record, a plain tuple, until a lane needs the Event)
      -> broker queue             hub.evbus.BUS              a queue.Queue until init(), then an asyncio.Queue
      -> listener                 evbus.init.start           one task; takes events in order
      -> propagate                evbus.route.Router.match   the lanes of the event's profile (cached)
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

from evbus.exc import BusClosedError
from evbus.exc import BusFullError
from evbus.exc import SerializeError
from evbus.propagate import propagate as _propagate
from evbus.spool import Spool
from evbus.types import Event
from evbus.types import event_of
from evbus.types import make_event
from evbus.types import make_record

# Marks a missing ``body`` argument: ``None`` is a legitimate body.
_MISSING = object()
# The hub.OPT of a serializer not resolved yet
_UNRESOLVED = object()

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


class BrokerState:
    """
    What the broker keeps between calls: the loop the bus is bound to, the
    lock that makes the hand-over from ``queue.Queue`` to ``asyncio.Queue``
    safe, the serializer in use, and the events other threads put that wait
    for the loop.
    """

    __slots__ = (
        "hub", "evbus", "hub_attrs", "evbus_attrs", "serialize_attrs", "opt", "lock", "loop", "loop_thread",
        "closed", "put_count", "serializer", "maxsize", "reserved", "handoff", "handoff_scheduled", "spool",
        "make_event",
    )

    def __init__(self, hub):
        self.hub = hub
        self.evbus = hub.evbus
        # Where put reads what it reads on every call: the attribute dicts of the hub (OPT),
        # of the evbus sub (BUS, SERIAL_PLUGIN) and of the serialize sub (PLUGIN; set with
        # the serializer). A program's assignment (hub.evbus.SERIAL_PLUGIN = ...) lands
        # there; reading it there skips pop's attribute hooks, a few hundred instructions each
        self.hub_attrs = vars(hub)
        self.evbus_attrs = vars(hub.evbus)
        self.serialize_attrs = {"PLUGIN": None}
        # The hub.OPT the serializer was resolved under: another one is a config (re)load
        self.opt = _UNRESOLVED
        self.lock = threading.Lock()
        # config queue_size (0: no bound), and the places other threads' puts have reserved
        self.maxsize = 0
        self.reserved = 0
        # Events other threads put, in order, until the loop queues them; whether the loop
        # was asked to (one call_soon_threadsafe for many events, not one each)
        self.handoff: list = []
        self.handoff_scheduled = False
        # The durable spool (config spool), or None
        self.spool = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.closed = False
        self.put_count = 0
        # (SERIAL_PLUGIN, serialize.PLUGIN, name, apply function, content type) last resolved
        self.serializer: tuple = ("json", "json", None, None, None)
        # What events are built with: make_event, or with tracing on, a function that
        # also keeps the caller's OpenTelemetry context (set by evbus.telemetry.resolve)
        self.make_event = make_event


class BusQueue(asyncio.Queue):
    """
    The broker queue once the bus is bound to a loop: an ``asyncio.Queue`` of
    events.

    ``put`` queues a new event as a plain tuple of its fields when nothing
    needs the Event yet (:func:`~evbus.types.make_record`). Python's garbage
    collector stops tracking a tuple of strings, bytes and numbers, so a
    backlog of events on the queue costs it nothing, where every Event would
    be traversed by each full collection. ``get()`` and ``get_nowait()``
    return the Event of a record (or what else was queued: an Event, the
    listener's stop); the listener takes records as they are
    (:meth:`take_nowait`) and leaves making the Event to the lanes that need it.
    """

    def __init__(self, maxsize: int = 0, state: BrokerState | None = None):
        super().__init__(maxsize)
        # qsize() is the length of the deque: its own __len__, one C call (see put_nowait)
        self.qsize = self._queue.__len__
        self._bound = maxsize
        # Whose reservations count: the places other threads' puts reserved (see put_nowait)
        self._state = state

    def full(self) -> bool:
        """
        Whether a put must wait: the events queued and the places reserved for
        puts from other threads fill the bound.
        """
        if self._bound <= 0:
            return False
        return self.qsize() + (self._state.reserved if self._state is not None else 0) >= self._bound

    def get_nowait(self) -> Event:
        item = super().get_nowait()
        return event_of(item) if item.__class__ is tuple else item

    #: The next item as it was queued: a record, an Event or the listener's stop
    take_nowait = asyncio.Queue.get_nowait

    def take_queued(self) -> list:
        """
        Every item queued now, as queued and in order, taken off the queue at
        once: what the listener hands to the lanes before it yields to the loop.
        """
        if self._bound > 0:
            # One at a time: each wakes a put that waits for room, as get_nowait() does
            return [self.take_nowait() for _ in range(self.qsize())]
        items = list(self._queue)
        self._queue.clear()
        return items

    def put_back(self, items: list):
        """Queue ``items`` again, in order, in front of what is queued (the listener stopped before them)."""
        self._queue.extendleft(reversed(items))


class ThreadBusQueue(queue.Queue):
    """The broker queue before the bus is bound to a loop: a thread-safe :class:`BusQueue`."""

    def _get(self):
        item = self.queue.popleft()
        return event_of(item) if item.__class__ is tuple else item


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
    broker.put = direct(hub, broker._attrs["put"], _put, state)
    broker.put_nowait = direct(hub, broker._attrs["put_nowait"], _put_nowait, state)


async def init(hub) -> asyncio.Queue:
    """
    Bind the broker queue to the running loop and return it.

    Events put before (with ``put_nowait``) are moved over in order. Called
    again from another loop, the queue is rebuilt on that loop.
    """
    hub.evbus.settings.apply()
    return _bind(hub, hub.evbus.broker.STATE)


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
    """Under the lock: the events other threads put, which leave their reserved places."""
    events = state.handoff
    state.handoff = []
    state.handoff_scheduled = False
    state.reserved -= len(events)
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


def open_spool(hub, path: str | None, sync: str = "normal"):
    """
    Use the durable spool at ``path`` (config ``spool``); None or "" for none.

    :param sync: config ``spool_sync``
    """
    state: BrokerState = hub.evbus.broker.STATE
    current = state.spool
    if current is not None and current.path == path and current.sync == sync:
        return
    if current is not None:
        current.close()
    state.spool = Spool(path, sync) if path else None


def resize(hub, size: int):
    """
    Bound the broker queue (config ``queue_size``), keeping what it holds.

    :param size: Events it holds at most; 0 for no bound
    """
    state: BrokerState = hub.evbus.broker.STATE
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
        :class:`BusQueue`) unless the spool or tracing needs the Event now;
        else the Event
    """
    if body is _MISSING:
        raise TypeError("put() needs a body: put(routing_key=..., body=..., profile=...)")
    if profile.__class__ is not str and not isinstance(profile, str):
        raise TypeError(f"profile must be a str, not {type(profile).__name__}")
    if routing_key is not None and not isinstance(routing_key, str):
        raise TypeError(f"routing_key must be a str or None, not {type(routing_key).__name__}")
    serial, legacy, name, apply, content_type = state.serializer
    if (
        state.opt is not state.hub_attrs["OPT"]
        or serial != state.evbus_attrs["SERIAL_PLUGIN"]
        or legacy != state.serialize_attrs["PLUGIN"]
    ):
        name, apply, content_type = _current_serializer(state)
    try:
        data = apply(body)
    except RecursionError as e:
        raise SerializeError(name, type(body).__name__, f"circular or too deeply nested ({e})") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise SerializeError(name, type(body).__name__, str(e)) from None
    if data.__class__ is not bytes:
        data = data.encode() if isinstance(data, str) else bytes(data)
    if put:
        if state.closed:
            raise BusClosedError("The event bus was stopped; start() it again before putting events")
        if state.spool is None and state.make_event is make_event:
            return make_record(profile, routing_key, data, content_type)
    return state.make_event(profile, routing_key, data, content_type)


def _current_serializer(state: BrokerState) -> tuple[str, Any, str]:
    """
    The serializer of a put after the config was (re)loaded or the program
    named another serialize plugin: the config applied first.
    """
    hub = state.hub
    opt = hub.OPT
    if hub.evbus.settings.APPLIED is not opt:
        hub.evbus.settings.apply()
    state.serialize_attrs = vars(hub.serialize)
    found = serializer(hub)
    state.opt = opt
    return found


def serializer(hub) -> tuple[str, Any, str]:
    """
    Resolve the serialize plugin in use.

    ``hub.evbus.SERIAL_PLUGIN`` (pop-evbus 6.x/7.x) and ``hub.serialize.PLUGIN``
    (5.x) both name it; whichever was changed last wins and the other is set
    to match.

    :return: (plugin name, its apply function, its content type)
    :raises ConfigError: when the name is no loaded serialize plugin
    """
    state: BrokerState = hub.evbus.broker.STATE
    serial, legacy, name, apply, content_type = state.serializer
    if apply is not None and serial == hub.evbus.SERIAL_PLUGIN and legacy == hub.serialize.PLUGIN:
        return name, apply, content_type
    return _resolve_serializer(hub, state)


def _resolve_serializer(hub, state: BrokerState) -> tuple[str, Any, str]:
    last_serial, _, _, _, _ = state.serializer
    serial, legacy = hub.evbus.SERIAL_PLUGIN, hub.serialize.PLUGIN
    # The attribute that differs from what was last resolved was set by the program
    name = serial if serial != last_serial and serial is not None else legacy
    plugin = hub.evbus.settings.plugin("serialize", name)
    hub.evbus.SERIAL_PLUGIN = hub.serialize.PLUGIN = name
    content_type = getattr(plugin, "CONTENT_TYPE", "application/octet-stream")
    apply = direct(hub, plugin.apply)
    state.serializer = (name, name, name, apply, content_type)
    return name, apply, content_type


def direct(hub, contracted, implementation=None, *bound) -> Any:
    """
    A hub function to call without pop's per-call wrapper.

    pop wraps every plugin function in a ``Contracted`` object whose call
    runs the contracts and resolves parameter aliases; with neither to do it
    still costs microseconds per call. For such a function a plain
    ``functools.partial`` (``func(hub, ...)``; a subclass of it would lose its
    fast calling convention) is used instead; it keeps the ``ref``,
    ``signature`` and ``contracted`` of the original.

    :param contracted: A function from the hub, e.g. ``hub.serialize.json.apply``
    :param implementation: What to call instead, with ``bound`` before the caller's
        arguments, e.g. a function that takes its plugin's state instead of the hub
    :return: The partial, or the hub function itself when its wrapper has work to do
    """
    func = getattr(contracted, "func", None)
    if (
        func is None
        or getattr(contracted, "_has_contracts", True)
        or getattr(contracted, "param_aliases", None)
        or not getattr(contracted, "implicit_hub", False)
    ):
        return contracted
    if implementation is None:
        implementation, bound = func, (hub,)
    fast = functools.partial(implementation, *bound)
    fast.ref = getattr(contracted, "ref", None)
    fast.signature = getattr(contracted, "signature", None)
    fast.contracted = contracted
    fast.__name__ = getattr(contracted, "__name__", func.__name__)
    fast.__doc__ = func.__doc__
    fast.__wrapped__ = func
    return fast


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
    new_event = _accept(state, routing_key, body, profile)
    if state.loop_thread != _get_ident():
        _put_from_thread(state, new_event)
        return
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
    ``put_nowait`` from another thread than the loop's (or before any loop): the
    event takes a place reserved for it in the queue, and waits with the others
    that threads put until the loop queues them all at once.

    Without the spool, the locked section runs no Python function: a thread
    cannot give up the GIL while it holds the lock, so the other threads never
    find it taken (and queue up behind it, a context switch each).
    """
    loop = state.loop
    if loop is not None and loop.is_closed():
        with state.lock:
            if state.loop is loop:
                _drop_loop(state)
    spool = state.spool
    with state.lock:
        loop = state.loop
        bus = state.evbus_attrs["BUS"]
        if loop is None:
            try:
                bus.put_nowait(new_event)
            except (asyncio.QueueFull, queue.Full):
                raise _full(state) from None
            if spool is not None:
                spool.add(new_event)
            state.put_count += 1
            return
        if state.maxsize and bus.qsize() + state.reserved >= state.maxsize:
            raise _full(state)
        state.reserved += 1
        state.put_count += 1
        if spool is None:
            state.handoff.append(new_event)
            # The loop is asked once for the events handed off until it takes them
            ask = not state.handoff_scheduled
            state.handoff_scheduled = True
    if spool is not None:
        loop, ask = _spooled(state, spool, new_event)
    if ask:
        try:
            loop.call_soon_threadsafe(_hand_over, state, loop)
        except RuntimeError:  # the loop closed meanwhile
            with state.lock:
                if state.loop is loop:
                    _drop_loop(state)


def _spooled(state: BrokerState, spool: Spool, new_event: Event) -> tuple[Any, bool]:
    """
    From another thread, with the spool on: store an event that has its place
    reserved (outside the lock: storing runs Python code), then hand it off.

    :return: The loop, and whether it must be asked to queue the events handed off
    """
    try:
        spool.add(new_event)
    except BaseException:
        with state.lock:
            state.reserved -= 1
            state.put_count -= 1
        raise
    with state.lock:
        loop = state.loop
        if loop is None:
            # The loop closed meanwhile: the thread-safe queue takes it
            state.reserved -= 1
            state.evbus_attrs["BUS"].put_nowait(new_event)
            return None, False
        state.handoff.append(new_event)
        ask = not state.handoff_scheduled
        state.handoff_scheduled = True
    return loop, ask


def _full(state: BrokerState) -> BusFullError:
    return BusFullError(
        f"The event bus queue is full ({state.maxsize} events, config queue_size); nothing was queued"
    )


def _hand_over(state: BrokerState, loop: asyncio.AbstractEventLoop):
    """In the loop: queue the events other threads put, in the places reserved for them."""
    with state.lock:
        if state.loop is not loop:
            return  # bound to another loop since, which took them
        bus = state.evbus.BUS
        for new_event in _take_handoff(state):
            try:
                bus.put_nowait(new_event)
            except asyncio.QueueFull:  # cannot happen with the reservation; never drop an event
                loop.create_task(bus.put(new_event))


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
        state.put_count += 1
        try:
            bus.put_nowait(new_event)
        except asyncio.QueueFull:
            # Full (or its room is reserved for puts from other threads): wait for room (backpressure)
            return _put_waiting(state, bus, new_event)
        if state.spool is not None:
            synced = state.spool.add(new_event, awaited=True)
            if synced is not None:
                return _synced(synced)
        if bus.qsize() % YIELD_EVERY:
            return _queued()
        return _queued_let_run()
    return _put_binding(state.hub, state, new_event)


async def _put_binding(hub, state: BrokerState, new_event: Event):
    """The first put in a loop: bind the queue to it, then queue the event."""
    bus = _bind(hub, state)
    state.put_count += 1
    await _put_waiting(state, bus, new_event)


async def _put_waiting(state: BrokerState, bus: asyncio.Queue, new_event: Event):
    """Queue an event once there is room; spool it before the listener can take it."""
    await bus.put(new_event)
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
    await _propagate([event], router, hub.evbus.broker.STATE.spool, settle=settle)
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
