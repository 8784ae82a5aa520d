"""
The propagate hop: events handed to the lanes of their destinations.

Everything that delivers events goes through :func:`propagate`: the
listener (:func:`evbus.evbus.init.start`, with each batch it takes off the
broker queue), the re-delivery of what a crashed process left in the spool,
``hub.evbus.broker.propagate`` and the replay of dead letters. So every
event gets the same treatment on its way to the lanes:

- its lanes: those of the router whose profile pattern matches the event's
  profile (cached per profile), or the lanes the caller names (a replay:
  each dead letter goes back to its own destination);
- backpressure: a full lane (``lane_full`` "wait") makes the caller wait
  for room before the event is put on it (cancelled meanwhile, the event
  still goes to every lane of its own, past their bound);
- spool accounting: the spool learns how many lanes must settle the event
  before its record is finished (none: finished now), and accounts for what
  the lanes settled once the batch is handed on;
- an event no lane takes is counted as unrouted (or, for the re-delivery
  from the spool, kept there for a start whose profiles match it).

The listener calls it once for every batch it takes: the loop over the
events is here, in line, because this is the bus's hot path.
"""
import asyncio
from collections.abc import Callable
from typing import Any

from evbus.types import RECORD_PROFILE
from evbus.types import Event
from evbus.types import event_of


async def propagate(
    items: list,
    router: Any,
    spool: Any = None,
    lanes: tuple | None = None,
    keep_unrouted: bool = False,
    settle: list | None = None,
    left: Callable[[list], Any] | None = None,
) -> Any:
    """
    Hand each event of ``items``, in order, to its lanes; never waits for a
    publish, only for room on a full lane.

    :param items: Events, records (:func:`~evbus.types.make_record`) or, from
        the broker queue, the listener's stop, which ends the hop there
    :param router: The :class:`~evbus.route.Router` whose lanes take the events;
        it counts those no lane takes (``router.counts.unrouted``)
    :param spool: The durable spool the events are stored in, or None
    :param lanes: The lanes every event goes to, instead of those its profile matches
    :param keep_unrouted: Leave an event no lane takes unfinished in the spool,
        uncounted (the re-delivery of a spool)
    :param settle: When a list, ``(lane, sequence number)`` of every put is
        appended to it, for :meth:`~evbus.lane.Lane.settled`
    :param left: Called with the items not handed on: those behind the stop,
        or those behind the event a lane made wait when the caller was cancelled
    :return: The item that ended the hop (the listener's stop), or None
    """
    if lanes is None:
        # The lanes of a profile seen before are a dict lookup; match() only for a new one
        by_profile, match = router.by_profile, None
    else:
        by_profile, match = {}, (lambda _: lanes)
    taken = 0
    try:
        for event in items:
            taken += 1
            if event.__class__ is tuple:
                # A record: its Event is made by the lane that needs it, or here, once, for several lanes
                profile = event[RECORD_PROFILE]
                found = by_profile.get(profile) or (match or router.match)(profile)
                if len(found) > 1:
                    event = event_of(event)
                # (one lane settles a record with the spool itself)
                if spool is not None and len(found) != 1 and (found or not keep_unrouted):
                    spool.routed(event, len(found))
            else:
                if not isinstance(event, Event):
                    return event
                found = by_profile.get(event.profile) or (match or router.match)(event.profile)
                if spool is not None and (found or not keep_unrouted):
                    spool.routed(event, len(found))
            if found:
                for lane in found:
                    if lane.full:
                        # lane_full "wait": backpressure, up to put()
                        await _room(lane, found, event, settle)
                    seq = lane.put(event)
                    if settle is not None:
                        settle.append((lane, seq))
            elif not keep_unrouted:
                router.counts.unrouted += 1
        return None
    finally:
        if spool is not None:
            spool.collect()  # what the lanes settled, in line or since the last hop
        if left is not None and taken < len(items):
            left(items[taken:])


async def _room(lane: Any, found: Any, event: Any, settle: list | None):
    """
    Wait until ``lane`` has room for ``event``. Cancelled meanwhile, the event
    goes to ``lane`` and the lanes after it in ``found`` past their bound
    before the cancel is raised: the lanes before it have it already, and the
    caller puts back only the events it did not start.
    """
    try:
        await lane.room()
    except asyncio.CancelledError:
        for rest in found[found.index(lane):]:
            seq = rest.put(event)
            if settle is not None:
                settle.append((rest, seq))
        raise
