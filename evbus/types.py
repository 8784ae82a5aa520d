"""
The values that travel through evbus.
"""
import dataclasses
import itertools
import os
import time
from typing import Any

# Event ids: a random per-process prefix and a counter; unique without the cost of uuid4 per event.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_event_id() -> str:
    """
    Return an id that is unique across processes: a random prefix and a counter.
    """
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """
    One event on the bus, its body already serialized.

    The field order (``profile``, ``routing_key``, ``body``) is the one of
    pop-evbus 5.x; every field has a default so that keyword construction of
    either generation works (``Event(profile=..., body=...)``).

    :param profile: The event's profile name, matched against profile patterns
    :param routing_key: The routing key; ``None`` means "the profile's routing_key"
    :param body: The serialized body
    :param content_type: The MIME type of the serializer that made ``body``
    :param id: A unique id of this event
    :param timestamp: When the event was put (seconds since the epoch)
    :param trace_context: The OpenTelemetry context current when the event was
        put, when tracing is on (see :mod:`evbus.telemetry`); else None
    :param headers: Message headers of one destination's copy of the event
        (trace context, CloudEvents attributes), ``(name, value)`` pairs that
        the ingress plugin adds to the message; set by the lane, empty on the bus
    """

    profile: str = "default"
    routing_key: str | None = None
    body: bytes = b""
    content_type: str = "application/json"
    id: str = dataclasses.field(default_factory=new_event_id)
    timestamp: float = dataclasses.field(default_factory=time.time)
    trace_context: Any = dataclasses.field(default=None, compare=False, repr=False)
    headers: tuple[tuple[str, str], ...] = ()


class _Draft:
    """
    An Event under construction: the same slots, in a class that may set them.

    Setting eight slots of the frozen class one by one through their
    descriptors costs about twice as much as building a draft with plain
    attribute stores and making it an Event (``__class__`` assignment: the two
    classes have the same layout). The result is an ordinary Event.
    """

    __slots__ = Event.__slots__

    def __init__(self, profile, routing_key, body, content_type, id, timestamp, trace_context, headers):
        self.profile = profile
        self.routing_key = routing_key
        self.body = body
        self.content_type = content_type
        self.id = id
        self.timestamp = timestamp
        self.trace_context = trace_context
        self.headers = headers
        self.__class__ = Event


def make_event(
    profile: str, routing_key: str | None, body: bytes, content_type: str, trace_context: Any = None
) -> Event:
    """
    Build an Event with a new id and the current time, on the hot path.

    Equivalent to ``Event(profile, routing_key, body, content_type,
    trace_context=trace_context)``, without the frozen ``__setattr__``.
    """
    event_id = f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"
    return _Draft(profile, routing_key, body, content_type, event_id, time.time(), trace_context, ())


# The fields of a record that the listener, the lanes and the spool read, by position
RECORD_PROFILE, RECORD_ROUTING_KEY, RECORD_BODY, RECORD_CONTENT_TYPE, RECORD_NUMBER, RECORD_TIMESTAMP = range(6)
# What the ids this process gives start with
_OWN_IDS = f"{_ID_PREFIX}-"


def make_record(profile: str, routing_key: str | None, body: bytes, content_type: str) -> tuple:
    """
    A new event's fields as a plain tuple: what ``put`` queues when neither
    the spool nor tracing needs the Event at once. The Event is made where
    it is needed (:func:`event_of`); a lane that publishes in line needs only
    the record's routing key and body.

    Its id (a number until the Event is made) and time are taken now.
    """
    return (profile, routing_key, body, content_type, next(_ID_COUNTER), time.time())


def event_of(record: tuple) -> Event:
    """
    :param record: What :func:`make_record` returned
    :return: Its Event: the id and time it was given when it was put
    """
    profile, routing_key, body, content_type, number, timestamp = record
    return _Draft(profile, routing_key, body, content_type, f"{_OWN_IDS}{number:x}", timestamp, None, ())


def record_id(number: int) -> str:
    """:return: The id of the event of a record (its number, see :func:`make_record`)"""
    return f"{_OWN_IDS}{number:x}"


#: The random prefix of this process's ids, as the bytes it is the hex of (:func:`record_id`)
OWN_ID_PREFIX = bytes.fromhex(_ID_PREFIX)


def id_key(event_id: str) -> int | str:
    """
    The key of an event in tables that hold both records and Events (the
    spool's): the number of an id this process gave, as its record has it;
    any other id as it is.
    """
    if event_id.startswith(_OWN_IDS):
        try:
            return int(event_id[len(_OWN_IDS) :], 16)
        except ValueError:
            pass
    return event_id


def wire_copy(event: Event, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...]) -> Event:
    """
    The copy of an event that one destination sends: the same id, time and
    trace context, with its own body, content type and message headers (an
    envelope, the trace context of its span).
    """
    return _Draft(
        event.profile, event.routing_key, body, content_type,
        event.id, event.timestamp, event.trace_context, headers,
    )
