"""
The whole path on the internal ingress: put -> serialize -> broker queue ->
listener -> lanes -> publish, with both call generations of pop-evbus.
"""
import asyncio
import json
import threading
import time

import pytest

from evbus import report as report_module
from evbus.exc import BusClosedError
from evbus.exc import EvbusError
from evbus.lane import CLOSE_GRACE
from tests.conftest import add_ingress
from tests.conftest import take
from tests.conftest import take_json
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


async def test_seed_call_style(hub, running):
    """put(routing_key, body, profile), positional and keyword, as pop-evbus 5.x documents."""
    await running({"internal": {"default": {}}})
    await hub.evbus.broker.put("channel", {"message": "event content"}, "default")
    await hub.evbus.broker.put(routing_key="channel", body={"n": 2}, profile="default")
    hub.evbus.broker.put_nowait("channel", {"n": 3})
    queue = await hub.ingress.internal.get("channel")
    assert await take_json(queue, 3) == [{"message": "event content"}, {"n": 2}, {"n": 3}]


async def test_modern_call_style_takes_routing_key_from_profile(hub, running):
    """put(body=..., profile=...) as pop-evbus 6.x/7.x and idem call it."""
    await running({"internal": {"idem-*": {"routing_key": "idem-events"}}})
    await hub.evbus.broker.put(body={"a": 1}, profile="idem-run")
    hub.evbus.broker.put_nowait(profile="idem-state", body={"b": 2})
    queue = await hub.ingress.internal.get("idem-events")
    assert await take_json(queue, 2) == [{"a": 1}, {"b": 2}]


async def test_event_routing_key_wins_over_profile(hub, running):
    await running({"internal": {"default": {"routing_key": "from-profile"}}})
    await hub.evbus.broker.put(routing_key="from-event", body=1)
    await hub.evbus.broker.put(body=2)
    assert await take_json(await hub.ingress.internal.get("from-event"), 1) == [1]
    assert await take_json(await hub.ingress.internal.get("from-profile"), 1) == [2]


async def test_no_routing_key_anywhere_uses_the_none_queue(hub, running):
    await running({"internal": {"default": None}})
    await hub.evbus.broker.put(body="x")
    assert await take_json(await hub.ingress.internal.get(), 1) == ["x"]


async def test_events_put_before_any_loop_are_delivered_in_order(hub):
    # put_nowait before init(): the thread-safe queue holds them
    for n in range(5):
        hub.evbus.broker.put_nowait(body=n)
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    assert await take_json(await hub.ingress.internal.get(), 5) == [0, 1, 2, 3, 4]
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 5)


async def test_profile_patterns_fan_out(hub, running):
    await running(
        {
            "internal": [
                {"default": {"routing_key": "a"}},
                {"idem-*": {"routing_key": "b"}, "*": {"routing_key": "c"}},
            ]
        }
    )
    await hub.evbus.broker.put(body="for-default", profile="default")
    await hub.evbus.broker.put(body="for-idem", profile="idem-run")
    assert await take_json(await hub.ingress.internal.get("a"), 1) == ["for-default"]
    assert await take_json(await hub.ingress.internal.get("b"), 1) == ["for-idem"]
    assert await take_json(await hub.ingress.internal.get("c"), 2) == ["for-default", "for-idem"]


# idem's profiles across brokers that are not there: evbus.testing captures what each would get
IDEM_PROFILES = {
    "kafka": {"idem-state": {"topics": ["states"], "connection": {"bootstrap_servers": "127.0.0.1:1"}}},
    "pika": {"idem-*": {"routing_key": "idem", "connection": {"url": "amqp://127.0.0.1:1/"}}},
    "internal": {"logger": {"routing_key": "logs"}},
}


