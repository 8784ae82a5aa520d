"""
End-to-end figures of the internal ingress: put -> arrival on the internal queue.

    python bench/internal.py [--events 100000] [--seconds 5] [--latency 2000] [--rounds 5] [--upstream] [--otel]

For each implementation, in its own process and interleaved round by round:

- throughput: events/s from the first put until the last of ``--events``
  small dict events has arrived on the internal queue (a consumer task takes
  them as they come), and the process CPU time per event; such runs follow
  one another until they add up to ``--seconds`` (one at least), and the
  figures are those of all of them;
- latency: p50/p99 put -> arrival of ``--latency`` events sent one at a time.

Implementations:

- ``evbus``: this project, through ``hub.evbus.broker.put(body=..., profile=...)``;
- ``relay``: the baseline of a raw one-hop relay: an ``asyncio.Queue``, a
  listener task, ``json.dumps``, the consumer's queue;
- ``otel`` (``--otel``): evbus with OpenTelemetry's SDK configured as an
  application would: a tracer provider whose spans go through a batch span
  processor to an exporter that drops them, and a meter provider with a
  reader; every event then has a PRODUCER span and its metrics (needs
  opentelemetry-sdk, which the test requirements install);
- ``upstream``: pop-evbus 7.0.1, driven through the same hub calls, from a
  virtual environment of its own (``--upstream`` builds it in
  ``bench/.upstream-venv`` when missing; it never shares an environment with
  evbus, whose dynes would merge with it).

Each measured run starts after a full garbage collection, so that collecting
what loading the hub left behind does not fall into it. Every implementation
is measured over about as long (``--seconds``; pop-evbus's one run lasts
that long): on a machine whose other work comes and goes, a run of a
fraction of a second would catch a busy or a quiet moment where the slow
implementation's run sees their average. The figures are medians over the
rounds. Ratios are paired: each round
measures every implementation back to back, the ratio is taken within the
round, and the median of those ratios is printed (the machine's noise hits
both sides of a pair alike).
"""
import argparse
import asyncio
import gc
import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
UPSTREAM_VENV = HERE / ".upstream-venv"
UPSTREAM_REQUIREMENT = "pop-evbus==7.0.1"


def body(n: int) -> dict:
    return {"n": n, "message": "event content", "tags": {"run": "bench"}}


def figures(eps: float, cpu_us: float, latencies: list[float]) -> dict:
    """The figures of one run, as a worker prints them."""
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {"eps": eps, "cpu_us": cpu_us, "p50": p50, "p99": p99}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _consume(queue: asyncio.Queue, count: int):
    for _ in range(count):
        await queue.get()


async def throughput(put, queue: asyncio.Queue, count: int) -> tuple[float, float]:
    """
    :return: events/s from the first put until ``count`` events arrived on ``queue``,
        and µs of process CPU time per event
    """
    consumer = asyncio.create_task(_consume(queue, count))
    cpu, started = time.process_time(), time.perf_counter()
    for n in range(count):
        await put(body=body(n), profile="default")
    await consumer
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return count / elapsed, cpu / count * 1e6


async def measured(put, queue: asyncio.Queue, events: int, seconds: float) -> tuple[float, float]:
    """
    Runs of ``events`` events one after the other, until they add up to ``seconds``
    (one run at least), each after a full garbage collection: what loading left
    behind is not collected within a measured run.

    :return: events/s over all the runs, and µs of CPU time per event
    """
    total_events, total_seconds, total_cpu = 0, 0.0, 0.0
    while not total_events or total_seconds < seconds:
        gc.collect()
        eps, cpu_us = await throughput(put, queue, events)
        total_events += events
        total_seconds += events / eps
        total_cpu += cpu_us * events
    return total_events / total_seconds, total_cpu / total_events


async def run_pop(events: int, latency: int, seconds: float = 0) -> dict:
    """Drive a pop-evbus style hub (evbus or upstream, whichever is installed)."""
    import pop.hub

    sys.argv = [sys.argv[0]]
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "bench"}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    queue = await hub.ingress.internal.get(routing_key="bench")
    put = hub.evbus.broker.put

    await throughput(put, queue, min(2000, events))  # warm-up
    eps, cpu_us = await measured(put, queue, events, seconds)
    latencies = []
    for n in range(latency):
        started = time.perf_counter()
        await put(body=body(n), profile="default")
        await queue.get()
        latencies.append(time.perf_counter() - started)
    await hub.evbus.init.stop()
    await listener
    return figures(eps, cpu_us, latencies)


def configure_otel():
    """Set OpenTelemetry's global providers as an application would (spans batched, then dropped)."""
    from opentelemetry import metrics
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def run_relay(events: int, latency: int, seconds: float = 0) -> dict:
    """The baseline: one asyncio.Queue, one listener task, json.dumps, the consumer's queue."""
    bus: asyncio.Queue = asyncio.Queue()
    out: asyncio.Queue = asyncio.Queue()

    async def listen():
        while True:
            item = await bus.get()
            if item is None:
                return
            out.put_nowait(item)

    async def put(body, profile="default"):
        await bus.put((profile, json.dumps(body).encode()))

    listener = asyncio.create_task(listen())

    await throughput(put, out, min(2000, events))
    eps, cpu_us = await measured(put, out, events, seconds)
    latencies = []
    for n in range(latency):
        started = time.perf_counter()
        await put(body=body(n))
        await out.get()
        latencies.append(time.perf_counter() - started)
    bus.put_nowait(None)
    await listener
    return figures(eps, cpu_us, latencies)


