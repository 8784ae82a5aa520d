"""Nothing lost: a bounded queue with backpressure, bounded lanes, dead letters and their replay."""
import asyncio
import json
import queue
import threading

import pytest

from evbus.exc import BusClosedError
from evbus.exc import BusFullError
from tests.conftest import add_ingress
from tests.conftest import take_json
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def configure(hub, monkeypatch, **options):
    for name, value in options.items():
        monkeypatch.setenv(f"EVBUS_{name.upper()}", str(value))
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)


async def test_full_queue_put_nowait_raises_and_nothing_is_half_queued(hub, monkeypatch):
    configure(hub, monkeypatch, queue_size=3)
    for n in range(3):
        hub.evbus.broker.put_nowait(body=n)
    with pytest.raises(BusFullError) as info:
        hub.evbus.broker.put_nowait(body="too many")
    assert isinstance(info.value, queue.Full) and isinstance(info.value, asyncio.QueueFull)
    assert "queue_size" in str(info.value)
    await hub.evbus.broker.init()  # the loop's queue keeps the bound
    with pytest.raises(asyncio.QueueFull):
        hub.evbus.broker.put_nowait(body="too many")
    assert hub.evbus.BUS.qsize() == 3
    assert hub.evbus.broker.stats()["put"] == 3


async def test_full_queue_put_waits_for_room(hub, running, monkeypatch):
    configure(hub, monkeypatch, queue_size=2)
    hub.evbus.broker.put_nowait(body=0)
    hub.evbus.broker.put_nowait(body=1)
    await hub.evbus.broker.init()
    waiting = asyncio.create_task(hub.evbus.broker.put(body=2))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # backpressure: no room until the listener takes events
    await running({"internal": {"default": {}}})
    await asyncio.wait_for(waiting, 5)
    for n in range(3, 200):
        await hub.evbus.broker.put(body=n)
    assert await take_json(await hub.ingress.internal.get(), 200) == list(range(200))


async def test_a_put_cancelled_while_it_waits_for_room_is_not_counted(hub, running, monkeypatch):
    configure(hub, monkeypatch, queue_size=1)
    await hub.evbus.broker.put(body=0)
    waiting = asyncio.create_task(hub.evbus.broker.put(body=1))
    await asyncio.sleep(0)  # one turn: the task runs until it waits for room on the full queue
    assert not waiting.done()
    waiting.cancel()
    await asyncio.wait([waiting], timeout=5)
    assert waiting.cancelled()
    assert hub.evbus.broker.stats()["put"] == 1
    await running({"internal": {"default": {}}})
    await hub.evbus.broker.put(body=2)
    assert await take_json(await hub.ingress.internal.get(), 2) == [0, 2]
    assert hub.evbus.broker.stats()["put"] == 2


