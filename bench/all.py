"""
Every benchmark of evbus in one run, and one table of their figures and ratios.

    python bench/all.py [--rounds 5] [--quick] [--skip SECTION,...]
    python -m bench      (the same)

Sections, each in the way of its own script (which runs on its own too):

- ``internal`` (``bench/internal.py``): put -> arrival on the internal
  ingress, events/s and CPU time per event, next to pop-evbus 7.0.1 (its own
  virtual environment, built when missing) and to a raw one-hop relay; the
  p50 latency of single events next to pop-evbus's;
- ``brokers`` (``bench/brokers.py``): each broker through evbus next to its
  raw client in the same round, events/s until every event is confirmed,
  and the CPU time per event of each side;
- ``spool`` and ``producers`` (``bench/spool.py``, ``bench/producers.py``):
  the bus with the spool on (``spool_sync`` normal) next to off, with one
  task putting, and with 8 tasks and 4 threads putting at once, next to one
  task, spool off and on.

Every ratio is paired: taken within a round, where both sides ran back to
back, and the median over the rounds is printed (the machine's noise hits
both sides of a pair alike); events/s and CPU time are medians too. A
section that cannot run (a broker that is down, pop-evbus that cannot be
installed, a run that failed or timed out) is a row that says so; every run
has a time limit, so the whole is bounded (about 10 minutes with the
defaults on a busy 2-core machine, 3 with ``--quick``).
"""
import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import brokers  # noqa: E402
import internal  # noqa: E402
import producers  # noqa: E402
import spool  # noqa: E402

SECTIONS = ("internal", "upstream", "brokers", "spool")
# What each broker's raw client is
# What each figure of bench/brokers.py compares evbus with
RAW_CLIENTS = {
    "rabbitmq": "aio-pika",
    "kafka": "aiokafka, per event",
    "kafka backlog": "aiokafka, a backlog",
    "nats": "nats-py JetStream",
    "nats headers": "nats-py, evbus's headers",
    "redis": "redis-py",
    "mqtt": "aiomqtt QoS 1",
}
# (events of the internal runs, latency samples, events of a broker pair, events of a spool run)
SIZES = {"default": (100_000, 2_000, 20_000, 200_000), "quick": (20_000, 500, 3_000, 20_000)}


