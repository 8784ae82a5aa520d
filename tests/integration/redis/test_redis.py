"""The redis ingress against a real Redis, checked with an independent redis-py client."""
import asyncio
import contextlib
import json

import pytest

from evbus.exc import LoginRefusedError
from tests.brokers import REDIS_URL
from tests.brokers import RedisReader
from tests.conftest import wait_for
from tests.integration.base import Arrived
from tests.integration.base import Reader
from tests.integration.base import RestartCase
from tests.integration.base import TransportCase

pytestmark = pytest.mark.integration


class StreamReader(Reader):
    """Streams of the test's own, read with XRANGE (deleted at the end of the test)."""

    def __init__(self, redis_reader: RedisReader):
        self.redis = redis_reader

    async def destination(self) -> str:
        return self.redis.key()

    async def take(self, destination: str, count: int) -> list[Arrived]:
        return [
            Arrived(
                fields[b"body"],
                fields[b"content_type"].decode(),
                fields[b"id"].decode(),
                float(fields[b"timestamp"]),
                fields,
            )
            for _, fields in (await self.redis.entries(destination, count))[:count]
        ]


class TestRedis(TransportCase, RestartCase):
    """Redis streams (XADD; pub/sub has cases of its own below)."""

    provider = plugin = "redis"
    no_destination_says = "no Redis stream"

    @pytest.fixture
    def reader(self, redis_reader) -> StreamReader:
        return StreamReader(redis_reader)

    def profile(self, destination: str | None, **options) -> dict:
        return {"connection": {"url": REDIS_URL}, **({"stream": destination} if destination else {}), **options}

    def wrong_port_profile(self, secret: str) -> dict:
        return {"connection": {"url": f"redis://evbus:{secret}@127.0.0.1:1/0"}, "stream": "x"}

    async def live_connection(self, hub):
        await wait_for(
            lambda: any(w.client is not None for w in hub.ingress.redis.CONNECTIONS.values()), 10, "the client at start"
        )
        [writer] = hub.ingress.redis.CONNECTIONS.values()
        return writer, writer.client

    def still_open(self, holder, client) -> bool:
        return holder.client is client

    def closed(self, holder, client) -> bool:
        return holder.client is None

    def nothing_kept(self, hub) -> bool:
        return hub.ingress.redis.CONNECTIONS == {} and len(hub.ingress.redis.BY_CTX) == 0

    async def check_stored(self, reader: StreamReader, destination: str, count: int):
        # Published means Redis answered XADD: the stream holds every event now
        assert await reader.redis.client.xlen(destination) == count

    def check_ordered(self, arrived: list[Arrived], destination: str):
        assert all(set(m.raw) == {b"body", b"id", b"timestamp", b"content_type"} for m in arrived)

    @pytest.fixture
    def restart_server(self, own_redis):
        """A redis-server of the test's own: its append-only file is synced on every write."""
        return own_redis

    async def restart_profile(self, server) -> dict:
        return {"connection": {"url": f"redis://127.0.0.1:{server.port}/0"}, "stream": "restart"}

    @contextlib.asynccontextmanager
    async def restart_reader(self, server):
        import redis.asyncio

        async def seen() -> list:
            reader = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
            try:
                return [json.loads(fields[b"body"]) for _, fields in await reader.xrange("restart")]
            finally:
                await reader.aclose()

        yield seen


async def test_stream_of_the_profile_wins_over_the_routing_key(hub, running, redis_reader):
    from_profile, from_event = redis_reader.key(), redis_reader.key()
    await running(
        {
            "redis": {
                "named": {"connection": {"url": REDIS_URL}, "stream": from_profile},
                "unnamed": {"connection": {"url": REDIS_URL}},
            }
        }
    )
    await hub.evbus.broker.put(routing_key=from_event, body="by-routing-key", profile="unnamed")
    await hub.evbus.broker.put(routing_key=from_event, body="by-profile", profile="named")
    await hub.evbus.init.stop()
    assert [e[b"body"] for _, e in await redis_reader.entries(from_event, 1)] == [b'"by-routing-key"']
    assert [e[b"body"] for _, e in await redis_reader.entries(from_profile, 1)] == [b'"by-profile"']