async def test_bounded_queue_from_threads_loses_nothing_it_accepted(hub, running, monkeypatch):
    configure(hub, monkeypatch, queue_size=50)
    await running({"internal": {"*": {}}})
    accepted, refused = [], []

    def produce(name):
        for n in range(2000):
            try:
                hub.evbus.broker.put_nowait(body=[name, n], profile="t")
                accepted.append((name, n))
            except BusFullError:
                refused.append((name, n))

    threads = [threading.Thread(target=produce, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    arrived = await take_json(await hub.ingress.internal.get(), len(accepted))
    assert sorted(map(tuple, arrived)) == sorted(accepted)
    assert len(accepted) + len(refused) == 6000


@pytest.mark.parametrize("spool_sync", [None, "normal", "full"])
async def test_threads_putting_while_the_bus_stops_lose_nothing_accepted(hub, running, monkeypatch, tmp_path, spool_sync):
    """Every put_nowait that returned is delivered before stop() returns; the puts after it are refused."""
    options = {"spool": tmp_path / "spool", "spool_sync": spool_sync} if spool_sync else {}
    configure(hub, monkeypatch, **options)
    await running({"internal": {"*": {}}})
    accepted, refused = [], []
    going = threading.Event()

    def produce(name):
        for n in range(10**6):
            try:
                hub.evbus.broker.put_nowait(body=[name, n], profile="t")
            except BusClosedError:
                refused.append(name)
                return
            accepted.append((name, n))
            if n == 100:
                going.set()

    threads = [threading.Thread(target=produce, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, going.wait, 30)
        assert await hub.evbus.init.stop(timeout=30) == 0
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join(30) for t in threads])
    assert sorted(refused) == ["t0", "t1", "t2", "t3"]
    stats = hub.evbus.broker.stats()
    assert stats["queue_depth"] == 0, f"{stats['queue_depth']} accepted event(s) left on the bus after stop()"
    arrived = await take_json(await hub.ingress.internal.get(), len(accepted))
    assert sorted(map(tuple, arrived)) == sorted(accepted)
    assert stats["put"] == len(accepted)
    if spool_sync:
        assert stats["spool_depth"] == 0


async def test_full_lane_waits(hub, running, monkeypatch):
    """lane_full: wait — the listener waits for room; every event arrives, in order."""
    add_ingress(hub, "slow")
    configure(hub, monkeypatch, lane_size=5, queue_size=5)
    await running({"slow": {"default": {"delay": 0.002}}})
    for n in range(60):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    assert [json.loads(b) for _, b in hub.ingress.slow.SEEN] == list(range(60))
    assert hub.evbus.deadletter.read() == []


async def test_full_lane_dead_letters_the_oldest(hub, running, monkeypatch, error_sink):
    add_ingress(hub, "slow")
    configure(hub, monkeypatch, lane_size=5, lane_full="dead-letter")
    await running({"slow": {"default": {"delay": 0.01}}, "internal": {"default": {}}})
    for n in range(50):
        await hub.evbus.broker.put(body=n)
    # the internal lane does not wait for the slow one
    assert await take_json(await hub.ingress.internal.get(), 50, timeout=5) == list(range(50))
    await hub.evbus.init.stop()
    seen = [json.loads(b) for _, b in hub.ingress.slow.SEEN]
    dropped = [json.loads(d["body"]) for d in hub.evbus.deadletter.read()]
    assert dropped and sorted(seen + dropped) == list(range(50))
    assert seen == sorted(seen)
    assert all("LaneFullError" in d["error"] for d in hub.evbus.deadletter.read())
    assert len(error_sink) == len(dropped)
    # dropped before any attempt, and counted so
    assert {d["attempts"] for d in hub.evbus.deadletter.read()} == {0}


async def test_never_up_destination_dead_letters_everything_then_replay(hub, running, monkeypatch):
    """A broker that never comes up: every event is dead-lettered; replay delivers them once it is up."""
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 10**6
    contexts = await running({"flaky": {"default": {}, "other": {}}, "internal": {"default": {}}})
    for n in range(100):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    dead = hub.evbus.deadletter.read()
    assert sorted((json.loads(d["body"]), d["acct_profile"]) for d in dead) == sorted(
        (n, "default") for n in range(100)
    )
    assert hub.ingress.flaky.SEEN == []

    hub.ingress.flaky.FAIL_NEXT = 0  # the broker is up
    counts = await hub.evbus.deadletter.replay(contexts, plugin="flaky")
    assert counts == {"replayed": 100, "delivered": 100, "failed": 0, "no_destination": 0}
    assert [json.loads(b) for b in hub.ingress.flaky.SEEN] == list(range(100))
    assert hub.evbus.deadletter.read() == []
    await hub.evbus.shutdown.close(timeout=5)


async def test_replay_keeps_what_fails_again_and_what_has_no_destination(hub, running, monkeypatch):
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 10**6
    contexts = await running({"flaky": {"a": {}, "b": {}}})
    await hub.evbus.broker.put(body="x", profile="a")
    await hub.evbus.broker.put(body="y", profile="b")
    await hub.evbus.init.stop()
    assert sorted(d["acct_profile"] for d in hub.evbus.deadletter.read()) == ["a", "b"]
    only_a = await hub.evbus.acct.profiles(acct_data={"flaky": {"a": {}}})
    counts = await hub.evbus.deadletter.replay(only_a)  # still failing
    assert counts == {"replayed": 1, "delivered": 0, "failed": 1, "no_destination": 1}
    left = hub.evbus.deadletter.read()
    assert sorted(d["acct_profile"] for d in left) == ["a", "b"]
    hub.ingress.flaky.FAIL_NEXT = 0
    counts = await hub.evbus.deadletter.replay(contexts, acct_profile="b")
    assert counts["delivered"] == 1
    assert [d["acct_profile"] for d in hub.evbus.deadletter.read()] == ["a"]
    await hub.evbus.shutdown.close(timeout=5)


async def test_replay_delivers_the_records_and_leaves_lines_that_are_none(hub, running):
    """Lines that are no whole dead letter (a body of null, base64 that is none, no id) stay; the others go."""
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 10**6
    contexts = await running({"flaky": {"default": {}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.broker.put(body=2)
    await hub.evbus.init.stop()
    path = hub.evbus.deadletter.store().path
    first, second = path.read_text().splitlines()
    bad = [
        json.dumps({"id": "x", "body": None, "plugin": "flaky", "acct_profile": "default"}),
        json.dumps({"id": "y", "body": "%%%", "body_encoding": "base64", "plugin": "flaky", "acct_profile": "default"}),
        json.dumps({"body": "3", "plugin": "flaky", "acct_profile": "default"}),
    ]
    path.write_text("\n".join([first, *bad, second]) + "\n")
    hub.ingress.flaky.FAIL_NEXT = 0
    counts = await hub.evbus.deadletter.replay(contexts)
    assert counts == {"replayed": 2, "delivered": 2, "failed": 0, "no_destination": 0}
    assert [json.loads(b) for b in hub.ingress.flaky.SEEN] == [1, 2]
    assert path.read_text() == "\n".join(bad) + "\n"
    assert hub.evbus.deadletter.store().unreadable() == 3
    await hub.evbus.shutdown.close(timeout=5)


async def test_stop_timeout_dead_letters_what_is_left(hub, running):
    add_ingress(hub, "hang")
    await running({"hang": {"default": {}}})
    for n in range(3):
        await hub.evbus.broker.put(body=n)
    assert await hub.evbus.init.stop(timeout=0.2) == 3
    dead = hub.evbus.deadletter.read()
    assert [json.loads(d["body"]) for d in dead] == [0, 1, 2]
    assert all("stop timeout" in d["error"] for d in dead)


async def test_dead_letter_keeps_binary_bodies_exactly(hub, running):
    add_ingress(hub, "flaky")
    hub.serialize.PLUGIN = "msgpack"
    hub.ingress.flaky.FAIL_NEXT = 10**6
    contexts = await running({"flaky": {"default": {}}})
    body = {"bin": b"\x00\xff\xfe", "n": 1}
    await hub.evbus.broker.put(body=body)
    await hub.evbus.init.stop()
    [dead] = hub.evbus.deadletter.read()
    assert dead["body_encoding"] == "base64" and dead["content_type"] == "application/msgpack"
    hub.ingress.flaky.FAIL_NEXT = 0
    await hub.evbus.deadletter.replay(contexts)
    import msgpack

    assert [msgpack.unpackb(b) for b in hub.ingress.flaky.SEEN] == [body]
    await hub.evbus.shutdown.close(timeout=5)


async def test_bad_lanes_do_not_hold_up_the_others(hub, running, monkeypatch):
    """A plugin that raises on every call, one that hangs, one that is slow: internal gets everything at once."""
    add_ingress(hub, "failing", "hang", "slow")
    configure(hub, monkeypatch, publish_timeout=30)
    await running(
        {
            "internal": {"*": {}},
            "failing": {"*": {}},
            "hang": {"*": {}},
            "slow": {"*": {"delay": 0.5}},
        }
    )
    for n in range(1000):
        await hub.evbus.broker.put(body=n, profile="any")
    assert await take_json(await hub.ingress.internal.get(), 1000, timeout=10) == list(range(1000))
    lanes = {lane["plugin"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    # while internal delivered all 1000, the others were still at their first events
    assert lanes["internal"]["published"] == 1000
    assert lanes["hang"]["published"] == 0 and lanes["hang"]["depth"] == 1000
    assert lanes["slow"]["published"] <= 20
    # the failing lane fails on its own: down, dead-lettering, without touching the rest
    await wait_for(
        lambda: any(lane["plugin"] == "failing" and lane["down"] for lane in hub.evbus.broker.stats()["lanes"]),
        10,
        "the failing lane marked down",
    )
    await hub.evbus.init.stop(timeout=0.5)
