"""
Bad input, property-tested: arbitrary bodies, routing keys, profile names and
acct data either work or raise a clear evbus error at the call site; the
listener never dies; no secret appears in any output.
"""
import asyncio
import json
import logging
import sys

import msgpack
import pop.hub
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from evbus.exc import ConfigError
from evbus.exc import EvbusError
from tests.conftest import PLUGINS

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(), st.binary(), st.decimals(allow_nan=False), st.complex_numbers(), st.datetimes(),
)
bodies = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
        st.frozensets(st.integers(), max_size=5),
    ),
    max_leaves=30,
)
names = st.text(max_size=20)  # empty, unicode, glob and regex metacharacters included


def _strict(constant: str):
    raise ValueError(f"invalid JSON constant {constant}")


def new_hub(monkeypatch=None, tmp_path=None) -> pop.hub.Hub:
    argv, sys.argv = sys.argv, ["evbus"]
    try:
        hub = pop.hub.Hub()
        hub.pop.sub.add(dyne_name="evbus")
        hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    finally:
        sys.argv = argv
    return hub


@SETTINGS
@given(body=bodies)
def test_json_body_works_and_is_valid_json(hub, body):
    try:
        hub.evbus.broker.put_nowait(body=body)
    except EvbusError:
        return  # a clear error at the call site is fine (e.g. unencodable)
    event = hub.evbus.BUS.get_nowait()
    json.loads(event.body, parse_constant=_strict)  # valid JSON: no bare NaN or Infinity


@SETTINGS
@given(body=bodies)
def test_msgpack_body_works_or_is_a_serialize_error(hub, body):
    hub.serialize.PLUGIN = "msgpack"
    before = hub.evbus.BUS.qsize()
    try:
        hub.evbus.broker.put_nowait(body=body)
    except EvbusError as e:
        assert "msgpack" in str(e)
        assert hub.evbus.BUS.qsize() == before  # nothing half-queued
        return
    msgpack.unpackb(hub.evbus.BUS.get_nowait().body, raw=False, strict_map_key=False)


def test_huge_and_deep_bodies(hub):
    hub.evbus.broker.put_nowait(body={"blob": "x" * 5_000_000})
    assert len(hub.evbus.BUS.get_nowait().body) > 5_000_000
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EvbusError):
        hub.evbus.broker.put_nowait(body=deep)
    assert hub.evbus.BUS.qsize() == 0


@SETTINGS
@given(routing_key=st.one_of(st.none(), names, st.integers(), st.binary()), profile=st.one_of(names, st.integers(), st.none()))
def test_routing_keys_and_profiles(hub, routing_key, profile):
    try:
        hub.evbus.broker.put_nowait(routing_key=routing_key, body=1, profile=profile)
    except TypeError as e:
        assert not isinstance(profile, str) or not (routing_key is None or isinstance(routing_key, str))
        assert "must be" in str(e)
        return
    event = hub.evbus.BUS.get_nowait()
    assert (event.profile, event.routing_key) == (profile, routing_key)


@settings(max_examples=15, deadline=None)
@given(patterns=st.lists(names, min_size=1, max_size=4, unique=True), profiles=st.lists(names, max_size=6),
       match=st.sampled_from(["glob", "regex"]))
def test_listener_survives_any_profile_names(patterns, profiles, match):
    hub = new_hub()

    async def scenario():
        hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {p: {"routing_key": "q"} for p in patterns}})
        contexts["match_plugin"] = match
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        try:
            await hub.evbus.init.join(timeout=5)
        except ConfigError:
            # a pattern the match plugin rejects: a clear error at start, which the listener raised
            with pytest.raises(ConfigError):
                await listener
            return
        for n, profile in enumerate(profiles):
            await hub.evbus.broker.put(body=n, profile=profile)
        await hub.evbus.init.stop(timeout=5)
        await asyncio.wait_for(listener, 10)
        queue = await hub.ingress.internal.get("q")
        arrived = [json.loads(queue.get_nowait()) for _ in range(queue.qsize())]
        find = hub.match[match].find
        expected = [
            n for n, profile in enumerate(profiles) for p in patterns if find(profile, p)
        ]
        assert sorted(arrived) == sorted(expected)

    asyncio.run(scenario())


acct_values = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans()),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=10,
)


@SETTINGS
@given(acct_data=st.one_of(acct_values, st.dictionaries(st.sampled_from(["internal", "kafka", "x"]), acct_values, max_size=3)))
def test_malformed_acct_data_is_a_config_error(hub, acct_data):
    async def scenario():
        try:
            contexts = await hub.evbus.acct.profiles(acct_data=acct_data)
        except ConfigError:
            return
        hub.evbus.route.router(contexts)  # routable contexts, or a ConfigError

    try:
        asyncio.run(scenario())
    except ConfigError:
        pass


@settings(max_examples=10, deadline=None)
# A marker keeps the secret from being a word that output holds anyway ("unrouted")
@given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#%&", min_size=6, max_size=24).map(lambda s: "Zq" + s))
def test_no_secret_in_any_output(secret):
    hub = new_hub()
    hub.pop.sub.extend(subname="ingress", static=[str(PLUGINS / "failing")])
    received = []
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Collect()
    logging.getLogger().addHandler(handler)

    async def scenario():
        hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
        contexts = await hub.evbus.acct.profiles(
            acct_data={"failing": {"default": {"user": "u", "password": secret, "token": secret[::-1]}}}
        )
        listener = asyncio.create_task(hub.evbus.init.start(contexts))
        await hub.evbus.init.join(timeout=5)
        await hub.evbus.broker.put(body={"n": 1})
        await hub.evbus.init.stop(timeout=10)
        await listener
        received.extend(hub.evbus.deadletter.read())

    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EVBUS_DEAD_LETTER_FILE"] = os.path.join(tmp, "dead.jsonl")
        os.environ["EVBUS_RETRY_ATTEMPTS"] = "1"
        try:
            hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
            asyncio.run(scenario())
        finally:
            logging.getLogger().removeHandler(handler)
            del os.environ["EVBUS_DEAD_LETTER_FILE"], os.environ["EVBUS_RETRY_ATTEMPTS"]
    output = "\n".join(records) + repr(received) + json.dumps(hub.evbus.broker.stats())
    assert received and records
    assert secret not in output and secret[::-1] not in output
