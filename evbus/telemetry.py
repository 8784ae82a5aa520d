"""
OpenTelemetry for evbus: a PRODUCER span per event and destination, the W3C
trace context in every message, and metrics of the bus and its lanes.

All of it is optional (``pip install "evbus-ng[otel]"``, the OpenTelemetry API).
:func:`configured` looks once, when the bus starts, whether the application
configured a tracer or a meter provider. When it finds neither (no
opentelemetry-api, or only the API's proxy and no-op providers) evbus makes
no :class:`Telemetry`, and nothing here is called per event: ``put`` builds
its events as always and the lanes skip every hook.

With a tracer provider:

- ``put`` and ``put_nowait`` keep the OpenTelemetry context that is current
  where they are called (in the caller's thread) on the event
  (``Event.trace_context``);
- a lane starts a span of kind PRODUCER when it first hands an event to its
  broker, parented on that context, and ends it once the broker confirmed
  the event or the lane gave it up. A retry is an ``evbus.retry`` event on the
  span; an event given up records its exception and sets the status to ERROR;
- the span's context goes into the message through the configured
  propagator (by default ``traceparent`` and ``tracestate``, W3C trace
  context, and ``baggage``), where the plugin's messages carry headers (it
  names a protocol binding, ``binding(hub, ctx)``).

Span attributes follow the OpenTelemetry messaging semantic conventions:
``messaging.system``, ``messaging.destination.name`` (and what the ingress
plugin adds, from its ``messaging(hub, ctx, routing_key)``),
``messaging.operation.type`` and ``messaging.operation.name`` ``send``,
``messaging.message.id`` (the event id), ``messaging.message.body.size``;
and evbus's own: ``evbus.plugin``, ``evbus.acct_profile`` (the profile of the
lane) and ``evbus.profile`` (the event's).

With a meter provider, the instruments of :class:`Telemetry` (counters per
lane, a histogram of publish durations, gauges of the queue depths).
"""
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics
    from opentelemetry import propagate
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace import Status
    from opentelemetry.trace import StatusCode

    # The providers that mean "not configured": the API's proxies (what the global
    # providers are until the application sets some) and its no-op providers
    UNSET_TRACER_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider

        UNSET_METER_PROVIDERS = (metrics.NoOpMeterProvider, _ProxyMeterProvider)
    except ImportError:  # an API that moved its (private) proxy: known by its name below
        UNSET_METER_PROVIDERS = (metrics.NoOpMeterProvider,)

    HAS_OTEL = True
except ImportError:
    HAS_OTEL = False

from evbus.types import Event
from evbus.types import make_event
from evbus.types import wire_copy
from evbus.version import version

# Bucket boundaries of the publish duration histogram, in seconds (those the
# messaging semantic conventions advise for operation durations)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def configured(tracer_provider: Any = None, meter_provider: Any = None) -> tuple[Any, Any]:
    """
    The providers evbus emits to: those given, else OpenTelemetry's global
    ones; each only when it is real, not the API's proxy or no-op provider
    (which is what the global one is until the application sets one).

    :param tracer_provider: A tracer provider; None for the global one
    :param meter_provider: A meter provider; None for the global one
    :return: (tracer provider or None, meter provider or None); (None, None)
        without opentelemetry-api
    """
    if not HAS_OTEL:
        return None, None
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    if isinstance(tracer_provider, UNSET_TRACER_PROVIDERS):
        tracer_provider = None
    unset_meter = isinstance(meter_provider, UNSET_METER_PROVIDERS)
    if unset_meter or type(meter_provider).__name__ == "_ProxyMeterProvider":
        meter_provider = None
    return tracer_provider, meter_provider


