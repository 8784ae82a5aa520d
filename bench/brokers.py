"""
Publisher-side figures of the broker ingresses: events/s from the first put
until every event is confirmed by the broker, through evbus and through the
raw client library in the same run.

    python bench/brokers.py [--events 20000] [--rounds 3] [--only rabbitmq|kafka]

- RabbitMQ (127.0.0.1:5672): evbus's pika ingress (publisher confirms) next to
  aio-pika on one connection with confirms and up to 500 publishes in flight.
- Kafka (a Tansu broker this script starts on a free loopback port): evbus's
  kafka ingress next to aiokafka with the same ``acks``, ``send()`` for all,
  then all awaited.

Each round runs every pair back to back; the ratio is taken within the round
and the median of the ratios is printed (the machine's noise hits both sides
of a pair alike).
"""
import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ACKS = 1


def body(n: int) -> dict:
    return {"n": n, "message": "event content", "tags": {"run": "bench"}}


async def evbus_run(acct_data: dict, events: int) -> float:
    """events/s through evbus: puts until the lane counted every event published (confirmed)."""
    import pop.hub

    sys.argv = [sys.argv[0]]
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join()
    [lane] = hub.evbus.route.all_lanes()
    # connected before the clock starts, as the raw clients are
    while lane.destination.open is not None and not _connected(hub):
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    for n in range(events):
        await hub.evbus.broker.put(body=body(n), profile="default")
    while lane.published + lane.failed < events:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    await hub.evbus.init.stop()
    await listener
    if lane.failed:
        raise SystemExit(f"evbus failed {lane.failed} events")
    return events / elapsed


def _connected(hub) -> bool:
    pika = getattr(hub.ingress.pika, "PUBLISHERS", {})
    kafka = getattr(hub.ingress.kafka, "PRODUCERS", {})
    return any(p.raw_channel is not None for p in pika.values()) or any(p.producer is not None for p in kafka.values())


async def raw_pika(queue: str, events: int) -> float:
    """aio-pika, one connection, publisher confirms, up to 500 publishes in flight."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange
    in_flight = asyncio.Semaphore(500)

    async def publish(n: int):
        try:
            await exchange.publish(aio_pika.Message(json.dumps(body(n)).encode()), routing_key=queue)
        finally:
            in_flight.release()

    started = time.perf_counter()
    tasks = []
    for n in range(events):
        await in_flight.acquire()
        tasks.append(asyncio.create_task(publish(n)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await connection.close()
    return events / elapsed


async def raw_kafka(bootstrap: str, topic: str, events: int) -> float:
    """aiokafka with the same acks: send() for all, then await all."""
    import aiokafka

    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks=ACKS)
    await producer.start()
    started = time.perf_counter()
    futures = [await producer.send(topic, value=json.dumps(body(n)).encode(), key=b"k") for n in range(events)]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await producer.stop()
    return events / elapsed


async def rabbitmq_pair(events: int) -> tuple[float, float]:
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


async def kafka_pair(bootstrap: str, events: int) -> tuple[float, float]:
    topic = f"evbus-bench-{uuid.uuid4().hex[:8]}"
    raw = await raw_kafka(bootstrap, topic + "-raw", events)
    mine = await evbus_run(
        {
            "kafka": {
                "default": {
                    "topics": [topic],
                    "key": "k",
                    "connection": {"bootstrap_servers": bootstrap, "acks": ACKS},
                }
            }
        },
        events,
    )
    return mine, raw


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["rabbitmq", "kafka"])
    args = parser.parse_args()

    from tests.brokers import Tansu
    from tests.brokers import _tansu_binary

    results: dict[str, list[tuple[float, float]]] = {}
    tansu = None
    if args.only != "rabbitmq":
        tansu = Tansu(_tansu_binary())
        tansu.start()
    try:
        for round_ in range(args.rounds):
            if args.only != "kafka":
                results.setdefault("rabbitmq", []).append(asyncio.run(rabbitmq_pair(args.events)))
            if tansu is not None:
                results.setdefault("kafka", []).append(asyncio.run(kafka_pair(tansu.bootstrap, args.events)))
            for name, pairs in results.items():
                mine, raw = pairs[-1]
                print(f"round {round_ + 1} {name}: evbus {mine:,.0f}/s raw {raw:,.0f}/s", file=sys.stderr)
    finally:
        if tansu is not None:
            tansu.kill()

    print(f"publisher side, {args.events:,} events, first put until all confirmed, median of {args.rounds} rounds")
    print(f"{'broker':10} {'evbus/s':>10} {'raw/s':>10} {'ratio':>7}  target")
    targets = {"rabbitmq": ">= 1.0x (aim 1.4x)", "kafka": ">= 0.7x"}
    for name, pairs in results.items():
        mine = statistics.median(m for m, _ in pairs)
        raw = statistics.median(r for _, r in pairs)
        ratio = statistics.median(m / r for m, r in pairs)
        print(f"{name:10} {mine:>10,.0f} {raw:>10,.0f} {ratio:>6.2f}x  {targets[name]}")


if __name__ == "__main__":
    main()
