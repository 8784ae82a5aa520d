"""The nats ingress against a real NATS server with JetStream, checked with an independent nats-py client."""
import asyncio
import contextlib
import json

import pytest

from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from tests.brokers import NATS_URL
from tests.brokers import NatsConsumer
from tests.brokers import unique
from tests.conftest import wait_for
from tests.integration.base import Arrived
from tests.integration.base import Reader
from tests.integration.base import RestartCase
from tests.integration.base import TransportCase

pytestmark = pytest.mark.integration


class NatsReader(Reader):
    """Core NATS subjects of the test's own, subscribed to before anything is published."""

    def __init__(self, consumer: NatsConsumer):
        self.consumer = consumer
        self.queues: dict[str, asyncio.Queue] = {}

    async def destination(self) -> str:
        subject = unique() + ".core"
        self.queues[subject] = await self.consumer.subscribe(subject)
        return subject

    async def take(self, destination: str, count: int) -> list[Arrived]:
        return [
            Arrived(
                m.data,
                m.headers["Content-Type"],
                m.headers["Evbus-Id"],
                float(m.headers["Evbus-Timestamp"]),
                m,
            )
            for m in await self.consumer.take(self.queues[destination], count)
        ]


class TestNats(TransportCase, RestartCase):
    """Core NATS (JetStream has cases of its own below); the restart goes to JetStream."""

    provider = plugin = "nats"
    no_destination_says = "no NATS subject"
    wrong_port_says = ("127.0.0.1:1", "cannot connect")

    @pytest.fixture
    def reader(self, nats_consumer) -> NatsReader:
        return NatsReader(nats_consumer)

    def profile(self, destination: str | None, **options) -> dict:
        return {"connection": {"servers": NATS_URL}, **({"subject": destination} if destination else {}), **options}

    def wrong_port_profile(self, secret: str) -> dict:
        # a password in the URL, and a token
        return {"connection": {"servers": f"nats://evbus:{secret}@127.0.0.1:1", "token": f"t0ken-{secret}"}, "subject": "x"}

    async def live_connection(self, hub):
        await wait_for(
            lambda: any(c.client is not None for c in hub.ingress.nats.CONNECTIONS.values()),
            10,
            "the connection at start",
        )
        [connection] = hub.ingress.nats.CONNECTIONS.values()
        return connection, connection.client

    def still_open(self, holder, client) -> bool:
        return holder.client is client and client.is_connected and client.stats["reconnects"] == 0

    def closed(self, holder, client) -> bool:
        return client.is_closed

    def nothing_kept(self, hub) -> bool:
        return hub.ingress.nats.CONNECTIONS == {} and len(hub.ingress.nats.BY_CTX) == 0

    def check_ordered(self, arrived: list[Arrived], destination: str):
        assert all(m.raw.subject == destination for m in arrived)
        assert all("Nats-Msg-Id" not in m.raw.headers for m in arrived)  # core NATS: no dedup id

    def check_routed(self, message: Arrived, destination: str):
        assert message.raw.subject == destination

    # A nats-server of the test's own, stopped and started again while events flow to
    # JetStream: every event is in the stream afterwards, once (by its Nats-Msg-Id)
    restart_drops_copies = True

    @pytest.fixture
    def restart_server(self, own_nats):
        return own_nats

    async def restart_profile(self, server) -> dict:
        import nats

        url = f"nats://127.0.0.1:{server.port}"
        admin = await nats.connect(url)
        try:
            await admin.jetstream().add_stream(name="RESTART", subjects=["restart.events"])
        finally:
            await admin.close()
        return {"connection": {"servers": url}, "subject": "restart.events", "jetstream": True}

    @contextlib.asynccontextmanager
    async def restart_reader(self, server):
        import nats

        async def seen() -> list:
            reader = await nats.connect(f"nats://127.0.0.1:{server.port}")
            js = reader.jetstream()
            try:
                held = (await js.stream_info("RESTART")).state.messages
                return [json.loads((await js.get_msg("RESTART", seq)).data) for seq in range(1, held + 1)]
            finally:
                await reader.close()

        yield seen


