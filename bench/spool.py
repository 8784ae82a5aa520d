"""
The cost of the durable spool: events/s with the spool on next to the bus
without it, for one producer and for many, per ``spool_sync`` mode.

    python bench/spool.py [--events 50000] [--full-events 2000] [--rounds 5] [--dir DIR] [--compare PYTHON]

Each figure is events/s from the first ``put`` until the last event has
arrived on the internal ingress queue (a consumer task takes them as they
come), through the public hub API, with a bounded broker queue
(``--queue-size``). Two shapes of producer:

- ``one``: one task awaiting each ``put`` (the common case);
- ``many``: 8 tasks awaiting ``put`` and 4 threads calling ``put_nowait``
  at once (a thread that finds the queue full waits a little and tries again).

Every measurement runs in a fresh process; a round measures the bus without
the spool and with it for each ``spool_sync`` mode, for each shape (every
other round in reverse order). Ratios are paired (the bus without the spool
over the bus with it, within a round: the cost of the spool; 1.0x is free)
and the medians over the rounds are printed, with the CPU time per event
and its paired ratio (steadier than events/s on a busy machine). ``full``
syncs the disk before each ``put`` returns, so it runs ``--full-events``
events only; put the spool on the disk you mean to measure (``--dir``;
default: the temporary directory).

``--compare PYTHON`` measures the spool of another evbus too (the python of
a virtual environment where it is installed, e.g. an older release), in the
same rounds, against the same baseline.
"""
import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
TASKS = 8
THREADS = 4
MODES = ("none", "normal", "off", "full")


def body(n: int) -> dict:
    return {"n": n, "message": "event content", "tags": {"run": "spool"}}


async def measure(events: int, shape: str, queue_size: int, spool: str | None, sync: str) -> dict:
    """One run in this process: a fresh hub, the events put and taken, the spool emptied."""
    import pop.hub

    from evbus.exc import BusFullError

    os.environ["EVBUS_QUEUE_SIZE"] = str(queue_size)
    os.environ["EVBUS_SPOOL_SYNC"] = sync
    os.environ.pop("EVBUS_SPOOL", None)
    if spool:
        os.environ["EVBUS_SPOOL"] = spool
    sys.argv = [sys.argv[0]]
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "spool"}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    queue = await hub.ingress.internal.get("spool")
    put, put_nowait = hub.evbus.broker.put, hub.evbus.broker.put_nowait

    async def consume():
        for _ in range(events):
            await queue.get()

    async def task_producer(numbers: range):
        for n in numbers:
            await put(body=body(n), profile="default")

    def thread_producer(numbers: range):
        for n in numbers:
            while True:
                try:
                    put_nowait(body=body(n), profile="default")
                    break
                except BusFullError:
                    time.sleep(0.0005)

    consumer = asyncio.create_task(consume())
    cpu, started = time.process_time(), time.perf_counter()
    if shape == "one":
        await task_producer(range(events))
    else:
        producers = TASKS + THREADS
        shares = [range(i, events, producers) for i in range(producers)]
        threads = [threading.Thread(target=thread_producer, args=(share,)) for share in shares[TASKS:]]
        for thread in threads:
            thread.start()
        await asyncio.gather(*(task_producer(share) for share in shares[:TASKS]))
        await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    await consumer
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await hub.evbus.init.stop()
    await listener
    stats = hub.evbus.broker.stats()
    if spool and stats["spool_depth"]:
        raise SystemExit(f"the spool was not emptied: {stats['spool_depth']} events left")
    return {"eps": events / elapsed, "cpu_us": cpu / events * 1e6}


def run_worker(args) -> dict:
    """Measure one (shape, mode) in a fresh process."""
    spool = None
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.worker_mode != "none":
            spool = str(pathlib.Path(tmp) / "spool.db")
        sync = args.worker_mode if args.worker_mode != "none" else "normal"
        return asyncio.run(measure(args.events, args.worker_shape, args.queue_size, spool, sync))


