"""
The broker's plain classes: its state, its queues and its serializer.

Their hub face is :mod:`evbus.evbus.broker` (``hub.evbus.broker``): ``put``,
``put_nowait``, ``init``, ``get``, ``propagate``, ``stats``.
"""
import asyncio
import collections
import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

from evbus.types import Event
from evbus.types import event_of
from evbus.types import make_event

# The hub.OPT of a serializer not resolved yet
UNRESOLVED = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Serializer:
    """
    The serialize plugin in use, as ``put`` calls it.

    :param name: The plugin's name: what ``hub.evbus.SERIAL_PLUGIN`` and
        ``hub.serialize.PLUGIN`` named when it was resolved
    :param apply: Its ``apply(body)``, called without pop's wrapper where it can be
    :param content_type: The MIME type of what it makes
    """

    name: str
    apply: Callable[[Any], Any] | None
    content_type: str | None


class BrokerState:
    """
    What the broker keeps between calls: the loop the bus is bound to, the
    lock that makes the hand-over from ``queue.Queue`` to ``asyncio.Queue``
    safe, the serializer in use, and the events other threads put that wait
    for the loop. Only the broker's hub functions (:mod:`evbus.evbus.broker`)
    change it.
    """

    __slots__ = (
        "hub", "evbus", "hub_attrs", "evbus_attrs", "serialize_attrs", "opt", "lock", "loop", "loop_thread",
        "closed", "put_count", "serializer", "maxsize", "handoff", "handoff_scheduled", "spool",
        "make_event", "configured", "putting",
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
        self.opt = UNRESOLVED
        # The hub.OPT whose settings the broker applied to itself (queue bound, spool)
        self.configured = UNRESOLVED
        self.lock = threading.Lock()
        # config queue_size (0: no bound)
        self.maxsize = 0
        # Events other threads put, in order, until the loop queues them (they count
        # against the bound); whether the loop was asked to (one call_soon_threadsafe
        # for many events, not one each)
        self.handoff: collections.deque = collections.deque()
        self.handoff_scheduled = False
        # The threads (other than the loop's) inside put_nowait now: a stop waits for those
        # that passed the check for a closed bus before it queues its own stop
        self.putting: dict[int, bool] = {}
        # The durable spool (config spool), or None
        self.spool = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.closed = False
        self.put_count = 0
        # The serializer last resolved (none yet)
        self.serializer = Serializer("json", None, None)
        # What events are built with: make_event, or with tracing on, a function that
        # also keeps the caller's OpenTelemetry context (set by hub.evbus.broker.use_telemetry)
        self.make_event = make_event


class LeanQueue(asyncio.Queue):
    """
    A FIFO ``asyncio.Queue`` whose ``put_nowait`` and ``get_nowait`` do their
    work in line: asyncio's make four calls of Python functions each
    (``full``, ``_put``, ``_finished.clear``, ``_wakeup_next``), and every
    event goes through two queues (the broker queue, then the internal
    ingress's). The same state changes as asyncio's, in the same order; a
    full, empty or (Python 3.13) shut down queue is left to asyncio's own
    methods, which raise what they raise.
    """

    _is_shutdown = False  # Python 3.13's shutdown() sets it on the queue

    def put_nowait(self, item):
        if self._is_shutdown or (self._maxsize > 0 and len(self._queue) >= self._maxsize):
            return super().put_nowait(item)
        self._queue.append(item)
        self._unfinished_tasks += 1
        if self._finished._value:  # set when task_done() was called for every item
            self._finished.clear()
        if self._getters:
            self._wakeup_next(self._getters)

    def get_nowait(self):
        queue = self._queue
        if not queue:
            return super().get_nowait()
        item = queue.popleft()
        if self._putters:
            self._wakeup_next(self._putters)
        return item


class BusQueue(LeanQueue):
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
        # The bound is this queue's own (asyncio's is 0): the events other threads put count too
        super().__init__(0)
        # qsize() is the length of the deque: its own __len__, one C call (see put_nowait)
        self.qsize = self._queue.__len__
        self._bound = maxsize
        # The events other threads put, not queued yet: they count against the bound
        self._handoff = state.handoff if state is not None else ()

    @property
    def maxsize(self) -> int:
        return self._bound

    def full(self) -> bool:
        """
        Whether a put must wait: the events queued and those other threads put
        (not queued yet) fill the bound.
        """
        return 0 < self._bound <= len(self._queue) + len(self._handoff)

    def put_nowait(self, item):
        if 0 < self._bound <= len(self._queue) + len(self._handoff):
            raise asyncio.QueueFull
        LeanQueue.put_nowait(self, item)

    def put_over(self, item):
        """Queue ``item`` even past the bound (events other threads put at once): never drop one."""
        LeanQueue.put_nowait(self, item)

    def get_nowait(self) -> Event:
        item = LeanQueue.get_nowait(self)
        return event_of(item) if item.__class__ is tuple else item

    #: The next item as it was queued: a record, an Event or the listener's stop
    take_nowait = LeanQueue.get_nowait

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

    def events(self) -> int:
        """:return: How many events are queued, those other threads put included (the listener's stop aside)"""
        queued = sum(1 for item in self._queue if item.__class__ is tuple or isinstance(item, Event))
        return queued + len(self._handoff)

    def put_back(self, items: list):
        """Queue ``items`` again, in order, in front of what is queued (the listener stopped before them)."""
        self._queue.extendleft(reversed(items))


class ThreadBusQueue(queue.Queue):
    """The broker queue before the bus is bound to a loop: a thread-safe :class:`BusQueue`."""

    def _get(self):
        item = self.queue.popleft()
        return event_of(item) if item.__class__ is tuple else item
