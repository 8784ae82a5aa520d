"""The lanes' delivery machinery, the same for every plugin: retries, budgets, timeouts, pipelining."""
import asyncio
import json

import pytest

from tests.conftest import add_ingress
from tests.conftest import take_json
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def lane_stats(hub, plugin: str) -> dict:
    return next(lane for lane in hub.evbus.broker.stats()["lanes"] if lane["plugin"] == plugin)


async def test_transient_failures_are_retried_in_order(hub, running, error_sink):
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 2
    await running({"flaky": {"default": {}}})
    for n in range(5):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    assert [json.loads(b) for b in hub.ingress.flaky.SEEN] == [0, 1, 2, 3, 4]
    stats = lane_stats(hub, "flaky")
    assert (stats["published"], stats["retried"], stats["failed"]) == (5, 2, 0)
    assert error_sink == []


async def test_retry_budget_of_attempts(hub, running, error_sink):
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 3  # the 3 attempts of the test config
    await running({"flaky": {"default": {}}})
    await hub.evbus.broker.put(body="lost")
    await hub.evbus.broker.put(body="next")
    await hub.evbus.init.stop()
    assert [json.loads(e["body"]) for e in error_sink] == ["lost"]
    assert error_sink[0]["attempts"] == 3
    assert "connection reset" in str(error_sink[0]["exception"])
    assert [json.loads(b) for b in hub.ingress.flaky.SEEN] == ["next"]
    assert [d["id"] for d in hub.evbus.deadletter.read()] == [error_sink[0]["event_id"]]
    assert not lane_stats(hub, "flaky")["down"]  # up again after "next"


async def test_down_destination_fails_fast_until_it_is_back(hub, running, error_sink):
    """After one event used up its budget, the next ones get one attempt each: no 30 s per event."""
    add_ingress(hub, "flaky")
    hub.ingress.flaky.FAIL_NEXT = 3 + 5
    await running({"flaky": {"default": {}}})
    for n in range(8):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    assert [json.loads(e["body"]) for e in error_sink] == [0, 1, 2, 3, 4, 5]
    assert [e["attempts"] for e in error_sink] == [3, 1, 1, 1, 1, 1]
    assert [json.loads(b) for b in hub.ingress.flaky.SEEN] == [6, 7]
    stats = lane_stats(hub, "flaky")
    assert (stats["published"], stats["dead_lettered"], stats["down"]) == (2, 6, False)


async def test_retry_budget_of_seconds(hub, running, error_sink, monkeypatch):
    """With many attempts allowed, the seconds budget ends the retries."""
    add_ingress(hub, "flaky")
    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "1000")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "0.3")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.05")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    hub.ingress.flaky.FAIL_NEXT = 10**6
    await running({"flaky": {"default": {}}})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 10, "the give-up")
    took = loop.time() - started
    attempts = 10**6 - hub.ingress.flaky.FAIL_NEXT
    assert 0.3 <= took < 5, took
    assert 2 <= attempts < 100, attempts  # backed off, no busy loop


async def test_non_retriable_error_is_not_retried(hub, running, error_sink):
    add_ingress(hub, "permanent")
    await running({"permanent": {"default": {}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    assert hub.ingress.permanent.CALLS == 1
    assert [type(e["exception"]).__name__ for e in error_sink] == ["MessageTooLarge"]


async def test_hanging_publish_times_out_and_is_retried(hub, running, error_sink, monkeypatch):
    add_ingress(hub, "hang")
    monkeypatch.setenv("EVBUS_PUBLISH_TIMEOUT", "0.05")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    await running({"hang": {"default": {}}, "internal": {"default": {}}})
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 10, "the give-up")
    assert hub.ingress.hang.STARTED == 3
    assert isinstance(error_sink[0]["exception"], TimeoutError)
    assert "0.05 s" in str(error_sink[0]["exception"])
    assert await take_json(await hub.ingress.internal.get(), 1) == [1]


async def test_pipelined_plugin_goes_back_to_the_failed_event(hub, running, error_sink):
    add_ingress(hub, "pipe")
    hub.ingress.pipe.FAIL_ONCE = {b"50", b"120"}
    await running({"pipe": {"default": {"name": "one"}}})
    # connected at start, before any event
    await wait_for(lambda: hub.ingress.pipe.OPENED == ["one"], 5, "the connection")
    for n in range(200):
        hub.evbus.broker.put_nowait(body=n)
    await hub.evbus.init.stop()
    confirmed = [json.loads(b) for b in hub.ingress.pipe.CONFIRMED]
    # every event arrived; after each failure the lane sent from the failed event on again
    assert set(confirmed) == set(range(200))
    last_copies = sorted(set(confirmed), key=lambda n: max(i for i, c in enumerate(confirmed) if c == n))
    assert last_copies == list(range(200))
    stats = lane_stats(hub, "pipe")
    # one go-back per failure noticed at the head; 120 may fail within the first go-back's window
    assert stats["published"] == 200 and stats["failed"] == 0 and 1 <= stats["retried"] <= 2
    assert hub.ingress.pipe.MAX_IN_FLIGHT > 1  # pipelined, not one by one
    assert hub.ingress.pipe.CLOSED == ["one"]  # closed on stop
    assert error_sink == []


async def test_pipeline_window_is_bounded(hub, running, monkeypatch):
    add_ingress(hub, "pipe")
    monkeypatch.setenv("EVBUS_MAX_IN_FLIGHT", "7")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    await running({"pipe": {"default": {}}})
    for n in range(100):
        hub.evbus.broker.put_nowait(body=n)
    await hub.evbus.init.stop()
    assert len(hub.ingress.pipe.CONFIRMED) == 100
    assert hub.ingress.pipe.MAX_IN_FLIGHT == 7


async def test_unreachable_destination_is_reported_at_start(hub, running, caplog):
    """A plugin whose open() fails: a warning naming the destination at start, secrets masked."""
    add_ingress(hub, "pipe")
    await running({"pipe": {"p": {"url": "amqp://u:pw-secret@127.0.0.1:1/"}}})
    await wait_for(lambda: "Cannot connect" in caplog.text, 5, "the warning")
    assert "pipe://127.0.0.1:1" in caplog.text and "profile 'p'" in caplog.text
    assert "refused" in caplog.text and "pw-secret" not in caplog.text
