"""
Soak: a long stream through the internal ingress with a bounded queue.

    python bench/soak.py [--events 1000000] [--queue-size 10000] [--spool-sync normal]

events/s for ``--events`` events put with ``await put()`` into a bounded
broker queue (config ``queue_size``) while a consumer takes them off the
internal queue; the resident set size (RSS) is sampled every tenth of the
way: it must stay flat, not grow with the count. Then the same with the
durable spool on (``--spool-sync``; ``none`` to skip it): its file is mapped
into memory, and its compaction must keep both the file and the RSS bounded.

The cost of the spool (on vs off, one producer and many) is measured by
``bench/spool.py``.
"""
import argparse
import asyncio
import os
import pathlib
import resource
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


def report(label: str, events: int, queue_size: int, eps: float, rss: list[float]):
    print(f"{label}: {events:,} events, queue_size {queue_size:,}: {eps:,.0f} events/s")
    print("RSS MiB every tenth: " + " ".join(f"{r:.1f}" for r in rss))
    print(f"RSS from the first tenth to the end: {rss[-1] - rss[1]:+.1f} MiB; peak {max(rss):.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--spool-sync", default="normal", choices=["normal", "full", "off", "none"])
    args = parser.parse_args()

    eps, rss = asyncio.run(run(args.events, args.queue_size, None))
    report("soak", args.events, args.queue_size, eps, rss)
    if args.spool_sync != "none":
        with tempfile.TemporaryDirectory() as tmp:
            spool = str(pathlib.Path(tmp) / "spool")
            eps, rss = asyncio.run(run(args.events, args.queue_size, spool, args.spool_sync))
            report(f"soak with the spool (spool_sync {args.spool_sync})", args.events, args.queue_size, eps, rss)
    print(f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