def build_upstream() -> pathlib.Path:
    """Make the upstream virtual environment if it is missing; return its python."""
    python = UPSTREAM_VENV / "bin" / "python"
    if not python.exists():
        print(f"building {UPSTREAM_VENV} with {UPSTREAM_REQUIREMENT} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", UPSTREAM_REQUIREMENT], check=True)
    return python


def measure(
    python: str, kind: str, events: int, latency: int, cwd: pathlib.Path, seconds: float = 0, timeout: float = 900
) -> dict:
    """Run one round of one implementation in a fresh process."""
    command = [python, str(HERE / "internal.py"), "--worker", kind, "--events", str(events)]
    command += ["--latency", str(latency), "--seconds", str(seconds)]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    events: int, latency: int, rounds: int, upstream: bool = False, otel: bool = False, log=None,
    seconds: float = 5.0,
) -> dict[str, list[dict]]:
    """
    Measure evbus and the relay (and pop-evbus, evbus with OpenTelemetry), each in
    a fresh process, interleaved round by round.

    :param seconds: How long each process measures throughput at least (runs of ``events``)
    :param log: ``log(text)`` for the progress of each run
    :return: {implementation: [figures of each round]}
    """
    kinds = {"evbus": (sys.executable, HERE.parent), "relay": (sys.executable, HERE.parent)}
    if otel:
        kinds["otel"] = (sys.executable, HERE.parent)
    if upstream:
        # Run upstream from a directory where this project's dynes are not on sys.path
        kinds["upstream"] = (str(build_upstream()), UPSTREAM_VENV)
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind, (python, cwd) in kinds.items():
            results[kind].append(measure(python, kind, events, latency, cwd, seconds))
            if log is not None:
                eps, cpu_us = results[kind][-1]["eps"], results[kind][-1]["cpu_us"]
                log(f"round {round_ + 1} {kind}: {eps:,.0f} events/s, {cpu_us:.1f} µs CPU/event")
    return results


def median(results: dict[str, list[dict]], kind: str, key: str) -> float:
    """:return: The median of one figure of one implementation over the rounds"""
    return statistics.median(r[key] for r in results[kind])


def paired(results: dict[str, list[dict]], mine: str, other: str, key: str) -> float:
    """:return: The median over the rounds of ``mine``'s figure / ``other``'s, each ratio within a round"""
    return statistics.median(a[key] / b[key] for a, b in zip(results[mine], results[other]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--latency", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="throughput runs in each process add up to this long at least"
    )
    parser.add_argument("--upstream", action="store_true", help="also measure pop-evbus 7.0.1 (builds its venv)")
    parser.add_argument(
        "--otel", action="store_true", help="also measure evbus with OpenTelemetry tracing and metrics on"
    )
    parser.add_argument("--worker", choices=["evbus", "relay", "upstream", "otel"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "otel":
            configure_otel()
        runner = run_relay if args.worker == "relay" else run_pop
        print(json.dumps(asyncio.run(runner(args.events, args.latency, args.seconds))))
        return

    progress = lambda text: print(text, file=sys.stderr)  # noqa: E731
    results = run(
        args.events, args.latency, args.rounds, args.upstream, args.otel, log=progress, seconds=args.seconds
    )
    print(f"internal ingress, runs of {args.events:,} events for {args.seconds:g} s at least in each process, "
          f"latency over {args.latency:,} single events, median of {args.rounds} rounds")
    print(f"{'':10} {'events/s':>12} {'µs CPU/ev':>10} {'p50 µs':>10} {'p99 µs':>10}")
    for kind in results:
        print(
            f"{kind:10} {median(results, kind, 'eps'):>12,.0f} {median(results, kind, 'cpu_us'):>10.2f} "
            f"{median(results, kind, 'p50') * 1e6:>10.1f} {median(results, kind, 'p99') * 1e6:>10.1f}"
        )
    print(
        f"evbus / relay:    {paired(results, 'evbus', 'relay', 'eps'):.2f}x events/s, "
        f"p50 {paired(results, 'evbus', 'relay', 'p50'):.2f}x"
    )
    if "otel" in results:
        print(
            f"otel / evbus:     {1 / paired(results, 'evbus', 'otel', 'eps'):.2f}x events/s, "
            f"p50 {1 / paired(results, 'evbus', 'otel', 'p50'):.2f}x (tracing and metrics on, against off)"
        )
    if "upstream" in results:
        print(
            f"evbus / upstream: {paired(results, 'evbus', 'upstream', 'eps'):.2f}x events/s, "
            f"p50 {paired(results, 'evbus', 'upstream', 'p50'):.2f}x (target: >= 12x events/s, <= 0.5x p50)"
        )


if __name__ == "__main__":
    main()