async def test_jetstream_acknowledged_with_dedup_id(hub, running, nats_consumer):
    stream, subject = await nats_consumer.stream()
    await running(
        {
            "nats": {
                "default": {
                    "connection": {"servers": NATS_URL},
                    "subject": subject,
                    "jetstream": True,
                    "stream": stream,
                }
            }
        }
    )
    for n in range(500):
        await hub.evbus.broker.put(body={"n": n})
    await hub.evbus.init.stop()
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"]) == (500, 0)
    # Published means acknowledged: the stream holds every event now, without waiting
    assert (await nats_consumer.js.stream_info(stream)).state.messages == 500
    messages = await nats_consumer.messages(stream, 500)
    assert [json.loads(m.data) for m in messages] == [{"n": n} for n in range(500)]
    assert all(m.headers["Nats-Msg-Id"] == m.headers["Evbus-Id"] for m in messages)
    assert all(m.headers["Content-Type"] == "application/json" for m in messages)
    assert len({m.headers["Evbus-Id"] for m in messages}) == 500


async def test_jetstream_drops_a_copy_sent_again(hub, nats_consumer):
    """A retry sends an event again with the same Nats-Msg-Id: the stream keeps one."""
    from dict_tools import data

    from evbus.types import Event

    stream, subject = await nats_consumer.stream()
    ctx = data.NamespaceDict(acct=data.NamespaceDict(connection={"servers": NATS_URL}, jetstream=True))
    event = Event(profile="default", routing_key=subject, body=b'"once"')
    acks = [await (await hub.ingress.nats.send(ctx, subject, event)) for _ in range(3)]
    await hub.ingress.nats.close(ctx)
    assert [ack.stream for ack in acks] == [stream] * 3
    assert [bool(ack.duplicate) for ack in acks] == [False, True, True]
    [message] = await nats_consumer.messages(stream, 1)
    assert message.data == b'"once"'
    assert (await nats_consumer.js.stream_info(stream)).state.messages == 1


async def test_routing_key_from_event_wins_over_subject(hub, running, nats_consumer):
    from_profile, from_event = unique() + ".profile", unique() + ".event"
    profile_queue = await nats_consumer.subscribe(from_profile)
    event_queue = await nats_consumer.subscribe(from_event)
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": from_profile}}})
    await hub.evbus.broker.put(routing_key=from_event, body="to-event-subject")
    await hub.evbus.broker.put(body="to-profile-subject")
    await hub.evbus.init.stop()
    assert [m.data for m in await nats_consumer.take(event_queue, 1)] == [b'"to-event-subject"']
    assert [m.data for m in await nats_consumer.take(profile_queue, 1)] == [b'"to-profile-subject"']


async def test_missing_stream_is_reported(hub, running, nats_server, error_sink, caplog):
    await running(
        {
            "nats": {
                "default": {
                    "connection": {"servers": NATS_URL},
                    "subject": unique(),
                    "jetstream": True,
                    "stream": "EVBUS_NO_SUCH_STREAM",
                }
            }
        }
    )
    await wait_for(lambda: "Cannot connect" in caplog.text, 10, "the warning at start")
    assert "EVBUS_NO_SUCH_STREAM" in caplog.text
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 20, "the give-up")
    assert "EVBUS_NO_SUCH_STREAM" in str(error_sink[0]["exception"])
    assert "create it" in str(error_sink[0]["exception"])
    assert error_sink[0]["attempts"] == 1  # a retry cannot create the stream