class Table:
    """The rows of the summary: a figure of evbus, one of what it is measured against, their ratio."""

    def __init__(self):
        self.rows: list[tuple[str, ...]] = []

    def add(
        self,
        measure: str,
        mine: str,
        other: str,
        ratio: str,
        target: str = "",
        cpu: str = "",
        other_cpu: str = "",
    ):
        self.rows.append((measure, mine, other, ratio, target, cpu, other_cpu))

    def missing(self, measure: str, reason: str):
        """A measure that was not taken, and why."""
        self.rows.append((measure, f"not measured: {reason}"))

    def render(self) -> str:
        header = ("measure", "evbus", "against", "ratio", "target", "µs CPU/ev", "against")
        full = [row for row in self.rows if len(row) == len(header)]
        widths = [max(len(row[i]) for row in [header] + full) for i in range(len(header))]
        right = {1, 2, 3, 5, 6}

        def line(row):
            cells = [
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("=" * w for w in widths)
        out = [rule, line(header), rule]
        for row in self.rows:
            out.append(line(row) if len(row) == len(header) else f"{row[0].ljust(widths[0])}  {row[1]}")
        out.append(rule)
        return "\n".join(out)


def rate(eps: float) -> str:
    return f"{eps:,.0f}/s"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x"


def micros(value: float) -> str:
    return f"{value:.1f}"


def log(text: str):
    print(text, file=sys.stderr, flush=True)


def internal_rows(table: Table, events: int, latency: int, rounds: int, upstream: bool):
    try:
        results = internal.run(events, latency, rounds, upstream=upstream, log=log)
    except Exception as e:  # noqa: BLE001 - the other sections go on
        if upstream:
            log(f"internal with pop-evbus failed ({e}); again without it")
            table.missing("internal vs pop-evbus 7.0.1", _first_line(e))
            internal_rows(table, events, latency, rounds, upstream=False)
            return
        table.missing("internal vs raw relay", _first_line(e))
        return
    mine = internal.median(results, "evbus", "eps")
    mine_cpu = micros(internal.median(results, "evbus", "cpu_us"))
    if "upstream" in results:
        table.add(
            "internal vs pop-evbus 7.0.1",
            rate(mine),
            rate(internal.median(results, "upstream", "eps")),
            times(internal.paired(results, "evbus", "upstream", "eps")),
            ">= 12x",
            mine_cpu,
            micros(internal.median(results, "upstream", "cpu_us")),
        )
        table.add(
            "internal p50 latency vs pop-evbus",
            f"{internal.median(results, 'evbus', 'p50') * 1e6:.1f} µs",
            f"{internal.median(results, 'upstream', 'p50') * 1e6:.1f} µs",
            times(internal.paired(results, "evbus", "upstream", "p50")),
            "<= 0.5x",
        )
    table.add(
        "internal vs raw relay",
        rate(mine),
        rate(internal.median(results, "relay", "eps")),
        times(internal.paired(results, "evbus", "relay", "eps")),
        ">= 0.5x",
        mine_cpu,
        micros(internal.median(results, "relay", "cpu_us")),
    )


def broker_rows(table: Table, events: int, rounds: int):
    try:
        results = brokers.run(brokers.BROKERS, events, rounds, log=log)
    except Exception as e:  # noqa: BLE001
        table.missing("brokers", _first_line(e))
        return
    for name in [figure for broker in brokers.BROKERS for figure in brokers.FIGURES[broker]]:
        measure = f"{name} vs {RAW_CLIENTS[name]}"
        pairs = results.get(name, "not run")
        if isinstance(pairs, str):
            table.missing(measure, pairs)
            continue
        m = brokers.summary(pairs)
        table.add(
            measure,
            rate(m["evbus"]),
            rate(m["raw"]),
            times(m["ratio"]),
            brokers.TARGETS[name],
            micros(m["evbus_cpu_us"]),
            micros(m["raw_cpu_us"]),
        )


def spool_rows(table: Table, events: int, rounds: int):
    try:
        results = producers.run(events, rounds, log=log)
    except Exception as e:  # noqa: BLE001
        table.missing("spool and producers", _first_line(e))
        return
    for shape, label in (("one", "one producer"), ("many", f"{spool.TASKS} tasks + {spool.THREADS} threads")):
        off, on = results["none"][shape], results["normal"][shape]
        table.add(
            f"spool on vs off, {label}",
            rate(statistics.median(r["eps"] for r in on)),
            rate(statistics.median(r["eps"] for r in off)),
            times(statistics.median(a["eps"] / b["eps"] for a, b in zip(on, off))),
            ">= 0.67x",
            micros(statistics.median(r["cpu_us"] for r in on)),
            micros(statistics.median(r["cpu_us"] for r in off)),
        )
    for mode, label in (("none", "spool off"), ("normal", "spool on")):
        m = producers.summary(results[mode])
        table.add(
            f"many producers vs one, {label}",
            rate(m["many"]),
            rate(m["one"]),
            times(m["ratio"]),
            f">= {producers.TARGET}x",
            micros(m["many_cpu_us"]),
            micros(m["one_cpu_us"]),
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every measure (medians of them)")
    parser.add_argument("--quick", action="store_true", help="fewer events per run (a smoke run, noisier)")
    parser.add_argument(
        "--skip", default="", help=f"sections left out, comma-separated: {', '.join(SECTIONS)} (the table says so)"
    )
    args = parser.parse_args()
    skip = {name for name in args.skip.split(",") if name}
    unknown = skip - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    internal_events, latency, broker_events, spool_events = SIZES["quick" if args.quick else "default"]

    started = time.monotonic()
    table = Table()
    if "internal" in skip:
        table.missing("internal", "skipped (--skip internal)")
    else:
        if "upstream" in skip:
            table.missing("internal vs pop-evbus 7.0.1", "skipped (--skip upstream)")
        internal_rows(table, internal_events, latency, args.rounds, upstream="upstream" not in skip)
    if "brokers" in skip:
        table.missing("brokers", "skipped (--skip brokers)")
    else:
        broker_rows(table, broker_events, args.rounds)
    if "spool" in skip:
        table.missing("spool and producers", "skipped (--skip spool)")
    else:
        spool_rows(table, spool_events, args.rounds)
    minutes = (time.monotonic() - started) / 60

    print(
        f"evbus benchmarks, {datetime.date.today()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, median of {args.rounds} rounds, {minutes:.1f} min"
    )
    print(
        f"events per run: internal {internal_events:,}, broker {broker_events:,}, spool {spool_events:,}; "
        "µs CPU/ev: process CPU time per event"
    )
    print(table.render())


if __name__ == "__main__":
    main()
