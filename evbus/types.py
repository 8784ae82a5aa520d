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


_SETTERS = tuple(Event.__dict__[f.name].__set__ for f in dataclasses.fields(Event))
_NEW = object.__new__


def make_event(
    profile: str, routing_key: str | None, body: bytes, content_type: str, trace_context: Any = None
) -> Event:
    """
    Build an Event with a new id and the current time, on the hot path.

    Equivalent to ``Event(profile, routing_key, body, content_type,
    trace_context=trace_context)``; it sets the slots directly instead of going
    through the frozen ``__setattr__``, which halves the cost of every put.
    """
    event = _NEW(Event)
    (set_profile, set_routing_key, set_body, set_content_type,
     set_id, set_timestamp, set_trace, set_headers) = _SETTERS
    set_profile(event, profile)
    set_routing_key(event, routing_key)
    set_body(event, body)
    set_content_type(event, content_type)
    set_id(event, f"{_ID_PREFIX}-{next(_ID_COUNTER):x}")
    set_timestamp(event, time.time())
    set_trace(event, trace_context)
    set_headers(event, ())
    return event


def wire_copy(event: Event, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...]) -> Event:
    """
    The copy of an event that one destination sends: the same id, time and
    trace context, with its own body, content type and message headers (an
    envelope, the trace context of its span).
    """
    copy = _NEW(Event)
    (set_profile, set_routing_key, set_body, set_content_type,
     set_id, set_timestamp, set_trace, set_headers) = _SETTERS
    set_profile(copy, event.profile)
    set_routing_key(copy, event.routing_key)
    set_body(copy, body)
    set_content_type(copy, content_type)
    set_id(copy, event.id)
    set_timestamp(copy, event.timestamp)
    set_trace(copy, event.trace_context)
    set_headers(copy, headers)
    return copy