async def test_server_restart_core_nats_goes_on(hub, running, own_nats, monkeypatch):
    """Core NATS after a restart: the lane reconnects and every event put after it arrives."""
    import nats

    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "200")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "60")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("EVBUS_RETRY_BACKOFF_MAX", "0.5")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    url = f"nats://127.0.0.1:{own_nats.port}"
    await running({"nats": {"default": {"connection": {"servers": url}, "subject": "core.events"}}})
    [lane] = hub.evbus.route.all_lanes()
    await hub.evbus.broker.put(body="before")
    await wait_for(lambda: lane.published == 1, 10, "the first event")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, own_nats.stop)
        await hub.evbus.broker.put(body="while-down")
        await wait_for(lambda: lane.retried >= 1, 30, "a failed publish while the server is down")
    finally:
        await loop.run_in_executor(None, own_nats.start)
    # Sent once the server is back; core NATS kept it for no one
    await wait_for(lambda: lane.published == 2, 30, "the event put while the server was down")
    reader = NatsConsumer(await nats.connect(url))
    try:
        received = await reader.subscribe("core.events")
        for n in range(50):
            await hub.evbus.broker.put(body=n)
        assert await hub.evbus.init.stop(timeout=60) == 0
        got = await reader.take(received, 50)
    finally:
        await reader.client.close()
    assert [json.loads(m.data) for m in got] == list(range(50))
    assert (lane.published, lane.failed) == (52, 0)


async def test_publish_of_the_ingress_contract_waits_for_the_jetstream_ack(hub, nats_consumer):
    """JetStream: the stream holds the message when publish returns (core NATS: the shared case)."""
    from dict_tools import data

    stream, subject = await nats_consumer.stream()
    jetstream = data.NamespaceDict(acct=data.NamespaceDict(connection={"servers": NATS_URL}, jetstream=True))
    await hub.ingress.nats.publish(jetstream, subject, b'"direct"')
    assert (await nats_consumer.js.stream_info(stream)).state.messages == 1
    await hub.ingress.nats.close(jetstream)
    assert hub.ingress.nats.CONNECTIONS == {}


async def test_subject_no_stream_takes_fails_at_once(hub, running, nats_server, error_sink):
    """JetStream to a subject that no stream covers: one attempt, and a message that says what to do."""
    subject = unique() + ".nowhere"
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": subject, "jetstream": True}}})
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1
    assert f"create a stream for subject '{subject}'" in str(error["exception"])
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["retried"], lane["failed"], lane["down"]) == (0, 1, False)


async def test_subject_of_another_stream_than_the_profile_names_fails_at_once(hub, running, nats_consumer, error_sink):
    named, _ = await nats_consumer.stream()
    other, subject = await nats_consumer.stream()
    await running(
        {
            "nats": {
                "default": {
                    "connection": {"servers": NATS_URL},
                    "subject": subject,
                    "jetstream": True,
                    "stream": named,
                }
            }
        }
    )
    await hub.evbus.broker.put(body=1)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1
    text = str(error["exception"])
    assert f"goes to JetStream stream '{other}'" in text and f"profile's stream '{named}'" in text


async def test_stream_made_after_a_refusal_takes_the_next_events(hub, running, nats_consumer, error_sink):
    """A refused subject is checked again for each event: once a stream takes it, events flow."""
    subject = unique() + ".later"
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": subject, "jetstream": True}}})
    await hub.evbus.broker.put(body="refused")
    await wait_for(lambda: len(error_sink) == 1, 10, "the refusal")
    name = unique("EVBUS_TEST").replace("-", "_").upper()
    await nats_consumer.js.add_stream(name=name, subjects=[subject])
    nats_consumer.streams.append(name)
    await hub.evbus.broker.put(body="taken")
    await hub.evbus.init.stop()
    assert [json.loads(m.data) for m in await nats_consumer.messages(name, 1)] == ["taken"]
    assert len(error_sink) == 1


@pytest.mark.parametrize("own_nats", [["--user", "evbus", "--pass", "right-pw"]], indirect=True)
async def test_refused_login_fails_at_once(hub, running, own_nats, error_sink, caplog):
    url = f"nats://127.0.0.1:{own_nats.port}"
    subject = unique()
    await running(
        {
            "nats": {
                "wrong": {"connection": {"servers": url, "user": "evbus", "password": "wrong-pw"}, "subject": subject},
                "right": {"connection": {"servers": url, "user": "evbus", "password": "right-pw"}, "subject": subject},
            }
        }
    )
    await hub.evbus.broker.put(body=1, profile="wrong")
    await hub.evbus.broker.put(body=2, profile="right")
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["acct_profile"] == "wrong" and error["attempts"] == 1
    assert isinstance(error["exception"], LoginRefusedError)
    text = str(error["exception"])
    assert "Authorization Violation" in text and "check the profile's user and password" in text
    assert "wrong-pw" not in text + caplog.text
    lanes = {lane["profile"]: lane for lane in hub.evbus.broker.stats()["lanes"]}
    assert (lanes["wrong"]["retried"], lanes["wrong"]["failed"]) == (0, 1)
    assert (lanes["right"]["published"], lanes["right"]["failed"]) == (1, 0)