@pytest.mark.parametrize("evbus_profiles", [IDEM_PROFILES])
async def test_idem_event_profiles_reach_their_destinations(hub, evbus_capture):
    for profile in ("idem-run", "idem-state", "idem-status", "logger", "other"):
        hub.evbus.broker.put_nowait(profile=profile, body={"p": profile})
    await evbus_capture.settle()
    assert [(e.routing_key, e.data) for e in evbus_capture.events(plugin="kafka")] == [(None, {"p": "idem-state"})]
    assert [e.profile for e in evbus_capture.events(plugin="pika", routing_key="idem")] == [
        "idem-run", "idem-state", "idem-status",
    ]
    assert evbus_capture.bodies(plugin="internal", routing_key="logs") == [{"p": "logger"}]
    assert evbus_capture.events(profile="other") == []
    assert hub.evbus.broker.stats()["unrouted"] == 1


async def test_regex_match_plugin_from_contexts(hub):
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"idem-(run|state)": {"routing_key": "r"}}})
    contexts["match_plugin"] = "regex"
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    for profile in ("idem-run", "idem-low", "idem-state"):
        await hub.evbus.broker.put(body=profile, profile=profile)
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 5)
    queue = await hub.ingress.internal.get("r")
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == ["idem-run", "idem-state"]


async def test_stop_delivers_everything_put_before_it(hub, running):
    add_ingress(hub, "slow")
    await running({"internal": {"default": {}}, "slow": {"default": {"delay": 0.002}}})
    for n in range(200):
        hub.evbus.broker.put_nowait(body=n)
    undelivered = await hub.evbus.init.stop(timeout=30)
    assert undelivered == 0
    queue = await hub.ingress.internal.get()
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == list(range(200))
    assert [json.loads(body) for _, body in hub.ingress.slow.SEEN] == list(range(200))


async def test_a_producer_putting_in_a_tight_loop_lets_the_lanes_deliver_meanwhile(hub, running):
    """put() lets the loop run once every YIELD_EVERY events queued: delivery starts before the last put."""
    from evbus.evbus.broker import YIELD_EVERY

    await running({"internal": {"default": {"routing_key": "tight"}}})
    queue = await hub.ingress.internal.get("tight")
    delivered_meanwhile = []
    for n in range(3 * YIELD_EVERY):
        await hub.evbus.broker.put(body=n)
        delivered_meanwhile.append(queue.qsize())
    assert delivered_meanwhile[YIELD_EVERY - 2] == 0
    assert delivered_meanwhile[YIELD_EVERY - 1] == YIELD_EVERY
    assert delivered_meanwhile[-1] == 3 * YIELD_EVERY
    assert await take_json(queue, 3 * YIELD_EVERY) == list(range(3 * YIELD_EVERY))


async def test_put_after_stop_is_an_error_until_started_again(hub, running):
    contexts = await running({"internal": {"default": {}}})
    await hub.evbus.init.stop()
    with pytest.raises(BusClosedError):
        await hub.evbus.broker.put(body=1)
    with pytest.raises(BusClosedError):
        hub.evbus.broker.put_nowait(body=1)
    assert hub.evbus.BUS.qsize() == 0
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await wait_for(lambda: hub.evbus.init.RUNNING, 5, "restart")
    await hub.evbus.broker.put(body=2)
    assert await take_json(await hub.ingress.internal.get(), 1) == [2]
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 5)


