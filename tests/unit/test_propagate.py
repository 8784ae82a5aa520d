"""
The propagate hop (evbus.propagate.propagate), which the listener, the
re-delivery of a spool, hub.evbus.broker.propagate and the replay of dead
letters all take: the same lanes, the same backpressure, the same counts.
"""
import asyncio
import fnmatch
import json

import pytest

from evbus.deadletter import to_record
from evbus.propagate import propagate
from evbus.route import Router
from evbus.route import RouteState
from evbus.types import Event
from evbus.types import make_event
from evbus.types import make_record
from tests.conftest import add_ingress
from tests.conftest import wait_for


class FakeLane:
    """What the hop uses of a lane: ``profile``, ``full``, ``room()``, ``put()``."""

    def __init__(self, profile: str, limit: int = 0):
        self.profile = profile
        self.limit = limit
        self.taken: list = []
        self.waited = 0
        self._room: asyncio.Event | None = None

    @property
    def full(self) -> bool:
        return bool(self.limit) and len(self.taken) >= self.limit

    async def room(self):
        self.waited += 1
        self._room = asyncio.Event()
        await self._room.wait()

    def free(self):
        self.taken.clear()
        self._room.set()

    def put(self, event) -> int:
        self.taken.append(event)
        return len(self.taken)


class FakeSpool:
    def __init__(self):
        self.routed_calls: list[tuple[str, int]] = []

        self.collected = 0

    def routed(self, event, lanes: int):
        self.routed_calls.append((event.id, lanes))

    def collect(self):
        self.collected += 1


def router_of(*lanes: FakeLane) -> Router:
    return Router({}, list(lanes), fnmatch.fnmatchcase, RouteState())


def record(profile: str = "p", body: bytes = b"1") -> tuple:
    return make_record(profile, None, body, "application/json")


async def test_a_record_for_one_lane_stays_a_record_and_one_for_several_becomes_one_event():
    one, other = FakeLane("a*"), FakeLane("ab")
    router = router_of(one, other)
    await propagate([record("ax"), record("ab")], router)
    assert one.taken[0].__class__ is tuple and other.taken == [one.taken[1]]
    assert isinstance(one.taken[1], Event)
    assert router.counts.unrouted == 0


async def test_an_event_no_lane_takes_is_counted_unrouted_and_finished_in_the_spool():
    spool, router = FakeSpool(), router_of(FakeLane("a"), FakeLane("*"))
    routed, unrouted = make_event("x", None, b"1", "application/json"), make_event("a", None, b"2", "x")
    await propagate([routed, unrouted], router_of(), spool)
    await propagate([routed, unrouted], router, spool)
    assert spool.routed_calls == [(routed.id, 0), (unrouted.id, 0), (routed.id, 1), (unrouted.id, 2)]
    assert router.counts.unrouted == 0
    assert spool.collected == 2  # what the lanes settled: once per hop


async def test_a_hop_cancelled_while_a_lane_is_full_still_collects_the_settled():
    spool, lane = FakeSpool(), FakeLane("*", limit=1)
    hop = asyncio.create_task(propagate([record(body=b"1"), record(body=b"2")], router_of(lane), spool))
    await wait_for(lambda: lane.waited == 1)
    hop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hop
    assert spool.collected == 1


async def test_kept_unrouted_events_stay_in_the_spool_uncounted():
    spool, router = FakeSpool(), router_of(FakeLane("a"))
    kept, routed = make_event("x", None, b"1", "x"), make_event("a", None, b"2", "x")
    await propagate([kept, routed], router, spool, keep_unrouted=True)
    assert spool.routed_calls == [(routed.id, 1)]
    assert router.counts.unrouted == 0


async def test_a_full_lane_makes_the_hop_wait_for_room():
    lane = FakeLane("*", limit=1)
    hop = asyncio.create_task(propagate([record(body=b"1"), record(body=b"2")], router_of(lane)))
    await asyncio.sleep(0.01)
    assert not hop.done() and lane.waited == 1 and len(lane.taken) == 1
    lane.free()
    await asyncio.wait_for(hop, 5)
    assert [item[2] for item in lane.taken] == [b"2"]


async def test_the_hop_ends_at_the_stop_and_hands_back_what_follows():
    lane, stop, left = FakeLane("*"), object(), []
    ended = await propagate([record(), stop, record(body=b"after")], router_of(lane), left=left.extend)
    assert ended is stop and len(lane.taken) == 1
    assert [item[2] for item in left] == [b"after"]


