"""
Many producers against one: events/s through the internal ingress with 8
asyncio tasks and 4 threads putting at once, next to one task, in the same
rounds, with the spool off and on.

    python bench/producers.py [--events 50000] [--rounds 3] [--queue-size 10000] [--spool-sync normal]

The tasks await ``hub.evbus.broker.put``; the threads call
``hub.evbus.broker.put_nowait``, the bus's entry for other threads (it takes
the broker state's lock, and hands the event to the loop with the others
that threads put before the loop runs again), and wait a little and try
again when the bounded queue is full. Every run is a fresh process; the
runs and their figures are those of ``bench/spool.py`` (shapes ``one`` and
``many``), and the ratio many / one is paired within a round, the median
printed (target: at least 0.8x).
"""
import argparse
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import spool  # noqa: E402

TARGET = 0.8


def run(
    events: int, rounds: int, queue_size: int = 10_000, spool_sync: str | None = "normal", log=None
) -> dict[str, dict[str, list[dict]]]:
    """
    :param spool_sync: The spool's sync mode for the runs with the spool; None: without the spool only
    :return: {spool mode ("none" or spool_sync): {"one": [figures...], "many": [figures...]}}
    """
    modes = [spool_sync] if spool_sync else []
    results = spool.run(["one", "many"], modes, events, rounds, queue_size, log=log)
    return {
        mode: {shape: results[(shape, "this", mode, events)] for shape in ("one", "many")}
        for mode in ["none"] + modes
    }


def summary(shapes: dict[str, list[dict]]) -> dict[str, float]:
    """:return: Medians over the rounds: events/s and CPU µs/event of one and many; the paired ratio"""
    one, many = shapes["one"], shapes["many"]
    return {
        "one": statistics.median(r["eps"] for r in one),
        "many": statistics.median(r["eps"] for r in many),
        "ratio": statistics.median(m["eps"] / o["eps"] for o, m in zip(one, many)),
        "one_cpu_us": statistics.median(r["cpu_us"] for r in one),
        "many_cpu_us": statistics.median(r["cpu_us"] for r in many),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument(
        "--spool-sync", default="normal", choices=["normal", "off", "full", "none"],
        help="spool_sync of the runs with the spool; none: without the spool only",
    )
    args = parser.parse_args()
    results = run(
        args.events, args.rounds, args.queue_size, None if args.spool_sync == "none" else args.spool_sync,
        log=lambda text: print(text, file=sys.stderr),
    )
    print(
        f"{spool.TASKS} tasks + {spool.THREADS} threads putting at once vs one task, internal ingress, "
        f"{args.events:,} events, queue_size {args.queue_size:,}, median of {args.rounds} rounds"
    )
    print(f"{'spool':8} {'one/s':>10} {'many/s':>10} {'ratio':>7} {'µs CPU/ev one':>14} {'many':>6}  target")
    for mode, shapes in results.items():
        m = summary(shapes)
        print(
            f"{mode:8} {m['one']:>10,.0f} {m['many']:>10,.0f} {m['ratio']:>6.2f}x "
            f"{m['one_cpu_us']:>14.1f} {m['many_cpu_us']:>6.1f}  >= {TARGET}x"
        )


if __name__ == "__main__":
    main()