async def test_slow_destination_does_not_delay_internal(hub, running):
    """Lanes are independent: a destination taking 0.25 s per event holds up only itself."""
    add_ingress(hub, "slow")
    await running({"internal": {"default": {}}, "slow": {"default": {"delay": 0.25}}})
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(20):
        await hub.evbus.broker.put(body=n)
    assert await take_json(await hub.ingress.internal.get(), 20, timeout=5) == list(range(20))
    internal_done = loop.time() - started
    # the slow lane has 20 * 0.25 s of work; internal finished before its second event
    assert len(hub.ingress.slow.SEEN) <= 2, (internal_done, len(hub.ingress.slow.SEEN))
    stats = {lane["plugin"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert stats["internal"]["published"] == 20
    assert stats["slow"]["depth"] >= 18


async def test_hanging_destination_is_reported_at_stop_timeout(hub, running, error_sink):
    add_ingress(hub, "hang")
    await running({"internal": {"default": {}}, "hang": {"default": {}}})
    for n in range(3):
        await hub.evbus.broker.put(body=n)
    assert await take_json(await hub.ingress.internal.get(), 3) == [0, 1, 2]
    undelivered = await hub.evbus.init.stop(timeout=0.3)
    assert undelivered == 3
    stats = {lane["plugin"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert stats["hang"]["failed"] == 3 and stats["hang"]["published"] == 0
    assert stats["internal"]["published"] == 3 and stats["internal"]["failed"] == 0
    assert [json.loads(e["body"]) for e in error_sink] == [0, 1, 2]
    assert all("stop timeout" in str(e["exception"]) for e in error_sink)


def _lane_stats(hub) -> dict:
    return {lane["plugin"]: lane for lane in hub.evbus.broker.stats()["lanes"]}


async def test_failed_publish_goes_to_error_callback_masked(hub, running, caplog, error_sink):
    add_ingress(hub, "failing")
    received = error_sink
    await running(
        {
            "internal": {"default": {}},
            "failing": {"default": {"user": "bob", "password": "hunter2-secret", "token": "tok-abc"}},
        }
    )
    await hub.evbus.broker.put(body={"n": 1})
    await hub.evbus.broker.put(body={"n": 2})
    assert await take_json(await hub.ingress.internal.get(), 2) == [{"n": 1}, {"n": 2}]
    await wait_for(lambda: len(received) == 2, 5, "two error callbacks")
    first = received[0]
    assert first["plugin"] == "failing"
    assert first["profile"] == "default"
    assert json.loads(first["body"].decode()) == {"n": 1}
    assert isinstance(first["exception"], EvbusError)
    everything = repr(received) + str(first["exception"]) + caplog.text
    assert "hunter2-secret" not in everything and "tok-abc" not in everything
    assert "***" in str(first["exception"])
    assert first["context"]["failing"][0]["default"]["password"] == "***"
    assert "failing" in caplog.text and "default" in caplog.text
    # (counted once the callback returned)
    await wait_for(lambda: _lane_stats(hub)["failing"]["failed"] == 2, 5, "two events counted failed")
    stats = _lane_stats(hub)
    # the first event: 3 attempts (EVBUS_RETRY_ATTEMPTS of the hub fixture); then the
    # destination counts as down, and the second gets one attempt
    assert stats["failing"]["retried"] == 2 and stats["failing"]["down"]
    assert hub.ingress.failing.CALLS == 4
    dead = hub.evbus.deadletter.read()
    assert [json.loads(d["body"]) for d in dead] == [{"n": 1}, {"n": 2}]
    assert [d["attempts"] for d in dead] == [3, 1]
    assert all(d["plugin"] == "failing" and d["acct_profile"] == "default" for d in dead)
    assert "hunter2-secret" not in repr(dead) and "***" in dead[0]["error"]


async def test_error_callback_ref_from_config(hub, running, error_sink):
    """error_callback_ref names a function on the hub, like idem's default handler."""
    add_ingress(hub, "failing")
    assert hub.OPT.evbus.error_callback_ref == "my_app.errors.handle"
    await running({"failing": {"default": {}}})
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: [e["plugin"] for e in error_sink] == ["failing"], 5, "the error callback")


async def test_listener_survives_failures_and_keeps_order(hub, running):
    add_ingress(hub, "failing")
    await running({"internal": {"*": {}}, "failing": {"*": {}}})
    for n in range(100):
        await hub.evbus.broker.put(body=n, profile=f"p{n % 3}")
    assert await take_json(await hub.ingress.internal.get(), 100) == list(range(100))
    assert hub.evbus.init.RUNNING


async def test_put_nowait_from_threads(hub, running):
    """put_nowait from other threads while the loop runs: nothing lost, order kept per thread."""
    await running({"internal": {"*": {}}})
    per_thread = 500

    def produce(name):
        for n in range(per_thread):
            hub.evbus.broker.put_nowait(body=[name, n], profile="t")

    threads = [threading.Thread(target=produce, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    bodies = await take_json(await hub.ingress.internal.get(), 4 * per_thread)
    for i in range(4):
        assert [n for name, n in bodies if name == f"t{i}"] == list(range(per_thread))


async def test_put_nowait_from_a_thread_racing_init(hub):
    """Puts from a thread while init() moves the queue to the loop are not lost."""
    stop = threading.Event()
    count = 0

    def produce():
        nonlocal count
        while not stop.is_set() and count < 20000:
            hub.evbus.broker.put_nowait(body=count)
            count += 1

    thread = threading.Thread(target=produce)
    thread.start()
    await asyncio.sleep(0.01)
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    await hub.evbus.init.stop(timeout=10)
    await asyncio.wait_for(listener, 10)
    queue = await hub.ingress.internal.get()
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == list(range(count))


async def test_modern_ingress_plugin_gets_routing_key_in_ctx(hub, running):
    """A publish(hub, ctx, body) plugin (pop-evbus 6.x+) works, routing key in ctx.acct."""
    add_ingress(hub, "modern")
    await running({"modern": {"default": {"routing_key": "profile-rk", "connection": {"host": "h"}}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.broker.put(routing_key="event-rk", body=2)
    await wait_for(lambda: len(hub.ingress.modern.SEEN) == 2, 5, "two publishes")
    assert hub.ingress.modern.SEEN == [("profile-rk", b"1"), ("event-rk", b"2")]


async def test_ingress_plugin_without_acct_is_a_clear_error(hub):
    from evbus.exc import IngressPluginError

    add_ingress(hub, "noacct")
    listener = asyncio.create_task(hub.evbus.init.start({"internal": [{"default": {}}]}))
    with pytest.raises(IngressPluginError) as info:
        await hub.evbus.init.join(timeout=5)
    assert "noacct" in str(info.value) and "hub.ingress.noacct.ACCT" in str(info.value)
    with pytest.raises(IngressPluginError):
        await listener


async def test_stats(hub, running):
    await running({"internal": {"default": {}, "other": {}}})
    for n in range(10):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.broker.put(body="nobody", profile="unmatched")
    await take(await hub.ingress.internal.get(), 10)
    await wait_for(lambda: hub.evbus.broker.stats()["unrouted"] == 1, 5, "unrouted count")
    stats = hub.evbus.broker.stats()
    assert stats["put"] == 11
    assert stats["queue_depth"] == 0
    lanes = {lane["profile"]: lane for lane in stats["lanes"]}
    assert lanes["default"]["queued"] == lanes["default"]["published"] == 10
    assert lanes["default"]["failed"] == 0 and lanes["default"]["depth"] == 0
    assert "other" in lanes and lanes["other"]["queued"] == 0


async def test_start_twice_is_an_error(hub, running):
    from evbus.exc import BusRunningError

    contexts = await running({"internal": {"default": {}}})
    with pytest.raises(BusRunningError):
        await hub.evbus.init.start(contexts)


async def test_idem_style_lifecycle(hub):
    """The start-up and shut-down sequence idem runs for every command."""
    await hub.evbus.broker.init()
    hub.evbus.SERIAL_PLUGIN = hub.OPT.evbus.serial_plugin
    hub.evbus.broker.put_nowait(profile="idem-run", body={"early": True})
    contexts = await hub.evbus.acct.profiles(acct_file=None, acct_key=None)
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"idem-*": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    try:
        await hub.evbus.init.join()
        await hub.evbus.broker.put(profile="idem-state", body={"state": "ok"})
        hub.evbus.broker.put_nowait(profile="idem-low", body={"low": 1})
    finally:
        await hub.evbus.init.stop()
        await listener
    queue = await hub.ingress.internal.get()
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == [
        {"early": True},
        {"state": "ok"},
        {"low": 1},
    ]


async def test_stop_before_listener_task_runs(hub):
    """create_task(start) then stop() at once: the listener delivers, then ends."""
    hub.evbus.broker.put_nowait(body="before")
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 5)
    assert await take_json(await hub.ingress.internal.get(), 1) == ["before"]


async def test_propagate_directly(hub):
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "rk"}}})
    event = hub.evbus.broker.Event(profile="default", body=b'"direct"')
    await hub.evbus.broker.propagate(contexts, event)
    # propagate() awaits the publishes, as pop-evbus did
    assert (await hub.ingress.internal.get("rk")).get_nowait() == b'"direct"'


async def test_propagate_directly_survives_a_failing_plugin(hub, error_sink):
    add_ingress(hub, "failing")
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"*": {}}, "failing": {"*": {}}})
    await hub.evbus.broker.propagate(contexts, hub.evbus.broker.Event(profile="x", body=b"1"))
    assert (await hub.ingress.internal.get()).get_nowait() == b"1"
    assert [e["plugin"] for e in error_sink] == ["failing"]