class Telemetry:
    """
    The tracer and the instruments of one pair of providers, for every lane.

    Instruments (each lane's with the attributes ``messaging.system``,
    ``evbus.plugin`` and ``evbus.acct_profile``):

    - ``evbus.events.put``, ``evbus.events.published``, ``evbus.events.retried``,
      ``evbus.events.failed``: counters of each lane's events (put on the lane,
      confirmed by the broker, retries, given up and dead-lettered). They are
      observable counters: a lane counts in :class:`Counts`, which costs an
      integer increment per event, and the meter reads the counts when it
      collects. Counts are kept by lane attributes, so they go on rising
      across a stop and a start;
    - ``evbus.publish.duration``: a histogram of the seconds from an event's
      first hand-off to its broker until the broker confirmed it;
    - ``evbus.lane.depth``: an observable gauge of the events each lane holds;
    - ``evbus.queue.depth``: an observable gauge of the events on the broker
      queue, not yet taken by the listener.

    :param tracer_provider: Where spans go; None for no spans
    :param meter_provider: Where metrics go; None for no metrics
    :param queue_depth: ``queue_depth()`` -> the events on the broker queue
    :param lanes: ``lanes()`` -> the lanes that run
    :param mask: ``mask(text)`` -> the text with every known secret masked (error texts on spans)
    """

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        queue_depth: Callable[[], int],
        lanes: Callable[[], Iterable[Any]],
        mask: Callable[[str], str] = str,
    ):
        self.tracer_provider = tracer_provider
        self.mask = mask
        self.meter_provider = meter_provider
        self.tracer = None
        if tracer_provider is not None:
            tracer = tracer_provider.get_tracer("evbus", version)
            # An SDK with OTEL_SDK_DISABLED hands out no-op tracers
            self.tracer = None if isinstance(tracer, trace.NoOpTracer) else tracer
        meter = meter_provider.get_meter("evbus", version) if meter_provider is not None else None
        if meter is None or isinstance(meter, metrics.NoOpMeter):
            meter = metrics.NoOpMeter("evbus")
            self.metering = False
        else:
            self.metering = True
        self._queue_depth = queue_depth
        self._lanes = lanes
        # lane attributes (sorted items) -> (the attributes, their counts)
        self._counts: dict[tuple, tuple[dict[str, str], Counts]] = {}
        for name, description in (
            ("put", "Events put on a lane"),
            ("published", "Events a lane's broker confirmed"),
            ("retried", "Retries of a lane's publishes"),
            ("failed", "Events a lane gave up (dead-lettered)"),
        ):
            meter.create_observable_counter(
                f"evbus.events.{name}", callbacks=[self._observe_counts(name)], unit="{event}",
                description=description,
            )
        self.duration = meter.create_histogram(
            "evbus.publish.duration",
            unit="s",
            description="Seconds from an event's first hand-off to its broker until the broker confirmed it",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            "evbus.lane.depth", callbacks=[self._observe_lanes], unit="{event}",
            description="Events a lane holds, not yet confirmed by its broker",
        )
        meter.create_observable_gauge(
            "evbus.queue.depth", callbacks=[self._observe_queue], unit="{event}",
            description="Events on the broker queue, not yet taken by the listener",
        )

    @property
    def active(self) -> bool:
        """Whether there is anything to emit: spans or metrics."""
        return self.tracer is not None or self.metering

    def uses(self, tracer_provider: Any, meter_provider: Any) -> bool:
        """:return: Whether this telemetry emits to these providers"""
        return tracer_provider is self.tracer_provider and meter_provider is self.meter_provider

    def event_maker(self) -> Callable[[str, str | None, bytes, str], Event]:
        """
        :return: What ``put`` builds its events with: :func:`~evbus.types.make_event`,
            or, with a tracer, a function that also keeps the current context on the event
        """
        if self.tracer is None:
            return make_event
        current = otel_context.get_current

        def make_traced_event(profile: str, routing_key: str | None, body: bytes, content_type: str) -> Event:
            return make_event(profile, routing_key, body, content_type, current())

        return make_traced_event

    def lane(
        self,
        plugin: str,
        acct_profile: str,
        messaging: Callable[[str | None], dict[str, Any]] | None = None,
        headers: bool = True,
    ) -> "LaneTelemetry":
        """
        :param plugin: The lane's ingress plugin
        :param acct_profile: The lane's profile
        :param messaging: ``messaging(routing_key)`` -> the messaging attributes of a
            message (the plugin's hook); None: the plugin name and the routing key
        :param headers: Whether the lane's messages carry headers, and so the trace context
        :return: The spans and counts of one lane
        """
        return LaneTelemetry(self, plugin, acct_profile, messaging, headers)

    def counts(self, attributes: dict[str, str]) -> "Counts":
        """
        :param attributes: A lane's metric attributes
        :return: The counts of the lanes with these attributes (one object for all, from start to start)
        """
        key = tuple(sorted(attributes.items()))
        found = self._counts.get(key)
        if found is None:
            found = self._counts[key] = (dict(attributes), Counts())
        return found[1]

    def _observe_counts(self, name: str) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            # (a copy first: the meter may collect in a thread of its own while a lane is made)
            return [
                metrics.Observation(getattr(counts, name), attributes)
                for attributes, counts in list(self._counts.values())
            ]

        return observe

    def _observe_queue(self, options: Any) -> Iterable[Any]:
        return [metrics.Observation(self._queue_depth())]

    def _observe_lanes(self, options: Any) -> Iterable[Any]:
        return [
            metrics.Observation(lane.depth, lane.telemetry.attributes)
            for lane in self._lanes()
            if lane.telemetry is not None
        ]


