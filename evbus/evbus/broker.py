"""
The broker: where events enter the bus and where they leave it for the lanes.

The path of one event, one function per hop::

    put() / put_nowait()          evbus.broker      (any thread, before or after the loop runs)
      -> serialize                serialize.<plugin>.apply   body -> bytes, at the call site
      -> Event                    evbus.types.Event          frozen: profile, routing_key, body, id, ...
      -> broker queue             hub.evbus.BUS              queue.Queue until init(), then asyncio.Queue
      -> listener                 evbus.init.start           one task; takes events in order
      -> propagate                evbus.broker.propagate     hands the event to its lanes (no wait)
      -> match                    evbus.route (match.<plugin>.find), once per event profile name
      -> lane                     evbus.lane.Lane            one per (ingress plugin, acct profile), ordered
      -> ingress publish          ingress.<plugin>.publish(ctx, routing_key, body)

A slow or failing destination only holds up its own lane.
"""
import asyncio
import queue
import threading
from typing import Any

from evbus.exc import BusClosedError
from evbus.exc import SerializeError
from evbus.types import Event

# Marks a missing ``body`` argument: ``None`` is a legitimate body.
_MISSING = object()


class BrokerState:
    """
    What the broker keeps between calls: the loop the bus is bound to, the
    lock that makes the hand-over from ``queue.Queue`` to ``asyncio.Queue``
    safe, and the serializer in use.
    """

    __slots__ = ("lock", "loop", "loop_thread", "closed", "put_count", "serializer")

    def __init__(self):
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.closed = False
        self.put_count = 0
        # (SERIAL_PLUGIN, serialize.PLUGIN, (name, apply, content type)) last resolved
        self.serializer: tuple = ("json", "json", None)


def __init__(hub):
    # Start with a thread-safe queue; init() moves its events into an asyncio.Queue
    hub.evbus.BUS = queue.Queue()
    hub.evbus.SERIAL_PLUGIN = "json"
    hub.evbus.broker.STATE = BrokerState()
    # Classes are not put on the hub; expose the Event dataclass as upstream did
    hub.evbus.broker.Event = Event


async def init(hub) -> asyncio.Queue:
    """
    Bind the broker queue to the running loop and return it.

    Events put before (with ``put_nowait``) are moved over in order. Called
    again from another loop, the queue is rebuilt on that loop.
    """
    hub.evbus.settings.apply()
    state: BrokerState = hub.evbus.broker.STATE
    loop = asyncio.get_running_loop()
    if state.loop is loop:
        return hub.evbus.BUS
    with state.lock:
        old = hub.evbus.BUS
        new_bus = asyncio.Queue()
        if isinstance(old, queue.Queue):
            while True:
                try:
                    new_bus.put_nowait(old.get_nowait())
                except queue.Empty:
                    break
        else:
            while not old.empty():
                new_bus.put_nowait(old.get_nowait())
        hub.evbus.BUS = new_bus
        state.loop = loop
        state.loop_thread = threading.get_ident()
    return new_bus


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
    if body is _MISSING:
        raise TypeError("put() needs a body: put(routing_key=..., body=..., profile=...)")
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a str, not {type(profile).__name__}")
    if routing_key is not None and not isinstance(routing_key, str):
        raise TypeError(f"routing_key must be a str or None, not {type(routing_key).__name__}")
    name, apply, content_type = hub.evbus.broker.serializer()
    try:
        data = apply(body)
    except RecursionError as e:
        raise SerializeError(name, type(body).__name__, f"circular or too deeply nested ({e})") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise SerializeError(name, type(body).__name__, str(e)) from None
    if isinstance(data, str):
        data = data.encode()
    return Event(profile, routing_key, data, content_type)


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
    serial, legacy = hub.evbus.SERIAL_PLUGIN, hub.serialize.PLUGIN
    last_serial, last_legacy, resolved = state.serializer
    if resolved is not None and serial == last_serial and legacy == last_legacy:
        return resolved
    # The attribute that differs from what was last resolved was set by the program
    name = serial if serial != last_serial and serial is not None else legacy
    plugin = hub.evbus.settings.plugin("serialize", name)
    hub.evbus.SERIAL_PLUGIN = hub.serialize.PLUGIN = name
    resolved = (name, plugin.apply, getattr(plugin, "CONTENT_TYPE", "application/octet-stream"))
    state.serializer = (name, name, resolved)
    return resolved