async def test_invalid_pattern_is_a_profile_error_at_start(hub):
    from evbus.exc import ProfileError

    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"*": {}}})
    contexts["match_plugin"] = "regex"
    with pytest.raises(ProfileError) as info:
        await hub.evbus.init.start(contexts)
    assert "'internal'" in str(info.value) and "'*'" in str(info.value) and "regex" in str(info.value)


async def test_never_waiting_plugin_failures_are_reported_in_order(hub, running, error_sink):
    """A publish_nowait plugin is published inline; its failures still reach the error callback."""
    add_ingress(hub, "nowait_failing")
    await running({"nowait_failing": {"default": {}}})
    for n in range(10):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    assert hub.ingress.nowait_failing.SEEN == [0, 2, 4, 6, 8]
    assert [json.loads(e["body"]) for e in error_sink] == [1, 3, 5, 7, 9]
    assert all("odd body" in str(e["exception"]) for e in error_sink)
    # failed inline (1 attempt), or on the lane's task when events were queued (3: the test config)
    assert {e["attempts"] for e in error_sink} <= {1, 3}
    [lane] = hub.evbus.broker.stats()["lanes"]
    assert (lane["published"], lane["failed"], lane["depth"]) == (5, 5, 0)


async def test_put_works_as_a_task(hub, running):
    """put() returns a coroutine: create_task and gather take it."""
    await running({"internal": {"default": {}}})
    await asyncio.create_task(hub.evbus.broker.put(body=1))
    await asyncio.gather(hub.evbus.broker.put(body=2), hub.evbus.broker.put(body=3))
    assert await take_json(await hub.ingress.internal.get(), 3) == [1, 2, 3]