class Counts:
    """The events of the lanes with the same attributes: put, published, retried, failed."""

    __slots__ = ("put", "published", "retried", "failed")

    def __init__(self):
        self.put = self.published = self.retried = self.failed = 0


class LaneTelemetry:
    """
    The spans and counts of one lane: the hooks the lane calls as an event
    goes to its broker. Spans are kept by event until the event is settled.

    :param telemetry: The tracer and instruments
    :param plugin: The lane's ingress plugin
    :param acct_profile: The lane's profile
    :param messaging: ``messaging(routing_key)`` -> the messaging attributes of a message, or None
    :param headers: Whether the lane's messages carry headers: the trace context goes into
        them; else it is not worked out
    """

    def __init__(
        self,
        telemetry: Telemetry,
        plugin: str,
        acct_profile: str,
        messaging: Callable[[str | None], dict[str, Any]] | None,
        headers: bool = True,
    ):
        self._headers = headers
        self._telemetry = telemetry
        self._tracer = telemetry.tracer
        self._mask = telemetry.mask
        self._metering = telemetry.metering
        self._messaging = messaging
        self._plugin = plugin
        self._acct_profile = acct_profile
        system = self.messaging(None).get("messaging.system", plugin)
        # The attributes of the lane's metrics
        self.attributes = {
            "messaging.system": system, "evbus.plugin": plugin, "evbus.acct_profile": acct_profile
        }
        self.counts = telemetry.counts(self.attributes)
        # id(event) -> (its span or None, when it was first handed off, the headers of its span's context)
        self._sent: dict[int, tuple[Any, float, tuple[tuple[str, str], ...]]] = {}
        # routing key -> the span attributes of its messages
        self._by_key: dict[str | None, tuple[str, dict[str, Any]]] = {}

    def messaging(self, routing_key: str | None) -> dict[str, Any]:
        """
        :return: The messaging attributes of a message to ``routing_key``, from
            the plugin's hook (which must not fail a publish), or the defaults
        """
        found: dict[str, Any] = {}
        if self._messaging is not None:
            try:
                found = dict(self._messaging(routing_key))
            except Exception:  # an attribute is a courtesy, never a failed publish
                found = {}
        found.setdefault("messaging.system", self._plugin)
        found.setdefault("messaging.destination.name", routing_key or "")
        return {key: value for key, value in found.items() if value is not None}

    def queued(self, event: Event):
        """An event was put on the lane."""
        self.counts.put += 1

    def sending(self, event: Event, wire: Event, routing_key: str | None) -> Event:
        """
        An event is handed to the broker (again, on a retry): its span starts
        the first time, and its context goes into the message.

        :param event: The event on the lane
        :param wire: What the plugin is to send (the event, or its envelope)
        :param routing_key: Where it goes
        :return: ``wire`` with the headers of the span's context
        """
        sent = self._sent.get(id(event))
        if sent is None:
            sent = self._sent[id(event)] = self._start(event, wire, routing_key)
        headers = sent[2]
        if not headers:
            return wire
        return wire_copy(wire, wire.body, wire.content_type, wire.headers + headers)

    def _start(self, event: Event, wire: Event, routing_key: str | None) -> tuple[Any, float, tuple]:
        started = time.perf_counter()
        tracer = self._tracer
        if tracer is None:
            return None, started, ()
        name, attributes = self._span_of(event, wire, routing_key)
        span = tracer.start_span(
            name, context=event.trace_context, kind=SpanKind.PRODUCER, attributes=attributes
        )
        if not self._headers:
            return span, started, ()
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, event.trace_context))
        return span, started, tuple(carrier.items())

    def _span_of(self, event: Event, wire: Event, routing_key: str | None) -> tuple[str, dict[str, Any]]:
        """:return: The name and attributes of an event's span"""
        known = self._by_key.get(routing_key)
        if known is None:
            attributes = self.messaging(routing_key)
            destination = attributes["messaging.destination.name"]
            attributes.update(
                {
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "evbus.plugin": self._plugin,
                    "evbus.acct_profile": self._acct_profile,
                }
            )
            known = (f"send {destination}" if destination else "send", attributes)
            if len(self._by_key) < 1000:  # routing keys are few; a flood of them is not cached
                self._by_key[routing_key] = known
        name, attributes = known
        return name, {
            **attributes,
            "messaging.message.id": event.id,
            "messaging.message.body.size": len(wire.body),
            "evbus.profile": event.profile,
        }

    def published(self, event: Event):
        """The broker confirmed an event: its span ends, its duration is recorded."""
        self.counts.published += 1
        sent = self._sent.pop(id(event), None)
        if sent is None:
            return
        span, started, _ = sent
        if self._metering:
            self._telemetry.duration.record(time.perf_counter() - started, self.attributes)
        if span is not None:
            span.end()

    def retried(self, event: Event, error: BaseException, attempt: int, delay: float):
        """
        An attempt of an event failed and is retried.

        :param attempt: The attempt that failed (1 for the first)
        :param delay: Seconds until the next attempt
        """
        self.counts.retried += 1
        sent = self._sent.get(id(event))
        if sent is not None and sent[0] is not None:
            attributes = {**self._exception(error), "evbus.attempt": attempt, "evbus.retry.delay": delay}
            sent[0].add_event("evbus.retry", attributes)

    def given_up(self, event: Event, error: BaseException, attempts: int, routing_key: str | None):
        """
        The lane gave an event up (dead-lettered it): its span records the
        error and ends. An event never handed off (dropped from a full lane,
        or still waiting at a stop) gets a span for its failure alone.

        :param attempts: The attempts it had (0: none)
        :param routing_key: Where it was to go
        """
        self.counts.failed += 1
        sent = self._sent.pop(id(event), None)
        if self._tracer is None:
            return
        span = sent[0] if sent is not None else None
        if span is None:
            name, attributes = self._span_of(event, event, routing_key)
            span = self._tracer.start_span(
                name, context=event.trace_context, kind=SpanKind.PRODUCER, attributes=attributes
            )
        text = self._mask(f"{type(error).__name__}: {error}")
        span.add_event("exception", {**self._exception(error), "evbus.attempts": attempts})
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_attribute("evbus.attempts", attempts)
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered after {attempts} attempt(s): {text}"))
        span.end()

    def _exception(self, error: BaseException) -> dict[str, str]:
        """:return: The semantic conventions' exception attributes of an error, secrets masked"""
        return {"exception.type": type(error).__qualname__, "exception.message": self._mask(str(error))}