def put_nowait(hub, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"):
    """
    Put an event on the bus without waiting; safe from any thread, before or
    after the loop runs.

    :param routing_key: The routing key; None to use the matched profile's routing_key
    :param body: The message body, serialized here by the configured serialize plugin
    :param profile: The profile name (matched against profile patterns)
    :raises SerializeError: when the body cannot be serialized (nothing is queued)
    :raises BusClosedError: after stop(), until the bus is started again
    """
    hub.evbus.settings.apply()
    new_event = hub.evbus.broker.event(routing_key, body, profile)
    state: BrokerState = hub.evbus.broker.STATE
    if state.closed:
        raise BusClosedError("The event bus was stopped; start() it again before putting events")
    with state.lock:
        bus = hub.evbus.BUS
        state.put_count += 1
        if state.loop is None or state.loop_thread == threading.get_ident():
            bus.put_nowait(new_event)
            return
        loop = state.loop
    # Another thread than the loop's: hand the event to the loop
    try:
        loop.call_soon_threadsafe(bus.put_nowait, new_event)
    except RuntimeError:
        # The loop is closed: keep the event for the next loop
        with state.lock:
            state.loop = None
            hub.evbus.BUS = _requeue(hub.evbus.BUS, new_event)


def _requeue(bus, new_event: Event) -> queue.Queue:
    """Move a bus whose loop has closed back to a thread-safe queue."""
    fallback = queue.Queue()
    if isinstance(bus, queue.Queue):
        fallback = bus
    else:
        while not bus.empty():
            fallback.put_nowait(bus.get_nowait())
    fallback.put_nowait(new_event)
    return fallback


async def put(hub, routing_key: str | None = None, body: Any = _MISSING, profile: str = "default"):
    """
    Put an event on the bus.

    Both call styles work: ``put(routing_key=..., body=..., profile=...)``
    (positional in that order) and ``put(body=..., profile=...)``; without a
    routing key, the matched profile's ``routing_key`` is used.

    :param routing_key: The routing key; None to use the matched profile's routing_key
    :param body: The message body, serialized here by the configured serialize plugin
    :param profile: The profile name (matched against profile patterns)
    :raises SerializeError: when the body cannot be serialized (nothing is queued)
    :raises BusClosedError: after stop(), until the bus is started again
    """
    hub.evbus.settings.apply()
    new_event = hub.evbus.broker.event(routing_key, body, profile)
    state: BrokerState = hub.evbus.broker.STATE
    if state.closed:
        raise BusClosedError("The event bus was stopped; start() it again before putting events")
    bus = hub.evbus.BUS
    if state.loop is not asyncio.get_running_loop():
        bus = await hub.evbus.broker.init()
    state.put_count += 1
    await bus.put(new_event)


async def propagate(hub, contexts: dict[str, Any], event: Event, wait: bool = True):
    """
    Hand one event to the lane of every (ingress plugin, profile) whose profile
    name pattern matches ``event.profile``.

    :param contexts: The output of ``hub.evbus.acct.profiles``
    :param event: The event to deliver
    :param wait: Return once every lane has published the event (or failed to);
        the listener passes False and goes on with the next event at once
    """
    lanes = hub.evbus.route.lanes(contexts, event.profile)
    if wait:
        await asyncio.gather(*(lane.settled(lane.put(event)) for lane in lanes))
    else:
        for lane in lanes:
            lane.put(event)


def stats(hub) -> dict[str, Any]:
    """
    :return: Counts of the bus and of each lane: events queued, published and
        failed, and the queue depths
    """
    state: BrokerState = hub.evbus.broker.STATE
    bus = hub.evbus.BUS
    return {
        "put": state.put_count,
        "queue_depth": bus.qsize(),
        "unrouted": hub.evbus.route.STATE.unrouted,
        "lanes": [lane.stats() for lane in hub.evbus.route.all_lanes()],
    }
