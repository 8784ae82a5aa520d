"""
Broker test cases written once and run for every transport.

Each transport's test module subclasses :class:`TransportCase` (FastStream's
layout): the subclass says how to make a profile for a destination, how to
read what arrived there with a client of the test's own (:class:`Reader`),
and the few details in which transports differ (what an event without a
destination is told, what to look at on a live connection). What is specific
to one broker (Kafka partitions, AMQP returns, JetStream acks, Redis pub/sub,
MQTT QoS) stays in that transport's module.

The checks look at what users see and what survives a rename of the plugins'
exception classes: the error text, the dead letter, whether the plugin calls
the error retriable, and the counts of ``stats()``.
"""
import asyncio
import json
import time
from typing import Any
from typing import NamedTuple

import msgpack
import pytest

from tests.conftest import wait_for


class Arrived(NamedTuple):
    """One message as an independent client read it, with evbus's metadata of it."""

    body: bytes
    content_type: str | None
    id: str | None
    timestamp: float | None
    raw: Any  # the client's own message, for checks of one transport


class Reader:
    """An independent client of the broker: makes destinations and reads what arrived there."""

    async def destination(self) -> str:
        """:return: A new destination (topic, queue, subject, stream), ready to receive"""
        raise NotImplementedError

    async def take(self, destination: str, count: int) -> list[Arrived]:
        """:return: The first ``count`` messages of a destination, in order (fails after a timeout)"""
        raise NotImplementedError