def spawn(
    python: str, shape: str, mode: str, events: int, queue_size: int, directory: str | None = None,
    timeout: float = 900,
) -> dict:
    """
    Measure one (shape, mode) in a fresh process of ``python``.

    :param mode: A spool_sync mode, or "none" for the bus without the spool
    :param directory: Where the spool file goes (default: the temporary directory)
    :return: {"eps": events/s, "cpu_us": µs of CPU time per event}
    """
    command = [
        python, str(HERE / "spool.py"), "--worker-shape", shape, "--worker-mode", mode,
        "--events", str(events), "--queue-size", str(queue_size),
    ]
    if directory:
        command += ["--dir", directory]
    # Another evbus runs from outside this tree, so that it imports its own
    cwd = HERE.parent if python == sys.executable else tempfile.gettempdir()
    out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{python} {shape} {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    shapes: list[str],
    modes: list[str],
    events: int,
    rounds: int,
    queue_size: int = 10_000,
    full_events: int = 2_000,
    directory: str | None = None,
    pythons: dict[str, str] | None = None,
    log=None,
) -> dict[tuple[str, str, str, int], list[dict]]:
    """
    Measure the bus without the spool and with it for each mode, for each shape,
    every run in a fresh process, round by round (every other round in reverse order).

    :param modes: spool_sync modes; the bus without the spool ("none") is always measured,
        with ``full_events`` events too when "full" is among them
    :param pythons: {name: python} of the evbus installs to measure the spool of (default: this one)
    :param log: ``log(text)`` for the progress of each run
    :return: {(shape, install name, mode, events): [figures of each round]}; the bus without
        the spool is ("this", "none")
    """
    pythons = pythons or {"this": sys.executable}
    results: dict[tuple[str, str, str, int], list[dict]] = {}
    for round_ in range(rounds):
        for shape in shapes:
            runs = [("this", "none", events)]
            if "full" in modes:
                runs.append(("this", "none", full_events))  # full's baseline: as many events
            runs += [
                (name, mode, full_events if mode == "full" else events)
                for name in pythons for mode in modes if mode != "none"
            ]
            # Every other round in reverse: a machine that slows down or speeds up favours no side
            for name, mode, count in runs if round_ % 2 == 0 else reversed(runs):
                figures = spawn(pythons[name], shape, mode, count, queue_size, directory)
                results.setdefault((shape, name, mode, count), []).append(figures)
                if log is not None:
                    log(
                        f"round {round_ + 1} {shape:4} {name:7} {mode:6} {count:>7,}: "
                        f"{figures['eps']:>9,.0f} events/s {figures['cpu_us']:6.1f} µs CPU/event"
                    )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--full-events", type=int, default=2_000, help="events of the spool_sync full runs")
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", help="where the spool files go (default: the temporary directory)")
    parser.add_argument("--modes", default=",".join(MODES[1:]), help="spool_sync modes to measure")
    parser.add_argument("--shapes", default="one,many")
    parser.add_argument("--compare", metavar="PYTHON", help="also measure the evbus installed for this python")
    parser.add_argument("--worker-shape", help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker_shape:
        print(json.dumps(run_worker(args)))
        return

    shapes = args.shapes.split(",")
    modes = [mode for mode in args.modes.split(",") if mode != "none"]
    pythons = {"this": sys.executable}
    if args.compare:
        pythons["compare"] = args.compare
    results = run(
        shapes, modes, args.events, args.rounds, args.queue_size, args.full_events, args.dir, pythons,
        log=lambda text: print(text, file=sys.stderr),
    )

    print(f"spool on vs off, internal ingress, queue_size {args.queue_size:,}, median of {args.rounds} rounds "
          f"(one: 1 task awaiting each put; many: {TASKS} tasks + {THREADS} threads)")
    if args.compare:
        print(f"compare: {args.compare}")
    print(f"{'producers':9} {'spool_sync':10} {'evbus':7} {'events':>7} {'events/s':>10} {'µs CPU/ev':>9} "
          f"{'no spool':>10} {'µs CPU/ev':>9} {'cost':>7} {'CPU cost':>8}")
    for shape in shapes:
        for mode in modes:
            events = args.full_events if mode == "full" else args.events
            off = results[(shape, "this", "none", events)]
            for name in pythons:
                on = results[(shape, name, mode, events)]
                cost = statistics.median(base["eps"] / mine["eps"] for base, mine in zip(off, on))
                cpu_cost = statistics.median(mine["cpu_us"] / base["cpu_us"] for base, mine in zip(off, on))
                print(
                    f"{shape:9} {mode:10} {name:7} {events:>7,} {statistics.median(r['eps'] for r in on):>10,.0f} "
                    f"{statistics.median(r['cpu_us'] for r in on):>9.1f} "
                    f"{statistics.median(r['eps'] for r in off):>10,.0f} "
                    f"{statistics.median(r['cpu_us'] for r in off):>9.1f} {cost:>6.2f}x {cpu_cost:>7.2f}x"
                )
    print("cost: events/s of the bus without the spool / with it; CPU cost: CPU time per event with it / without;")
    print("both paired within a round (target: at most 1.5x)")


if __name__ == "__main__":
    main()