async def test_message_over_max_payload_fails_at_once_and_alone(hub, running, nats_consumer, error_sink):
    """Over the server's max_payload (1 MB by default): one attempt; the events around it arrive, once each."""
    subject = unique()
    queue = await nats_consumer.subscribe(subject)
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": subject}}})
    big = "x" * (nats_consumer.client.max_payload + 1)
    for body in (0, 1, big, 3, 4):
        await hub.evbus.broker.put(body=body)
    await hub.evbus.init.stop()
    [error] = error_sink
    assert error["attempts"] == 1 and json.loads(error["body"]) == big
    assert isinstance(error["exception"], MessageTooLargeError)
    assert "max_payload" in str(error["exception"])
    assert [json.loads(m.data) for m in await nats_consumer.take(queue, 4)] == [0, 1, 3, 4]
    lane = hub.evbus.broker.stats()["lanes"][0]
    assert (lane["published"], lane["failed"], lane["retried"]) == (4, 1, 0)


class PlainServer:
    """A NATS server of the test's own that does not require TLS: it says INFO and keeps what clients send."""

    def __init__(self):
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        info = {"server_id": "plain", "version": "2.10.0", "proto": 1, "max_payload": 1048576, "auth_required": True}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received += data
        writer.close()

    async def close(self):
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("asks", ["tls_block", "tls_url"])
async def test_a_profile_that_asks_for_tls_sends_nothing_to_a_server_without_it(hub, running, error_sink, asks):
    """nats-py would log in and publish in the clear where the server's INFO lacks tls_required: refused at once."""
    plain = PlainServer()
    port = await plain.start()
    try:
        scheme, block = ("nats", {"tls": {}}) if asks == "tls_block" else ("tls", {})
        connection = {"servers": f"{scheme}://127.0.0.1:{port}", "user": "alice", "password": "plain-s3cret"}
        await running({"nats": {"default": {"connection": connection, "subject": "x", **block}}})
        await hub.evbus.broker.put(body={"secret": "event"})
        await wait_for(lambda: len(error_sink) == 1, 30, "the refusal")
        await hub.evbus.init.stop()
    finally:
        await plain.close()
    [error] = error_sink
    assert error["attempts"] == 1
    assert f"127.0.0.1:{port} does not require TLS" in str(error["exception"])
    assert not hub.ingress.nats.retriable(error["exception"])
    # Not the login, not the event: nothing at all
    assert bytes(plain.received) == b""
    [lane] = hub.evbus.broker.stats()["lanes"]
    assert (lane["published"], lane["retried"], lane["failed"]) == (0, 0, 1)


async def test_a_tls_block_against_the_plain_nats_server_is_refused(hub, running, error_sink, nats_consumer):
    """The machine's NATS, which does not speak TLS: the event is dead-lettered, not published in the clear."""
    subject = unique()
    queue = await nats_consumer.subscribe(subject)
    await running({"nats": {"default": {"connection": {"servers": NATS_URL}, "subject": subject, "tls": {}}}})
    await hub.evbus.broker.put(body=1)
    await wait_for(lambda: len(error_sink) == 1, 30, "the refusal")
    await hub.evbus.init.stop()
    assert "does not require TLS" in str(error_sink[0]["exception"])
    [lane] = hub.evbus.broker.stats()["lanes"]
    assert (lane["published"], lane["failed"]) == (0, 1)
    # A round trip of the consumer's own: what the server had for its subscription has reached it
    await nats_consumer.client.flush()
    assert queue.empty()