async def test_put_from_a_new_loop_after_the_first_closed(hub):
    """The bus follows the running loop: events put in a finished loop are delivered in the next."""

    def first_loop():
        async def main():
            await hub.evbus.broker.put(body="from-loop-1")

        asyncio.run(main())

    await asyncio.get_running_loop().run_in_executor(None, first_loop)
    hub.evbus.broker.put_nowait(body="between")
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    await hub.evbus.broker.put(body="from-loop-2")
    await hub.evbus.init.stop()
    await asyncio.wait_for(listener, 5)
    queue = await hub.ingress.internal.get()
    assert [json.loads(queue.get_nowait()) for _ in range(queue.qsize())] == ["from-loop-1", "between", "from-loop-2"]


@pytest.mark.parametrize("stops", [1, 2])
async def test_stop_with_no_listener_refuses_puts_until_the_next_start_which_runs(hub, stops):
    """stop() before any start(), once or twice: puts are refused; the next start() runs until its own stop."""
    hub.evbus.broker.put_nowait(body="kept")
    for _ in range(stops):
        assert await asyncio.wait_for(hub.evbus.init.stop(), 5) == 0
    with pytest.raises(BusClosedError):
        hub.evbus.broker.put_nowait(body="refused")
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    await hub.evbus.broker.put(body="after start")
    assert not listener.done()
    assert await hub.evbus.init.stop(timeout=5) == 0
    await asyncio.wait_for(listener, 5)
    assert await take_json(await hub.ingress.internal.get(), 2) == ["kept", "after start"]
    with pytest.raises(BusClosedError):
        hub.evbus.broker.put_nowait(body="refused")


