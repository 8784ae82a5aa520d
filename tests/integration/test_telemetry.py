"""
OpenTelemetry on the whole bus (internal ingress and test plugins), read
with the SDK's in-memory span exporter and metric reader: a PRODUCER span
per event and destination parented on the span of ``put``, retries and
failures on it, the metrics of the lanes and queues, and nothing at all
without providers.
"""
import asyncio
import json
import subprocess
import sys
import textwrap
import threading

import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode

from evbus.types import make_event
from tests.conftest import add_ingress
from tests.conftest import take
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

LANE = {"messaging.system": "internal", "evbus.plugin": "internal", "evbus.acct_profile": "default"}


async def test_without_providers_nothing_is_set_up(hub, running):
    """OpenTelemetry installed, not configured (the API's proxy providers): no telemetry, plain events."""
    await running({"internal": {"default": {"routing_key": "q"}}})
    assert hub.evbus.telemetry.CURRENT is None
    assert hub.evbus.broker.STATE.make_event is make_event
    assert all(lane.telemetry is None for lane in hub.evbus.route.running_lanes())
    event = hub.evbus.broker.event(body=1)
    assert event.trace_context is None and event.headers == ()


async def test_a_producer_span_per_event_and_destination_parented_on_put(hub, running, otel):
    await running({"internal": {"default": {"routing_key": "a"}, "def*": {"routing_key": "b"}}})
    with otel.tracer.start_as_current_span("request") as request:
        await hub.evbus.broker.put(body={"n": 1})
    await take(await hub.ingress.internal.get("a"), 1)
    await take(await hub.ingress.internal.get("b"), 1)
    spans = otel.spans()
    assert sorted(span.name for span in spans) == ["send a", "send b"]
    parent = request.get_span_context()
    for span in spans:
        assert span.kind is SpanKind.PRODUCER
        assert span.parent.span_id == parent.span_id and span.context.trace_id == parent.trace_id
        assert span.status.status_code is StatusCode.UNSET
    [a] = [span for span in spans if span.name == "send a"]
    assert dict(a.attributes) == {
        "messaging.system": "internal",
        "messaging.destination.name": "a",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": a.attributes["messaging.message.id"],
        "messaging.message.body.size": len(b'{"n": 1}'),
        "evbus.plugin": "internal",
        "evbus.acct_profile": "default",
        "evbus.profile": "default",
    }
    assert {span.attributes["messaging.message.id"] for span in spans} == {a.attributes["messaging.message.id"]}