class TransportCase:
    """
    The cases every transport runs. A subclass sets the attributes and
    implements the ``reader`` fixture and the methods that raise NotImplementedError.
    """

    #: The acct provider of the plugin's profiles
    provider: str
    #: The hub name of the ingress plugin
    plugin: str
    #: What the error and the dead letter of an event without a destination say
    no_destination_says: str
    #: What the error and the dead letter of the wrong port say (where the broker was looked for)
    wrong_port_says: tuple[str, ...] = ("127.0.0.1:1",)
    #: Environment of the wrong-port case (a shorter publish timeout where a connect waits long)
    wrong_port_env: dict[str, str] = {}
    #: Profile options of the ordered case (beside the destination)
    ordered_options: dict[str, Any] = {}
    #: Profile options of the direct publish (e.g. an acknowledged QoS)
    direct_options: dict[str, Any] = {}

    @pytest.fixture
    def reader(self) -> Reader:
        raise NotImplementedError

    def profile(self, destination: str | None, **options) -> dict:
        """:return: A profile that sends to ``destination`` (None: the profile names no destination)"""
        raise NotImplementedError

    def wrong_port_profile(self, secret: str) -> dict:
        """:return: A profile of a broker on 127.0.0.1 port 1, with ``secret`` as its password (or token)"""
        raise NotImplementedError

    async def live_connection(self, hub) -> tuple[Any, Any]:
        """
        Wait until the plugin connected at start.

        :return: (what the plugin keeps per profile, the client library's connection in it)
        """
        raise NotImplementedError

    def still_open(self, holder, client) -> bool:
        """:return: Whether ``holder`` still has ``client``, open"""
        raise NotImplementedError

    def closed(self, holder, client) -> bool:
        """:return: Whether ``client`` was closed (and ``holder`` let go of it)"""
        raise NotImplementedError

    def nothing_kept(self, hub) -> bool:
        """:return: Whether the plugin keeps no connection any more"""
        raise NotImplementedError

    def check_ordered(self, arrived: list[Arrived], destination: str):
        """More checks of one transport on the messages of the ordered case."""

    async def check_stored(self, reader: Reader, destination: str, count: int):
        """Checks of one transport right after the stop, before the reader waits for anything."""

    def check_routed(self, message: Arrived, destination: str):
        """More checks of one transport on a message routed by the event's routing key."""

    def check_wrong_port(self, error: dict):
        """More checks of one transport on the error-callback data of the wrong port."""

    def acct(self, profile: dict, name: str = "default") -> dict:
        return {self.provider: {name: profile}}

    async def test_order_body_metadata_and_counts(self, hub, running, reader):
        destination = await reader.destination()
        await running(self.acct(self.profile(destination, **self.ordered_options)))
        before = time.time()
        for n in range(500):
            await hub.evbus.broker.put(body={"n": n})
        await hub.evbus.init.stop()
        lane = hub.evbus.broker.stats()["lanes"][0]
        assert (lane["published"], lane["failed"]) == (500, 0)
        await self.check_stored(reader, destination, 500)
        arrived = await reader.take(destination, 500)
        assert [json.loads(m.body) for m in arrived] == [{"n": n} for n in range(500)]
        assert arrived[0].body == b'{"n": 0}'  # the body as serialized, nothing around it
        assert all(m.content_type == "application/json" for m in arrived)
        ids = [m.id for m in arrived]
        assert all(ids) and len(set(ids)) == 500
        assert all(before - 1 <= m.timestamp <= time.time() + 1 for m in arrived)
        self.check_ordered(arrived, destination)

    async def test_msgpack_body_and_content_type(self, hub, running, reader):
        destination = await reader.destination()
        hub.serialize.PLUGIN = "msgpack"
        await running(self.acct(self.profile(destination)))
        before = time.time()
        for n in range(20):
            await hub.evbus.broker.put(body={"n": n, "a": [1, 2]})
        await hub.evbus.init.stop()
        arrived = await reader.take(destination, 20)
        assert [msgpack.unpackb(m.body) for m in arrived] == [{"n": n, "a": [1, 2]} for n in range(20)]
        assert all(m.content_type == "application/msgpack" for m in arrived)
        assert len({m.id for m in arrived}) == 20
        assert all(before - 1 <= m.timestamp <= time.time() + 1 for m in arrived)

    async def test_routing_key_is_the_destination_when_the_profile_names_none(self, hub, running, reader):
        destination = await reader.destination()
        await running(self.acct(self.profile(None)))
        await hub.evbus.broker.put(routing_key=destination, body="by-routing-key")
        await hub.evbus.init.stop()
        [message] = await reader.take(destination, 1)
        assert message.body == b'"by-routing-key"'
        self.check_routed(message, destination)

    async def test_event_without_destination_is_dead_lettered_at_once(self, hub, running, reader, error_sink):
        """No topic, subject, key or queue: one attempt, not retried, a dead letter that says why."""
        await running(self.acct(self.profile(None)))
        await hub.evbus.broker.put(body=1)
        await hub.evbus.init.stop()
        [error] = error_sink
        assert self.no_destination_says in str(error["exception"])
        assert error["attempts"] == 1
        assert not getattr(hub.ingress, self.plugin).retriable(error["exception"])
        [dead] = hub.evbus.deadletter.read()
        assert self.no_destination_says in dead["error"] and dead["attempts"] == 1
        assert dead["plugin"] == self.plugin and dead["acct_profile"] == "default"
        lane = hub.evbus.broker.stats()["lanes"][0]
        assert (lane["published"], lane["retried"], lane["failed"], lane["dead_lettered"]) == (0, 0, 1, 1)

    async def test_one_connection_per_profile_reused_and_closed(self, hub, running, reader):
        destination = await reader.destination()
        await running(self.acct(self.profile(destination)))
        holder, client = await self.live_connection(hub)
        for n in range(100):
            await hub.evbus.broker.put(body=n)
        assert [json.loads(m.body) for m in await reader.take(destination, 100)] == list(range(100))
        assert self.still_open(holder, client)  # the one it opened at start
        await hub.evbus.init.stop()
        assert self.closed(holder, client)  # closed on stop
        assert self.nothing_kept(hub)

    async def test_wrong_port_is_a_clear_error_naming_host_and_port(
        self, hub, running, error_sink, caplog, monkeypatch
    ):
        """Retried, then dead-lettered; the log, the error and the dead letter name the address, never the secret."""
        for name, value in self.wrong_port_env.items():
            monkeypatch.setenv(name, value)
        hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
        secret = "s3cret-pw"
        await running(self.acct(self.wrong_port_profile(secret)))
        await hub.evbus.broker.put(body=1)
        await wait_for(lambda: len(error_sink) == 1, 60, "the give-up")
        exception = str(error_sink[0]["exception"])
        assert "127.0.0.1:1" in caplog.text
        assert all(text in exception for text in self.wrong_port_says), exception
        [dead] = hub.evbus.deadletter.read()
        assert all(text in dead["error"] for text in self.wrong_port_says), dead["error"]
        assert secret not in caplog.text + exception + repr(error_sink) + json.dumps(dead, default=str)
        self.check_wrong_port(error_sink[0])
        # (counted once the error callback returned)
        await wait_for(lambda: hub.evbus.broker.stats()["lanes"][0]["failed"] == 1, 10, "the give-up counted")
        lane = hub.evbus.broker.stats()["lanes"][0]
        assert (lane["published"], lane["retried"], lane["failed"]) == (0, 2, 1)

    async def test_publish_of_the_ingress_contract_waits_for_the_ack(self, hub, reader):
        """The plugin's own ``publish``, without the bus: the message is there when it returns."""
        from dict_tools import data

        destination = await reader.destination()
        ctx = data.NamespaceDict(acct=data.NamespaceDict(self.profile(destination, **self.direct_options)))
        plugin = getattr(hub.ingress, self.plugin)
        await plugin.publish(ctx, destination, b'"direct"')
        await plugin.close(ctx)
        [message] = await reader.take(destination, 1)
        assert message.body == b'"direct"' and message.content_type == "application/json"
        assert self.nothing_kept(hub)