async def test_a_second_stop_is_a_no_op_and_the_bus_starts_again(hub):
    """stop(), stop() again after the listener ended: the next start() runs as the first did."""
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    for round_ in range(2):
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        await hub.evbus.init.join(timeout=5)
        await hub.evbus.broker.put(body=round_)
        assert await hub.evbus.init.stop(timeout=5) == 0
        await asyncio.wait_for(listener, 5)
        assert await asyncio.wait_for(hub.evbus.init.stop(timeout=5), 5) == 0
    assert await take_json(await hub.ingress.internal.get(), 2) == [0, 1]


async def test_a_stop_for_a_start_that_fails_does_not_stop_the_next_start(hub):
    """stop() while start() sets up, which then fails: answered with 0; the next start() runs."""
    from evbus.exc import ProfileError

    bad = await hub.evbus.acct.profiles(acct_data={"internal": {"*": {}}})
    bad["match_plugin"] = "regex"
    failing = asyncio.create_task(hub.evbus.init.start(bad))
    assert await asyncio.wait_for(hub.evbus.init.stop(timeout=5), 5) == 0
    with pytest.raises(ProfileError):
        await asyncio.wait_for(failing, 5)
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=5)
    await hub.evbus.broker.put(body="delivered")
    assert not listener.done()
    await hub.evbus.init.stop(timeout=5)
    await asyncio.wait_for(listener, 5)
    assert await take_json(await hub.ingress.internal.get(), 1) == ["delivered"]


async def test_start_again_after_stop_and_join_waits_for_the_new_listener(hub):
    """join() after a second start() returns once that listener runs: puts are taken, not refused."""
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    for round_ in range(3):
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        await hub.evbus.init.join(timeout=5)
        await hub.evbus.broker.put(body={"round": round_})
        assert await hub.evbus.init.stop(timeout=5) == 0
        await asyncio.wait_for(listener, 5)
        assert not hub.evbus.STARTED
    assert [json.loads(b) for b in await take(await hub.ingress.internal.get(), 3)] == [{"round": n} for n in range(3)]


@pytest.mark.parametrize("handler", ["stuck", "deaf"])
async def test_an_error_callback_that_never_returns_holds_nothing_up(hub, running, error_sink, monkeypatch, caplog, handler):
    """Each call is bounded: every failed event is dead-lettered and called back, and stop() keeps its bound."""
    monkeypatch.setenv("EVBUS_ERROR_CALLBACK_REF", f"my_app.errors.{handler}")
    monkeypatch.setattr(report_module, "CALLBACK_TIMEOUT", 0.2)
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 10**6
    await running({"flaky": {"default": {}}})
    for n in range(6):
        await hub.evbus.broker.put(body=n)
    start = time.monotonic()
    assert await hub.evbus.init.stop(timeout=30) == 0  # (failed before the stop, not left by it)
    assert time.monotonic() - start < 15
    assert sorted(json.loads(d["body"]) for d in hub.evbus.deadletter.read()) == list(range(6))
    assert len(error_sink) == 6
    assert caplog.text.count("The error callback did not return within 0.2 s: cancelled, the lane goes on") == 6


async def test_a_stuck_error_callback_keeps_no_event_from_its_dead_letter_at_stop(hub, running, error_sink, monkeypatch):
    """Events a lane still holds at the stop are all dead-lettered within the stop's bound: their callbacks share it."""
    monkeypatch.setenv("EVBUS_ERROR_CALLBACK_REF", "my_app.errors.stuck")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    add_ingress(hub, "hang")
    await running({"hang": {"default": {}}})
    for n in range(5):
        await hub.evbus.broker.put(body=n)
    start = time.monotonic()
    assert await hub.evbus.init.stop(timeout=0.5) == 5
    assert time.monotonic() - start < 0.5 + 2 * CLOSE_GRACE + 1
    assert sorted(json.loads(d["body"]) for d in hub.evbus.deadletter.read()) == list(range(5))
    assert len(error_sink) == 5
