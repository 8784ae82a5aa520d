"""
The pytest plugin evbus ships (``evbus.testing``): the bus on in-process
capture, in this suite and in a pop project's own tests beside pytest-pop.
"""
import asyncio
import threading

import pytest

from evbus.exc import BusRunningError
from evbus.exc import BusStoppedError
from evbus.exc import ConfigError
from evbus.exc import EvbusTimeoutError
from evbus.exc import ProfileError
from evbus.testing import Capture

# Profiles of brokers that are not there: the capture must never connect
PROFILES = {
    "kafka": {"orders-*": {"topics": ["orders"], "connection": {"bootstrap_servers": "127.0.0.1:1"}}},
    "amqp": {"orders-*": {"routing_key": "orders", "connection": {"url": "amqp://u:p@127.0.0.1:1/"}}},
    "internal": {"audit": {"routing_key": "audit-log"}, "*": {}},
}


async def test_every_event_is_captured_by_default(evbus_hub, evbus_capture):
    await evbus_hub.evbus.broker.put(body={"n": 1}, profile="p")
    evbus_hub.evbus.broker.put_nowait(routing_key="rk", body=[2], profile="q")
    await evbus_capture.settle()
    assert evbus_capture.bodies() == [{"n": 1}, [2]]
    first, second = evbus_capture.events()
    assert (first.plugin, first.provider, first.acct_profile, first.profile, first.routing_key) == (
        "internal", "internal", "*", "p", None,
    )
    assert (second.profile, second.routing_key, second.body) == ("q", "rk", b"[2]")
    assert second.event_id and second.content_type == "application/json"


@pytest.mark.parametrize("evbus_profiles", [PROFILES])
async def test_each_plugin_profile_and_routing_key_receives_its_own(evbus_hub, evbus_capture, evbus_profiles):
    put = evbus_hub.evbus.broker.put
    await put(body={"order": 1}, profile="orders-new")
    await put(routing_key="express", body={"order": 2}, profile="orders-new")
    await put(body={"who": "me"}, profile="audit")
    await evbus_capture.settle()

    assert evbus_capture.bodies(plugin="kafka") == [{"order": 1}, {"order": 2}]
    assert evbus_capture.bodies(plugin="pika", routing_key="orders") == [{"order": 1}]
    assert evbus_capture.bodies(plugin="pika", routing_key="express") == [{"order": 2}]
    assert [e.provider for e in evbus_capture.events(plugin="pika")] == ["amqp", "amqp"]
    assert evbus_capture.bodies(acct_profile="audit", routing_key="audit-log") == [{"who": "me"}]
    # The catch-all internal profile takes every event, each once
    everything = evbus_capture.bodies(plugin="internal", acct_profile="*")
    assert everything == [{"order": 1}, {"order": 2}, {"who": "me"}]
    assert evbus_capture.events(profile="nothing") == []
    # No broker was asked for anything
    assert not evbus_hub.ingress.kafka.CONNECTIONS
    assert evbus_hub.evbus.broker.stats()["lanes"] and all(
        lane["failed"] == 0 for lane in evbus_hub.evbus.broker.stats()["lanes"]
    )


async def test_msgpack_bodies_are_decoded(evbus_hub, evbus_capture):
    evbus_hub.evbus.SERIAL_PLUGIN = "msgpack"
    await evbus_hub.evbus.broker.put(body={"k": [1, 2]}, profile="p")
    await evbus_capture.settle()
    [event] = evbus_capture.events()
    assert event.content_type == "application/msgpack" and event.data == {"k": [1, 2]}


async def test_str_bodies_are_text(evbus_hub, evbus_capture):
    evbus_hub.evbus.SERIAL_PLUGIN = "str"
    await evbus_hub.evbus.broker.put(body={"k": 1}, profile="p")
    await evbus_capture.settle()
    assert evbus_capture.bodies() == ["{'k': 1}"]


async def test_puts_from_another_thread_are_captured_after_settle(evbus_hub, evbus_capture):
    def fire():
        for n in range(50):
            evbus_hub.evbus.broker.put_nowait(body=n, profile="thread")

    worker = threading.Thread(target=fire)
    worker.start()
    await asyncio.get_running_loop().run_in_executor(None, worker.join)
    await evbus_capture.settle()
    assert evbus_capture.bodies(profile="thread") == list(range(50))


async def test_clear_forgets_what_arrived(evbus_hub, evbus_capture):
    await evbus_hub.evbus.broker.put(body=1, profile="p")
    await evbus_capture.settle()
    evbus_capture.clear()
    await evbus_hub.evbus.broker.put(body=2, profile="p")
    await evbus_capture.settle()
    assert evbus_capture.bodies() == [2]


async def test_stop_delivers_everything_put_before_it_and_keeps_it(evbus_hub):
    capture = Capture(evbus_hub)
    await capture.start()
    for n in range(100):
        evbus_hub.evbus.broker.put_nowait(body=n)
    await capture.stop()
    await capture.stop()  # a second stop does nothing
    assert capture.bodies() == list(range(100))
    assert evbus_hub.evbus.route.STATE.capture is None
    await capture.settle()  # nothing runs: nothing to wait for


async def test_profiles_from_an_acct_file(evbus_hub, tmp_path):
    acct_file = tmp_path / "profiles.yml"
    acct_file.write_text("internal:\n  only-this:\n    routing_key: rk\n")
    capture = Capture(evbus_hub)
    contexts = await capture.start(acct_file)
    try:
        assert list(contexts) == ["internal"]
        await evbus_hub.evbus.broker.put(body="yes", profile="only-this")
        await evbus_hub.evbus.broker.put(body="no", profile="other")
        await capture.settle()
        assert [(e.routing_key, e.data) for e in capture.events()] == [("rk", "yes")]
    finally:
        await capture.stop()