async def test_cancelled_while_a_lane_is_full_it_hands_back_what_it_did_not_take():
    lane, left = FakeLane("*", limit=1), []
    items = [record(body=b"1"), record(body=b"2"), record(body=b"3")]
    hop = asyncio.create_task(propagate(items, router_of(lane), left=left.extend))
    await asyncio.sleep(0.01)
    hop.cancel()
    await asyncio.wait([hop])
    assert [item[2] for item in left] == [b"3"]


async def test_named_lanes_and_the_sequence_numbers_to_settle():
    matched, named, settle = FakeLane("*"), FakeLane("none"), []
    await propagate([record(), record()], router_of(matched, named), lanes=(named,), settle=settle)
    assert matched.taken == [] and settle == [(named, 1), (named, 2)]


# Through the hub: every caller of the hop gets the lanes' backpressure and counts


async def _waiting_for_room(lane, task: asyncio.Task):
    """Return once ``task`` waits for room on ``lane``: the lane holds its limit and is asked for room."""
    for _ in range(500):
        if lane._room and lane.depth >= lane.limit:
            return
        assert not task.done(), task
        await asyncio.sleep(0.01)
    raise AssertionError("never waited for room")


def _slow_lanes(hub, monkeypatch):
    add_ingress(hub, "slow")
    monkeypatch.setenv("EVBUS_LANE_SIZE", "1")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)


async def test_public_propagate_waits_for_room_on_a_full_lane_and_counts_unrouted(hub, monkeypatch):
    _slow_lanes(hub, monkeypatch)
    contexts = await hub.evbus.acct.profiles(acct_data={"slow": {"p": {"delay": 0.2}}})
    event = hub.evbus.broker.event(body=1, profile="p")
    await hub.evbus.broker.propagate(contexts, event, wait=False)
    [lane] = hub.evbus.route.router(contexts).lanes
    second = asyncio.create_task(hub.evbus.broker.propagate(contexts, event, wait=False))
    await _waiting_for_room(lane, second)
    await asyncio.wait_for(second, 5)
    await hub.evbus.broker.propagate(contexts, hub.evbus.broker.event(body=2, profile="other"))
    assert hub.evbus.broker.stats()["unrouted"] == 1


async def test_replay_waits_for_room_on_a_full_lane(hub, monkeypatch):
    _slow_lanes(hub, monkeypatch)
    contexts = await hub.evbus.acct.profiles(acct_data={"slow": {"p": {"delay": 0.05}}})
    store = hub.evbus.deadletter.store()
    for n in range(3):
        event = make_event("p", None, json.dumps(n).encode(), "application/json")
        store.append(to_record(event, plugin="slow", provider="slow", acct_profile="p", attempts=1, error="x"))
    replay = asyncio.create_task(hub.evbus.deadletter.replay(contexts))
    while not hub.evbus.route.STATE.routers:
        await asyncio.sleep(0.001)
    [lane] = hub.evbus.route.router(contexts).lanes
    await _waiting_for_room(lane, replay)
    counts = await asyncio.wait_for(replay, 10)
    assert counts == {"replayed": 3, "delivered": 3, "failed": 0, "no_destination": 0}
    assert [json.loads(body) for _, body in hub.ingress.slow.SEEN] == [0, 1, 2]


async def test_the_listener_and_the_spool_redelivery_wait_for_room(hub, monkeypatch, tmp_path):
    """What a crashed process left in the spool is re-delivered through the hop: a full lane makes it wait."""
    import pop.hub
    import sys

    monkeypatch.setenv("EVBUS_SPOOL", str(tmp_path / "spool"))
    crashed = pop.hub.Hub()
    crashed.pop.sub.add(dyne_name="evbus")
    crashed.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    await crashed.evbus.broker.init()
    for n in range(3):
        await crashed.evbus.broker.put(body=n, profile="p")
    crashed.evbus.broker.STATE.spool.close()  # the process "dies" with three events unsettled
    monkeypatch.setattr(sys, "argv", ["evbus"])
    _slow_lanes(hub, monkeypatch)
    contexts = await hub.evbus.acct.profiles(acct_data={"slow": {"p": {"delay": 0.05}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    while not hub.evbus.route.STATE.routers:
        await asyncio.sleep(0.001)
    [lane] = hub.evbus.route.router(contexts).lanes
    await _waiting_for_room(lane, listener)
    await hub.evbus.init.join(timeout=10)
    await hub.evbus.broker.put(body=3, profile="p")
    assert await hub.evbus.init.stop(timeout=10) == 0
    await listener
    assert [json.loads(body) for _, body in hub.ingress.slow.SEEN] == [0, 1, 2, 3]
    assert hub.evbus.broker.stats()["redelivered"] == 3