async def test_pubsub_channel_from_profile_or_routing_key(hub, running, redis_reader):
    channel, other = redis_reader.key(), redis_reader.key()
    queue = await redis_reader.subscribe(channel)
    other_queue = await redis_reader.subscribe(other)
    await running(
        {
            "redis": {
                "named": {"connection": {"url": REDIS_URL}, "mode": "pubsub", "channel": channel},
                "unnamed": {"connection": {"url": REDIS_URL}, "mode": "pubsub"},
            }
        }
    )
    for n in range(200):
        await hub.evbus.broker.put(body=n, profile="named")
    await hub.evbus.broker.put(routing_key=other, body="by-routing-key", profile="unnamed")
    await hub.evbus.init.stop()
    assert [json.loads(b) for b in await redis_reader.take(queue, 200)] == list(range(200))
    assert await redis_reader.take(other_queue, 1) == [b'"by-routing-key"']
    assert queue.empty() and other_queue.empty()


async def test_maxlen_caps_the_stream(hub, running, redis_reader):
    stream = redis_reader.key()
    await running({"redis": {"default": {"connection": {"url": REDIS_URL}, "stream": stream, "maxlen": 10}}})
    for n in range(1000):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.init.stop()
    # MAXLEN ~ trims whole nodes of the stream: the cap is approximate
    assert 10 <= await redis_reader.client.xlen(stream) < 1000
    [(_, last)] = await redis_reader.client.xrevrange(stream, count=1)
    assert last[b"body"] == b"999"


