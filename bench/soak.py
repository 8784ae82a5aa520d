"""
Soak: a long stream through the internal ingress with a bounded queue, and
the cost of the durable spool.

    python bench/soak.py [--events 1000000] [--queue-size 10000] [--spool-events 100000] [--rounds 3]

- events/s for ``--events`` events put with ``await put()`` into a bounded
  broker queue (config ``queue_size``) while a consumer takes them off the
  internal queue; the resident set size (RSS) is sampled every tenth of the
  way: it must stay flat, not grow with the count;
- events/s with the spool (SQLite, WAL) on next to off, in the same process,
  round by round, for ``spool_sync`` normal and off (target: spool on costs
  at most 3x), median of the paired ratios. ``put`` is awaited one event at
  a time, so every event is its own transaction.
"""
import argparse
import asyncio
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time


def rss_mib() -> float:
    """The current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def body(n: int) -> dict:
    return {"n": n, "message": "event content", "tags": {"run": "soak"}}


async def run(
    events: int, queue_size: int, spool: str | None, sync: str = "normal", samples: int = 10
) -> tuple[float, list[float]]:
    import pop.hub

    os.environ["EVBUS_QUEUE_SIZE"] = str(queue_size)
    os.environ.pop("EVBUS_SPOOL", None)
    os.environ["EVBUS_SPOOL_SYNC"] = sync
    if spool:
        os.environ["EVBUS_SPOOL"] = spool
    sys.argv = [sys.argv[0]]
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "soak"}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    queue = await hub.ingress.internal.get("soak")

    async def consume():
        for _ in range(events):
            await queue.get()

    consumer = asyncio.create_task(consume())
    put = hub.evbus.broker.put
    rss = [rss_mib()]
    step = max(1, events // samples)
    started = time.perf_counter()
    for n in range(events):
        await put(body=body(n), profile="default")
        if n % step == step - 1:
            rss.append(rss_mib())
            await asyncio.sleep(0)
    await consumer
    elapsed = time.perf_counter() - started
    await hub.evbus.init.stop()
    await listener
    if spool and hub.evbus.broker.stats()["spool_depth"]:
        raise SystemExit("the spool was not emptied")
    return events / elapsed, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--spool-events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    eps, rss = asyncio.run(run(args.events, args.queue_size, None))
    print(f"soak: {args.events:,} events, queue_size {args.queue_size:,}: {eps:,.0f} events/s")
    print("RSS MiB every tenth: " + " ".join(f"{r:.1f}" for r in rss))
    growth = rss[-1] - rss[1]
    print(f"RSS from the first tenth to the end: {growth:+.1f} MiB; peak {max(rss):.1f} MiB "
          f"(ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB)")

    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("normal", "off"):
            pairs = []
            for round_ in range(args.rounds):
                spool = str(pathlib.Path(tmp) / f"spool-{sync}-{round_}.db")
                off, _ = asyncio.run(run(args.spool_events, args.queue_size, None))
                on, _ = asyncio.run(run(args.spool_events, args.queue_size, spool, sync))
                pairs.append((off, on))
                print(f"round {round_ + 1} spool_sync {sync}: spool off {off:,.0f}/s, on {on:,.0f}/s", file=sys.stderr)
            off = statistics.median(p[0] for p in pairs)
            on = statistics.median(p[1] for p in pairs)
            cost = statistics.median(p[0] / p[1] for p in pairs)
            print(
                f"spool (spool_sync {sync}), {args.spool_events:,} events: off {off:,.0f}/s, on {on:,.0f}/s: "
                f"on costs {cost:.2f}x (target: at most 3x)"
            )

if __name__ == "__main__":
    main()