class RestartCase:
    """
    A broker stopped and started again while events flow: nothing evbus
    counted as published is lost. For the transports whose broker keeps what
    it acknowledged across a restart (a Kafka-compatible Tansu here forgets
    everything: the kafka module has its own case).

    A subclass implements the ``restart_server`` fixture (``stop()``,
    ``start()``, ``running``, see :func:`tests.brokers.put_through_a_restart`),
    :meth:`restart_profile` and :meth:`restart_reader`.
    """

    provider: str
    #: Events put while the broker stops and starts
    restart_total = 2000
    #: Whether a copy sent again by a retry is dropped by the broker (an id it deduplicates on)
    restart_drops_copies = False
    #: Retries that outlast the outage
    restart_env = {
        "EVBUS_RETRY_ATTEMPTS": "200",
        "EVBUS_RETRY_SECONDS": "60",
        "EVBUS_RETRY_BACKOFF": "0.05",
        "EVBUS_RETRY_BACKOFF_MAX": "0.5",
        "EVBUS_PUBLISH_TIMEOUT": "5",
    }

    @pytest.fixture
    def restart_server(self):
        raise NotImplementedError

    async def restart_profile(self, server) -> dict:
        """:return: The profile of a destination on ``server`` that keeps what it acknowledged"""
        raise NotImplementedError

    def restart_reader(self, server):
        """
        :return: An async context manager, entered before the first event and left
            after the stop, that yields ``async seen() -> list`` of the bodies that
            arrived (decoded), copies included
        """
        raise NotImplementedError

    async def test_restart_mid_stream_loses_nothing_acknowledged(self, hub, running, restart_server, monkeypatch):
        from tests.brokers import put_through_a_restart

        for name, value in self.restart_env.items():
            monkeypatch.setenv(name, value)
        hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
        total = self.restart_total
        bodies: list = []
        async with self.restart_reader(restart_server) as seen:
            await running({self.provider: {"default": await self.restart_profile(restart_server)}})
            [lane] = hub.evbus.route.all_lanes()
            await put_through_a_restart(hub, lane, restart_server, total)
            assert await hub.evbus.init.stop(timeout=90) == 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while set(bodies := await seen()) != set(range(total)) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        assert set(bodies) == set(range(total)), f"missing: {sorted(set(range(total)) - set(bodies))[:20]}"
        if self.restart_drops_copies:
            assert len(bodies) == total  # copies sent again by a retry were dropped
        assert (lane.published, lane.failed) == (total, 0) and lane.retried >= 1