async def test_key_of_the_wrong_type_is_not_retried(hub, running, redis_reader, error_sink):
    key = redis_reader.key()
    await redis_reader.client.set(key, "a string")
    await running({"redis": {"default": {"connection": {"url": REDIS_URL}, "stream": key}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.broker.put(body=2)
    await hub.evbus.init.stop()
    assert len(error_sink) == 2 and "WRONGTYPE" in str(error_sink[0]["exception"])
    assert hub.evbus.broker.stats()["lanes"][0]["retried"] == 0


async def test_an_url_redis_py_cannot_use_is_not_retried(hub, running, error_sink):
    await running({"redis": {"default": {"connection": {"url": "redis-bad://127.0.0.1:6379/0"}, "stream": "s"}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1 and "redis://" in str(error["exception"])
    assert hub.evbus.broker.stats()["lanes"][0]["retried"] == 0


async def test_profiles_sharing_a_connection_share_one_client_closed_on_stop(hub, running, redis_reader):
    stream = redis_reader.key()
    name = redis_reader.key()  # the client name the server lists the plugin's connections by
    connection = {"host": "127.0.0.1", "port": 6379, "client_name": name}
    await running(
        {
            "redis": {
                "first": {"connection": connection, "stream": stream},
                "second": {"connection": connection},
            }
        }
    )

    async def connections() -> int:
        return sum(1 for client in await redis_reader.client.client_list() if client["name"] == name)

    await wait_for(
        lambda: any(w.client is not None for w in hub.ingress.redis.CONNECTIONS.values()),
        10,
        "the client at start",
    )
    # Two profiles with the same connection share one client
    [writer] = hub.ingress.redis.CONNECTIONS.values()
    client = writer.client
    for n in range(100):
        await hub.evbus.broker.put(body=n, profile="first")
    await redis_reader.entries(stream, 100)
    assert writer.client is client
    assert (count := await connections()) == 1, count
    await hub.evbus.init.stop()
    assert writer.client is None  # closed on stop
    # The server drops it from its client list once it has read the close: soon, not at once
    for _ in range(100):
        if (count := await connections()) == 0:
            break
        await asyncio.sleep(0.05)
    assert count == 0, count
    assert hub.ingress.redis.CONNECTIONS == {} and len(hub.ingress.redis.BY_CTX) == 0


async def test_password_is_masked(hub, running, error_sink, caplog):
    await running(
        {
            "redis": {
                "default": {
                    "connection": {"host": "127.0.0.1", "port": 1, "password": "pw-s3cret"},
                    "stream": "x",
                }
            }
        }
    )
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 30, "the give-up")
    assert "redis://127.0.0.1:1/0" in caplog.text
    assert "pw-s3cret" not in caplog.text + repr(error_sink)
    assert error_sink[0]["ctx"]["acct"]["connection"]["password"] == "***"


@pytest.mark.parametrize("own_redis", [["--requirepass", "right-pw"]], indirect=True)
async def test_refused_login_fails_at_once(hub, running, own_redis, error_sink, caplog):
    """WRONGPASS (a wrong password) and NOAUTH (none given): one attempt each, saying what to fix."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    await running(
        {
            "redis": {
                "wrong": {"connection": {"url": url, "password": "wrong-pw"}, "stream": "s"},
                "none": {"connection": {"url": url}, "stream": "s"},
                "right": {"connection": {"url": url, "password": "right-pw"}, "stream": "s"},
            }
        }
    )
    for profile in ("wrong", "none", "right"):
        await hub.evbus.broker.put(body=profile, profile=profile)
    await hub.evbus.init.stop()
    assert sorted(e["acct_profile"] for e in error_sink) == ["none", "wrong"]
    assert [e["attempts"] for e in error_sink] == [1, 1]
    for error in error_sink:
        assert isinstance(error["exception"], LoginRefusedError)
        assert "check the profile's username and password" in str(error["exception"])
        assert f"127.0.0.1:{own_redis.port}" in str(error["exception"])
    assert "wrong-pw" not in caplog.text + repr(error_sink)
    # the lane's early connect says the same: no "events wait for it"
    assert "a retry cannot help" in caplog.text and "events wait for it" not in caplog.text
    lanes = {lane["profile"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert [lanes[p]["retried"] for p in ("wrong", "none")] == [0, 0]
    assert (lanes["right"]["published"], lanes["right"]["failed"]) == (1, 0)


@pytest.mark.parametrize("own_redis", [["--requirepass", "admin-pw"]], indirect=True)
async def test_command_the_user_may_not_run_fails_at_once(hub, running, own_redis, error_sink):
    """NOPERM: a user who may read but not XADD; one attempt, and what to grant."""
    import redis.asyncio

    admin = redis.asyncio.Redis(port=own_redis.port, password="admin-pw")
    try:
        await admin.execute_command("ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "+@read", "+@connection")
    finally:
        await admin.aclose()
    url = f"redis://reader:reader-pw@127.0.0.1:{own_redis.port}/0"
    await running({"redis": {"default": {"connection": {"url": url}, "stream": "s"}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1
    assert isinstance(error["exception"], LoginRefusedError)
    text = str(error["exception"])
    assert "xadd" in text.lower() and "grant the profile's user the command" in text


def test_retriable_says_no_to_refusals(hub):
    import redis.exceptions

    retriable = hub.ingress.redis.retriable
    assert not retriable(redis.exceptions.AuthenticationError("invalid username-password pair"))
    assert not retriable(redis.exceptions.NoPermissionError("this user has no permissions to run the 'xadd' command"))
    assert retriable(redis.exceptions.ConnectionError("Connection refused"))
    assert retriable(redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"))


async def test_a_misspelt_profile_key_is_warned_of_at_start(hub, running, redis_reader, caplog):
    """``conection`` would leave the profile on redis-py's default server, without a word: named, with a hint."""
    stream = redis_reader.key()
    await running(
        {
            "redis": {
                "typo": {"conection": {"url": REDIS_URL}, "steam": stream, "routing_key": stream},
                "right": {"connection": {"url": REDIS_URL}, "stream": stream, "envelope": "cloudevents"},
            }
        }
    )
    await hub.evbus.init.stop()
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert sorted(warnings) == [
        "The acct profile 'typo' of provider 'redis' has a key that the redis ingress does not know, "
        "and ignores: 'conection' (did you mean 'connection'?)",
        "The acct profile 'typo' of provider 'redis' has a key that the redis ingress does not know, "
        "and ignores: 'steam' (did you mean 'stream'?)",
    ]


async def test_one_attempt_is_one_connect_without_retries_of_redis_py(hub, running, error_sink, monkeypatch):
    """
    With retry_attempts 1, an event whose connection cannot be made gets one
    attempt: one connect, not redis-py's own retries as well (a server that
    drops every connection at once counts them).
    """
    accepted = []

    async def drop(reader, writer):
        accepted.append(1)
        writer.close()

    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "1")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await running({"redis": {"default": {"connection": {"url": f"redis://127.0.0.1:{port}/0"}, "stream": "s"}}})
        # The lane's early connection at start: made (and dropped) before the event is put
        holders = hub.ingress.redis.CONNECTIONS.values()
        await wait_for(
            lambda: accepted and not any(holder.lock.get().locked() for holder in holders), 10, "the early connection"
        )
        accepted.clear()
        await hub.evbus.broker.put(body=1)
        await wait_for(lambda: len(error_sink) == 1, 10, "the event given up")
    finally:
        server.close()
    assert error_sink[0]["attempts"] == 1
    assert len(accepted) == 1