async def test_put_nowait_from_another_thread_is_parented_on_that_threads_span(hub, running, otel):
    await running({"internal": {"default": {"routing_key": "q"}}})
    parents = {}

    def work(name: str):
        with otel.tracer.start_as_current_span(name) as span:
            parents[name] = span.get_span_context()
            hub.evbus.broker.put_nowait(body=name)

    threads = [threading.Thread(target=work, args=(f"thread-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bodies = await take(await hub.ingress.internal.get("q"), 3)
    await wait_for(lambda: len(otel.spans()) == 3, 10, "three spans")
    by_body = {json.loads(body): body for body in bodies}
    assert set(by_body) == set(parents)
    for span in otel.spans():
        [name] = [name for name, parent in parents.items() if parent.span_id == span.parent.span_id]
        assert span.context.trace_id == parents[name].trace_id


async def test_without_a_current_span_the_producer_span_is_a_root(hub, running, otel):
    await running({"internal": {"default": {"routing_key": "q"}}})
    await hub.evbus.broker.put(body=1)
    await take(await hub.ingress.internal.get("q"), 1)
    [span] = otel.spans()
    assert span.parent is None


async def test_retries_are_events_on_the_span(hub, running, otel):
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 2
    await running({"flaky": {"default": {"routing_key": "r"}}})
    with otel.tracer.start_as_current_span("request"):
        await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [span] = otel.spans()
    retries = [event for event in span.events if event.name == "evbus.retry"]
    assert [event.attributes["evbus.attempt"] for event in retries] == [1, 2]
    assert all(event.attributes["exception.type"] == "ConnectionResetError" for event in retries)
    assert span.status.status_code is StatusCode.UNSET
    assert hub.ingress.flaky.SEEN == [b"1"]


async def test_a_given_up_event_ends_its_span_with_the_error_secrets_masked(hub, running, otel, error_sink):
    add_ingress(hub, "failing")
    await running({"failing": {"default": {"routing_key": "r", "user": "u", "password": "s3cr3t-pw"}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [span] = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionError"
    assert span.attributes["evbus.attempts"] == 3  # RETRY_ENV: 3 attempts
    [exception] = [event for event in span.events if event.name == "exception"]
    assert exception.attributes["exception.type"] == "ConnectionError"
    texts = [span.status.description, *(str(dict(event.attributes)) for event in span.events)]
    assert "amqp://u:***@127.0.0.1:1/" in exception.attributes["exception.message"]
    assert not any("s3cr3t-pw" in text for text in texts)
    assert len(error_sink) == 1


async def test_events_left_at_a_stop_get_error_spans(hub, running, otel):
    add_ingress(hub, "hang")
    await running({"hang": {"default": {"routing_key": "r"}}})
    for n in range(3):
        await hub.evbus.broker.put(body=n)
    await wait_for(lambda: hub.ingress.hang.STARTED == 1, 10, "the first publish")
    await hub.evbus.init.stop(timeout=0.2)
    spans = otel.spans()
    assert len(spans) == 3 and all(span.status.status_code is StatusCode.ERROR for span in spans)
    assert sorted(span.attributes["evbus.attempts"] for span in spans) == [0, 0, 0]


async def test_lane_counters_and_publish_duration(hub, running, otel):
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 1
    await running({"internal": {"default": {"routing_key": "q"}}, "flaky": {"default": {}}})
    for n in range(5):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    metrics = otel.metrics()
    flaky = {"messaging.system": "flaky", "evbus.plugin": "flaky", "evbus.acct_profile": "default"}

    def value(name: str, attributes: dict):
        [found] = [value for point_attributes, value in metrics[name] if point_attributes == attributes]
        return found

    assert value("evbus.events.put", LANE) == 5 and value("evbus.events.put", flaky) == 5
    assert value("evbus.events.published", LANE) == 5 and value("evbus.events.published", flaky) == 5
    assert value("evbus.events.retried", flaky) == 1 and value("evbus.events.retried", LANE) == 0
    assert value("evbus.events.failed", flaky) == 0
    duration = value("evbus.publish.duration", flaky)
    assert duration.count == 5 and duration.sum > 0
    assert duration.explicit_bounds[:3] == (0.005, 0.01, 0.025)


async def test_failed_counter(hub, running, otel):
    add_ingress(hub, "failing")
    await running({"failing": {"default": {}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [(attributes, failed)] = otel.metrics()["evbus.events.failed"]
    assert failed == 1 and attributes["evbus.plugin"] == "failing"


async def test_lane_and_queue_depth_gauges(hub, running, otel):
    add_ingress(hub, "hang")
    await running({"hang": {"default": {}}})
    for n in range(4):
        await hub.evbus.broker.put(body=n)
    await wait_for(lambda: hub.ingress.hang.STARTED == 1, 10, "the first publish")
    # and three more the listener has not taken yet (no await in between)
    for n in range(3):
        hub.evbus.broker.put_nowait(body=n)
    metrics = otel.metrics()
    [(_, queue_depth)] = metrics["evbus.queue.depth"]
    [(attributes, lane_depth)] = metrics["evbus.lane.depth"]
    assert queue_depth == 3
    assert lane_depth == 4 and attributes == {
        "messaging.system": "hang", "evbus.plugin": "hang", "evbus.acct_profile": "default"
    }
    await hub.evbus.init.stop(timeout=0.2)


async def test_only_a_meter_provider_counts_without_spans(hub, running, otel):
    hub.evbus.TRACER_PROVIDER = None  # the global one: not configured in this process
    await running({"internal": {"default": {"routing_key": "q"}}})
    assert hub.evbus.broker.STATE.make_event is make_event
    await hub.evbus.broker.put(body=1)
    await take(await hub.ingress.internal.get("q"), 1)
    assert otel.spans() == []
    [(_, published)] = otel.metrics()["evbus.events.published"]
    assert published == 1


def test_the_global_providers_the_usual_way(tmp_path):
    """An application sets OpenTelemetry's global providers: evbus finds them at start()."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        import pop.hub
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        async def main():
            sys.argv = ["evbus"]
            hub = pop.hub.Hub()
            hub.pop.sub.add(dyne_name="evbus")
            hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
            contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "q"}}})
            listener = asyncio.create_task(hub.evbus.init.start(contexts))
            await hub.evbus.init.join()
            with trace.get_tracer("app").start_as_current_span("request"):
                await hub.evbus.broker.put(body=1)
            await hub.evbus.init.stop()
            await listener
            [span] = [s for s in exporter.get_finished_spans() if s.name == "send q"]
            [request] = [s for s in exporter.get_finished_spans() if s.name == "request"]
            assert span.parent.span_id == request.context.span_id
            names = [m.name for rm in reader.get_metrics_data().resource_metrics
                     for sm in rm.scope_metrics for m in sm.metrics]
            print(sorted(names))

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'evbus.events.published'" in out.stdout and "'evbus.publish.duration'" in out.stdout


def test_prometheus_exporter_as_in_the_readme(tmp_path):
    """The README's example: the OpenTelemetry Prometheus exporter serves evbus's metrics."""
    code = textwrap.dedent(
        """
        import asyncio, sys, urllib.request
        import pop.hub
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server

        server, thread = start_http_server(port=0, addr="127.0.0.1")
        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

        async def main():
            sys.argv = ["evbus"]
            hub = pop.hub.Hub()
            hub.pop.sub.add(dyne_name="evbus")
            hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
            contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "q"}}})
            listener = asyncio.create_task(hub.evbus.init.start(contexts))
            await hub.evbus.init.join()
            for n in range(3):
                await hub.evbus.broker.put(body=n)
            queue = await hub.ingress.internal.get("q")
            for n in range(3):
                await queue.get()
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            page = await asyncio.get_running_loop().run_in_executor(None, lambda: urllib.request.urlopen(url).read())
            print(page.decode())
            await hub.evbus.init.stop()
            await listener
            server.shutdown()

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    [published] = [line for line in lines if line.startswith("evbus_events_published_total{")]
    assert 'evbus_plugin="internal"' in published and published.endswith(" 3.0")
    assert any(line.startswith("evbus_publish_duration_seconds_bucket{") for line in lines)
    assert any(line.startswith("evbus_queue_depth") for line in lines)
