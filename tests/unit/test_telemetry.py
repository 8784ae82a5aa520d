"""
Telemetry without a bus: which providers count as configured, and a lane
with its spans, checked with the SDK's in-memory exporter.
"""
import types

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from evbus import cloudevents
from evbus import telemetry
from evbus.lane import Destination
from evbus.lane import Lane
from evbus.lane import RetryPolicy
from evbus.types import Event
from evbus.types import make_event
from tests.conftest import Otel
from tests.conftest import wait_for


@pytest.fixture
def providers():
    found = Otel()
    yield found
    found.shutdown()


def test_the_apis_proxy_and_no_op_providers_are_not_configured():
    # this process never sets the global providers: they are the API's proxies
    assert telemetry.configured() == (None, None)
    assert telemetry.configured(NoOpTracerProvider(), NoOpMeterProvider()) == (None, None)


def test_sdk_providers_are_configured(providers):
    found = telemetry.configured(providers.tracer_provider, providers.meter_provider)
    assert found == (providers.tracer_provider, providers.meter_provider)


def test_a_disabled_sdk_makes_no_spans(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    found = telemetry.Telemetry(TracerProvider(), None, queue_depth=lambda: 0, lanes=list)
    assert found.tracer is None and not found.active


def test_put_keeps_the_context_only_with_a_tracer(providers):
    without = telemetry.Telemetry(None, providers.meter_provider, queue_depth=lambda: 0, lanes=list)
    assert without.event_maker() is make_event
    with_tracer = telemetry.Telemetry(providers.tracer_provider, None, queue_depth=lambda: 0, lanes=list)
    with providers.tracer.start_as_current_span("request") as span:
        event = with_tracer.event_maker()("p", None, b"1", "application/json")
    assert trace.get_current_span(event.trace_context) is span


class Recorder:
    def __init__(self):
        self.sent: list[Event] = []
        self.given_up: list[tuple[Event, BaseException, int]] = []

    def send(self, ctx, routing_key, event):
        self.sent.append(event)

    async def on_failure(self, lane, event, error, attempts):
        self.given_up.append((event, error, attempts))


def make_lane(providers: Otel, recorder: Recorder, **kwargs) -> Lane:
    found = telemetry.Telemetry(
        providers.tracer_provider, providers.meter_provider, queue_depth=lambda: 0, lanes=list
    )
    return Lane(
        plugin="test",
        provider="test",
        profile="default",
        ctx=types.SimpleNamespace(acct={"routing_key": "rk"}),
        destination=Destination(send=recorder.send, inline=kwargs.pop("inline", True)),
        on_failure=recorder.on_failure,
        policy=RetryPolicy(attempts=1),
        telemetry=found.lane("test", "default"),
        **kwargs,
    )


async def test_the_message_carries_the_context_of_its_span(providers):
    recorder = Recorder()
    lane = make_lane(providers, recorder)
    with providers.tracer.start_as_current_span("request") as request:
        event = telemetry.Telemetry(
            providers.tracer_provider, None, queue_depth=lambda: 0, lanes=list
        ).event_maker()("p", None, b"1", "application/json")
    lane.put(event)
    [sent] = recorder.sent
    [span] = providers.spans()
    assert span.name == "send rk" and span.parent.span_id == request.get_span_context().span_id
    headers = dict(sent.headers)
    context = span.context
    assert headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    extracted = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (span.context.trace_id, span.context.span_id)
    assert sent.id == event.id and sent.body == event.body and event.headers == ()
    await lane.close(ConnectionError("the test ended"))


async def test_the_envelope_and_the_trace_context_go_together(providers):
    recorder = Recorder()
    envelope = cloudevents.envelope({"envelope": "cloudevents"}, lambda: cloudevents.KAFKA, "test", "test", "p")
    lane = make_lane(providers, recorder, envelope=envelope)
    lane.put(Event(body=b"1"))
    [sent] = recorder.sent
    names = [name for name, _ in sent.headers]
    assert names[:5] == ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"]
    assert "traceparent" in names
    await lane.close(ConnectionError("the test ended"))


async def test_an_event_dropped_from_a_full_lane_gets_an_error_span(providers):
    recorder = Recorder()
    lane = make_lane(providers, recorder, inline=False, limit=1, when_full="dead-letter")
    first, second = Event(body=b"1"), Event(body=b"2")
    lane.put(first)
    lane.put(second)  # the lane's task has not run: the first is dropped
    await wait_for(lambda: len(recorder.given_up) == 1 and len(recorder.sent) == 1, 10, "the drop and the send")
    await lane.close(ConnectionError("the test ended"))
    [dropped] = [span for span in providers.spans() if span.status.status_code is StatusCode.ERROR]
    assert dropped.attributes["messaging.message.id"] == first.id
    assert dropped.attributes["evbus.attempts"] == 0
    assert dropped.attributes["error.type"] == "LaneFullError"