async def test_a_malformed_profile_fails_the_start(evbus_hub):
    capture = Capture(evbus_hub)
    with pytest.raises(ProfileError):
        await capture.start({"internal": {"p": "not a mapping"}})
    await capture.stop()
    assert evbus_hub.evbus.route.STATE.capture is None


async def test_settle_says_when_events_do_not_arrive_in_time(evbus_hub, evbus_capture):
    # An event another thread put, that never reaches the loop
    handoff = evbus_hub.evbus.broker.STATE.handoff
    handoff.append(("never", "queued"))
    try:
        with pytest.raises(EvbusTimeoutError, match="within 0.05 s"):
            await evbus_capture.settle(timeout=0.05)
    finally:
        handoff.clear()  # (no event: the stop at the end would hand it to the listener)


async def test_settle_says_that_the_listener_was_cancelled(evbus_hub):
    capture = Capture(evbus_hub)
    await capture.start()
    capture._listener.cancel()
    await asyncio.wait([capture._listener])
    with pytest.raises(BusStoppedError, match="cancelled"):
        await capture.settle()
    await capture.stop()
    assert evbus_hub.evbus.route.STATE.capture is None


async def test_a_running_bus_is_not_captured(evbus_hub):
    capture = Capture(evbus_hub)
    await capture.start()
    second = Capture(evbus_hub)
    with pytest.raises(BusRunningError):
        await second.start()
    await second.stop()
    assert evbus_hub.evbus.route.STATE.capture == capture.destination
    await capture.stop()


async def test_settle_returns_once_the_bus_was_stopped(evbus_hub):
    capture = Capture(evbus_hub)
    await capture.start()
    await evbus_hub.evbus.broker.put(body=1)
    await evbus_hub.evbus.init.stop()
    await capture.settle()
    assert capture.bodies() == [1]
    await capture.stop()


async def test_settle_raises_what_ended_the_listener(evbus_hub):
    capture = Capture(evbus_hub)
    await capture.start()
    await capture.stop()

    async def crashed():
        raise ConfigError("the listener broke")

    capture._listener = asyncio.ensure_future(crashed())
    await asyncio.wait([capture._listener])
    with pytest.raises(ConfigError, match="broke"):
        await capture.settle()
    await capture.stop()


PROJECT_CONF = """
DYNE = {"shop": ["shop"]}
"""
PROJECT_PLUGIN = '''
async def place(hub, order_id: int):
    await hub.evbus.broker.put(profile="orders", body={"order": order_id})
    hub.evbus.broker.put_nowait(routing_key="audit", profile="audit", body={"placed": order_id})
'''
PROJECT_CONFTEST = """
import pytest


@pytest.fixture
def evbus_hub(hub):
    # pytest-pop's hub, with the project's dyne
    hub.pop.sub.add(dyne_name="shop")
    return hub


@pytest.fixture
def evbus_profiles():
    return {
        "pika": {"orders": {"routing_key": "orders", "connection": {"url": "amqp://127.0.0.1:1/"}}},
        "internal": {"audit": {}},
    }
"""
PROJECT_TEST = """
async def test_placing_an_order_fires_its_events(evbus_hub, evbus_capture):
    await evbus_hub.shop.orders.place(7)
    await evbus_capture.settle()
    assert evbus_capture.bodies(plugin="pika", routing_key="orders") == [{"order": 7}]
    assert evbus_capture.bodies(profile="audit") == [{"placed": 7}]
    [event] = evbus_capture.events(acct_profile="orders")
    assert event.routing_key == "orders"


async def test_the_next_test_starts_empty(evbus_hub, evbus_capture):
    assert evbus_capture.events() == []
    await evbus_hub.shop.orders.place(8)
    await evbus_capture.settle()
    assert evbus_capture.bodies(routing_key="audit") == [{"placed": 8}]
"""


def test_a_pop_project_tests_its_events_beside_pytest_pop(pytester, monkeypatch):
    """The README's example: a project's own conftest and test, pytest-pop's hub, no broker."""
    project = pytester.path / "project"
    (project / "shop" / "shop").mkdir(parents=True)
    (project / "shop" / "conf.py").write_text(PROJECT_CONF)
    (project / "shop" / "shop" / "orders.py").write_text(PROJECT_PLUGIN)
    pytester.makeconftest(PROJECT_CONFTEST)
    pytester.makepyfile(test_orders=PROJECT_TEST)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    monkeypatch.setenv("PYTHONPATH", str(project))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


DEFAULTS_TEST = """
import pytest
from evbus.testing import EVERYTHING


async def test_the_default_fixtures_capture_every_event(evbus_hub, evbus_profiles, evbus_capture):
    assert evbus_profiles == EVERYTHING and evbus_capture.hub is evbus_hub
    assert evbus_hub.OPT.evbus.serialize_plugin == "json"  # its config is loaded
    await evbus_hub.evbus.broker.put(body={"n": 1}, profile="anything")
    await evbus_capture.settle()
    [event] = evbus_capture.events()
    assert (event.plugin, event.acct_profile, event.profile) == ("internal", "*", "anything")
    assert event.data == {"n": 1}


async def test_each_test_gets_a_new_hub(evbus_hub, evbus_capture):
    assert evbus_capture.events() == []
"""


def test_the_default_fixtures_without_pytest_pop(pytester):
    """A project that overrides nothing: a new hub per test, every event captured."""
    pytester.makepyfile(test_defaults=DEFAULTS_TEST)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:pop")
    result.assert_outcomes(passed=2)
