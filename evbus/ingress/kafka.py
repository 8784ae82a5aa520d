"""
Kafka ingress, with one producer per profile, started at start and reused by
every event.

Accepts the acct provider ``kafka``. Install with ``pip install "evbus-ng[kafka]"``.

.. code-block:: yaml

    kafka:
      my_profile:
        topics:                   # the event's routing key is the topic when this is empty
          - topic1
        key: my-key               # message key; the event's routing key when empty
        partition:                # optional fixed partition
        connection:               # keyword arguments of aiokafka.AIOKafkaProducer
          bootstrap_servers: 127.0.0.1:9092
          client_id: evbus
          acks: all               # 0, 1 or all; a publish counts once acknowledged so
          compression_type: gzip
          security_protocol: SASL_SSL
          sasl_mechanism: PLAIN
          sasl_plain_username: user
          sasl_plain_password: secret
        tls:                      # optional: TLS (see evbus.tls); {} for the defaults; "ssl" is an alias
          ca_file: /path/ca.pem
          cert_file: /path/client.pem
          key_file: /path/client.key
          password: key-password
          check_hostname: true    # the default; false turns hostname checking off (a warning)
          server_hostname: kafka.example  # optional: the name the brokers' certificates are for
        envelope: cloudevents     # optional: send CloudEvents (evbus.cloudevents)

Kafka keeps order within a partition: a lane's events stay in order at the
consumer when they share a partition, so give the profile a ``key`` (or a
``partition``), or put events with a routing key.

Messages go to the producer in batches, one per topic and partition
(aiokafka's ``create_batch()`` and ``send_batch()``): what a lane hands off
while the loop runs on (the events that wait, in one ``send_many``) is
appended to the open batch of its partition, which is handed to the
producer as soon as the lane waits; a lone event goes at once, alone. A
batch that is full is handed off and a new one started. An event with a key
goes to the partition the producer's partitioner picks for that key, so
events of one key keep their order; events without one go, batch by batch,
to a partition the partitioner picks. Each event is confirmed when its batch
is (per ``acks``); when a batch fails, each of its events fails, and the
lane retries them (or, for an error a retry cannot help, sends them one at
a time to find whose it is).

Each message carries the headers ``id``, ``timestamp`` (seconds since the
epoch) and ``content-type`` of its event, and the event's time as the Kafka
timestamp; with tracing on, ``traceparent`` and ``tracestate``; in CloudEvents
binary mode, ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type`` and
``ce_time``.

What a retry cannot change fails at once: a SASL login the broker refuses
(aiokafka reports only that it could not bootstrap; the plugin then asks
the first bootstrap server once more to learn why), an authorization error,
and a message over ``max_request_size`` or the broker's limit. A timeout of
aiokafka's own is retried: brokers time out while they restart.

TLS: the profile's ``tls`` block (the same in every broker profile; the
``ssl`` block of evbus-kafka is an alias) makes the SSL context of the
connections (aiokafka's ``ssl_context``, with ``security_protocol: SSL``
unless the profile says ``SASL_SSL``), with the brokers' certificates
verified and their host names checked. ``security_protocol: SSL`` (or
``SASL_SSL``) without a block is TLS with the defaults. aiokafka reports
only that it could not bootstrap: when that happens over TLS, the plugin
tries one handshake with the first bootstrap server to learn why, and a
certificate that is not trusted or not for the host, or a client
certificate the broker requires and did not get, fails at once, saying so.
"""
import asyncio
import collections
import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import Any

from evbus.connection import import_error

try:
    import aiokafka
    import aiokafka.conn
    import aiokafka.errors
    import aiokafka.partitioner
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    # Errors of a SASL login the broker refused
    LOGIN_REFUSED = (
        aiokafka.errors.SaslAuthenticationFailed,
        aiokafka.errors.AuthenticationFailedError,
        aiokafka.errors.AuthenticationMethodNotSupported,
        aiokafka.errors.UnsupportedSaslMechanismError,
        aiokafka.errors.IllegalSaslStateError,
    )
    NOT_AUTHORIZED = (
        aiokafka.errors.TopicAuthorizationFailedError,
        aiokafka.errors.ClusterAuthorizationFailedError,
        aiokafka.errors.TransactionalIdAuthorizationFailed,
    )
    TOO_LARGE = (
        aiokafka.errors.MessageSizeTooLargeError,
        aiokafka.errors.RecordTooLargeError,
        aiokafka.errors.RecordListTooLargeError,
    )

    IMPORT_ERROR = None
except ImportError as e:  # missing or older than the extra's floor (raised again when broken)
    IMPORT_ERROR = import_error(e, ("aiokafka",))

from evbus import cloudevents
from evbus import tls
from evbus.connection import Holder
from evbus.connection import Route
from evbus.connection import connection_key
from evbus.connection import fail_waiting
from evbus.connection import hub_functions
from evbus.connection import listen_error
from evbus.connection import options
from evbus.connection import retry_helps
from evbus.connection import set_up
from evbus.connection import virtual
from evbus.exc import ConnectError
from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from evbus.exc import NoDestinationError
from evbus.exc import TlsConfigError


# evbus listen: milliseconds without a record after which the listener checks that a broker still answers
LISTEN_PROBE_MS = 5000
# Seconds a listener's consumer gets to close what aiokafka's stop() left open
STOP_GRACE = 5.0
# aiokafka's default max_request_size
MAX_REQUEST_SIZE = 1048576
# The producer's max_batch_size unless the connection sets it (aiokafka's default is 16 KiB):
# a backlog goes in a sixteenth of the produce requests, which is what a broker's work is counted
# in; well below a broker's default message.max.bytes (1 MB), and never above max_request_size
BATCH_BYTES = 256 * 1024

__contracts__ = ["broker", "batches"]


def __virtual__(hub):
    return virtual(IMPORT_ERROR, "the kafka ingress (acct provider kafka) needs aiokafka", "kafka")


def __init__(hub):
    profile_keys = ("topics", "key", "partition", "connection", "tls", "ssl")
    # CONNECTIONS: connection key -> Producer; BY_CTX: a lane's ctx -> its Outbox
    set_up(hub, "kafka", acct=["kafka"], profile_keys=profile_keys, holder=_producer, route=Outbox, key=_key)


# The names of a profile's tls block: evbus-kafka's "ssl" is an alias
TLS_NAMES = ("ssl",)
# security_protocol of aiokafka -> the one with TLS
OVER_TLS = {"PLAINTEXT": "SSL", "SASL_PLAINTEXT": "SASL_SSL"}


def ssl_context(hub, options: dict) -> ssl.SSLContext:
    """
    Build the SSL context of a Kafka connection from a profile's ``tls`` (or ``ssl``) block.

    :param options: Any subset of ``ca_file``, ``cert_file``, ``key_file``,
        ``password``, ``check_hostname`` (default true) and ``server_hostname``
    :raises TlsConfigError: naming a file that is missing or unreadable, or a
        key that does not match its certificate
    """
    return tls.TlsOptions.parse(options).context()


def _producer_kwargs(hub, ctx) -> dict:
    """
    The keyword arguments of aiokafka's producer: the profile's connection,
    with the SSL context of its ``tls`` block, and ``max_batch_size``
    BATCH_BYTES unless the connection sets it.

    :raises TlsConfigError: for a tls block evbus cannot use, or one with a
        plaintext ``security_protocol``
    """
    kwargs = options(ctx)
    limit = kwargs.get("max_request_size", MAX_REQUEST_SIZE)
    if isinstance(limit, int):  # (aiokafka says what is wrong with any other)
        kwargs.setdefault("max_batch_size", min(BATCH_BYTES, limit))
    block = tls.block(ctx.acct, TLS_NAMES)
    protocol = str(kwargs.get("security_protocol", "PLAINTEXT")).upper()
    if block is not None and "ssl_context" not in kwargs:
        if "security_protocol" in kwargs and protocol in OVER_TLS:
            raise TlsConfigError(
                f"the profile has a tls block and security_protocol {protocol}: "
                f"use {OVER_TLS[protocol]} (or leave it out: SSL is the default with a tls block)"
            )
        kwargs["ssl_context"] = hub.ingress.kafka.ssl_context(block)
        kwargs.setdefault("security_protocol", "SSL")
    elif protocol in OVER_TLS.values() and kwargs.get("ssl_context") is None:
        # TLS with the defaults: the system's trust store, host names checked
        kwargs["ssl_context"] = hub.ingress.kafka.ssl_context({})
    return kwargs


def _key(ctx) -> str:
    """:return: The connection key of a profile, whose tls block may be named ssl"""
    return connection_key(ctx, aliases=TLS_NAMES)


class Producer(Holder):
    """
    One profile's producer, started once.

    :param kwargs_factory: Makes the keyword arguments of aiokafka's producer (when it starts)
    """

    def __init__(self, where: str, kwargs_factory: Callable[[], dict]):
        super().__init__(where)
        self.kwargs_factory = kwargs_factory
        self.producer: Any = None
        # The producer's partitioner and max_request_size (its options, or aiokafka's defaults)
        self.partitioner: Any = None
        self.max_request_size = MAX_REQUEST_SIZE

    @property
    def ready(self) -> bool:
        return self.producer is not None and self.loop is asyncio.get_running_loop()

    async def connect(self):
        kwargs = self.kwargs_factory()
        producer = aiokafka.AIOKafkaProducer(**kwargs)
        try:
            await producer.start()
        except BaseException as e:
            await producer.stop()
            if isinstance(e, LOGIN_REFUSED):  # aiokafka 0.11 raises the refusal itself
                raise _refused_login(e, self.where) from e
            if isinstance(e, aiokafka.errors.KafkaConnectionError):
                refusal = await _tls_refusal(kwargs, self.where) or await _login_refusal(kwargs, self.where)
                if refusal is not None:
                    raise refusal from e
                # aiokafka names the servers as tuples of its own ("Unable to bootstrap from [('host', port, ...)]")
                raise ConnectError(f"cannot connect to {self.where}: {e}") from e
            raise
        self.partitioner = kwargs.get("partitioner") or aiokafka.partitioner.DefaultPartitioner()
        self.max_request_size = kwargs.get("max_request_size", MAX_REQUEST_SIZE)
        self.producer = producer

    async def close(self):
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await producer.stop()  # flushes what it holds
            finally:
                _abandon(producer, self.where)


def _abandon(producer, where: str):
    """
    End what an aiokafka producer's ``stop()`` left running when it did not
    finish: cancelled (the lane's grace ran out while it flushed to brokers
    that are gone) or failed. Its batches fail, its sender task is
    cancelled, and its client's metadata task and connections are closed;
    they would otherwise go on retrying the brokers, and logging each
    failure, for as long as the process runs. Nothing here awaits: the
    caller's time is up. After a ``stop()`` that finished there is nothing left.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(aiokafka.errors.KafkaConnectionError(f"the producer to {where} was closed"))
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if sender is not None and not sender.done():
        sender.cancel()
    client = producer.client
    metadata = getattr(client, "_sync_task", None)
    if metadata is not None and not metadata.done():
        metadata.cancel()
    for conn in list(getattr(client, "_conns", {}).values()):
        conn.close()


def _producer(hub, ctx) -> Producer:
    """The producer of a profile's connection (made once per connection key)."""
    return Producer(hub.ingress.kafka.describe(ctx), lambda: _producer_kwargs(hub, ctx))


class Outbox(Route):
    """
    One lane's messages on their way to its producer.

    Each event is appended to the open batch (aiokafka's ``BatchBuilder``)
    of its topic and partition and gets that batch's confirmation. One task
    hands the batches to the producer (``send_batch``) in the order they
    were started, as soon as the lane lets the loop run; a batch that is
    full is closed and handed off, and a new one started. A batch whose
    confirmation the lane dropped (it hands those events off again) is not
    sent. When a hand-off fails, every batch not yet handed off fails with
    it, so that nothing overtakes the events the lane sends again.

    :param producer: The profile's producer
    :param ctx: The lane's ctx; ``ctx.acct`` is the profile
    """

    def __init__(self, producer: Producer, ctx):
        super().__init__(producer)
        self.acct = ctx.acct
        # The brokers, for messages
        self.where = producer.where
        partition = ctx.acct.get("partition")
        self.partition: int | None = None if partition in (None, "") else partition
        # routing key -> (topics, message key)
        self.routes: dict[str | None, tuple[list[str], Any]] = {}
        # topic -> (all partitions, available partitions, {key: partition} or None), learned
        # again for the events after each hand-off: a partition is kept for a key meanwhile
        self.partitions: dict[str, tuple[list[int], list[int], dict | None]] = {}
        # content type -> its header value
        self.content_types: dict[str, bytes] = {}
        # (topic, partition) -> [open batch, its confirmation]
        self.open: dict[tuple[str, int], list] = {}
        # (topic, partition, batch, confirmation) closed and not yet handed off, in order
        self.closed: collections.deque[tuple[str, int, Any, asyncio.Future]] = collections.deque()
        self.task: asyncio.Task | None = None

    def route(self, routing_key: str | None) -> tuple[list[str], Any]:
        """
        :return: The topics and the message key of an event with this routing key
        :raises NoDestinationError: when the profile names no topic and the routing key is empty
        """
        found = self.routes.get(routing_key)
        if found is not None:
            return found
        topics = _topics_of(self.acct, routing_key)
        if not topics:
            raise NoDestinationError("no Kafka topic: the profile names no topics and the event has no routing key")
        key = self.acct.get("key") or routing_key
        if isinstance(key, str):
            key = key.encode()
        found = self.routes[routing_key] = (topics, key)
        return found

    async def learn(self, topics: list[str]):
        """Learn the partitions of the topics that the outbox does not know (now)."""
        producer = self.holder
        # (again when the partitions learned were forgotten while the metadata of another was awaited)
        while missing := [topic for topic in topics if topic not in self.partitions]:
            for topic in missing:
                # aiokafka's own wait for the topic's metadata, bounded by its request timeout
                every = list(await producer.producer.partitions_for(topic))
                available = list(producer.producer.client.cluster.available_partitions_for_topic(topic) or ())
                # aiokafka's partitioner hashes a key to one partition: kept per key, and one
                # partition for the events without a key until the partitions are learned again
                sticky = type(producer.partitioner) is aiokafka.partitioner.DefaultPartitioner
                self.partitions[topic] = (every, available, {} if sticky else None)

    def add(self, route: tuple[list[str], Any], event) -> asyncio.Future:
        """
        Append one event to the open batch of its partition, in each topic.
        The partitions of the topics must be learned.

        :return: Its confirmation
        :raises MessageTooLargeError: when the message exceeds ``max_request_size``
        """
        topics, key = route
        content_type = self.content_types.get(event.content_type)
        if content_type is None:
            content_type = self.content_types[event.content_type] = event.content_type.encode()
        headers = [
            ("id", event.id.encode()),
            ("timestamp", repr(event.timestamp).encode()),
            ("content-type", content_type),
        ]
        if event.headers:  # trace context, CloudEvents attributes
            headers += [(name, value.encode()) for name, value in event.headers]
        value = event.body
        limit = self.holder.max_request_size
        # aiokafka's size check of send(), made where the body is not far below the limit
        if len(value) > limit >> 1:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
            if size > limit:
                raise MessageTooLargeError(
                    f"The message is {size} bytes when serialized which is larger than the maximum request "
                    f"size you have configured with the max_request_size configuration (to {self.where}): "
                    f"send smaller events, or raise max_request_size in the profile's connection (and the "
                    f"broker's message.max.bytes)"
                )
        timestamp_ms = int(event.timestamp * 1000)
        if len(topics) == 1:
            return self._append(topics[0], key, value, headers, timestamp_ms)
        return asyncio.gather(*(self._append(topic, key, value, headers, timestamp_ms) for topic in topics))

    def _append(self, topic: str, key: Any, value: bytes, headers: list, timestamp_ms: int) -> asyncio.Future:
        partition = self.partition
        if partition is None:
            every, available, by_key = self.partitions[topic]
            if by_key is None:
                partition = self.holder.partitioner(key, every, available)
            else:
                partition = by_key.get(key)
                if partition is None:
                    partition = by_key[key] = self.holder.partitioner(key, every, available)
        tp = (topic, partition)
        entry = self.open.get(tp)
        if entry is None or entry[1].done():  # (done: dropped by the lane, which hands its events off again)
            entry = self.open[tp] = [self.holder.producer.create_batch(), asyncio.get_running_loop().create_future()]
        if entry[0].append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
            # Full: it goes as it is, the event starts the next one
            self.closed.append((topic, partition, entry[0], entry[1]))
            entry = self.open[tp] = [self.holder.producer.create_batch(), asyncio.get_running_loop().create_future()]
            entry[0].append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._hand_off())
        return entry[1]

    async def _hand_off(self):
        """Hand the batches to the producer, in order, until none is left."""
        try:
            while True:
                if not self.closed:
                    if not self.open:
                        return
                    for (topic, partition), (batch, confirmation) in self.open.items():
                        self.closed.append((topic, partition, batch, confirmation))
                    self.open.clear()
                    self.partitions.clear()
                topic, partition, batch, confirmation = self.closed.popleft()
                if confirmation.done():  # dropped by the lane
                    continue
                batch.close()
                client = self.holder.producer
                try:
                    if client is None:
                        raise aiokafka.errors.KafkaConnectionError(f"the producer to {self.where} was closed")
                    sent = await client.send_batch(batch, topic, partition=partition)
                except Exception as e:
                    self._fail(confirmation, e)
                    continue
                sent.add_done_callback(functools.partial(_confirm, confirmation))
        finally:
            self.task = None

    def _fail(self, confirmation: asyncio.Future, error: BaseException):
        """A batch could not be handed off: it fails, and so does every batch behind it."""
        confirmations = [confirmation] + [entry[3] for entry in self.closed] + [entry[1] for entry in self.open.values()]
        self.closed.clear()
        self.open.clear()
        self.partitions.clear()
        fail_waiting(confirmations, error)

    def forget(self):
        """Stop handing off; what is not handed off yet fails."""
        if self.task is not None:
            self.task.cancel()
        confirmations = [entry[3] for entry in self.closed] + [entry[1] for entry in self.open.values()]
        self.closed.clear()
        self.open.clear()
        for waiting in confirmations:
            if not waiting.done():
                waiting.set_exception(aiokafka.errors.KafkaConnectionError(f"the producer to {self.where} was closed"))


def _confirm(confirmation: asyncio.Future, sent: asyncio.Future):
    """The broker's answer to a batch: the confirmation of each of its events."""
    if sent.cancelled():
        error = aiokafka.errors.KafkaConnectionError("the batch was cancelled")
    else:
        error = sent.exception()
    if confirmation.done():
        return
    if error is None:
        confirmation.set_result(None)
    else:
        confirmation.set_exception(error)


async def _tls_refusal(kwargs: dict, where: str) -> Exception | None:
    """
    Why a producer over TLS could not bootstrap: aiokafka logs the
    handshake's error and raises only "Unable to bootstrap". One handshake
    with the first bootstrap server tells.

    :param kwargs: The producer's keyword arguments
    :return: The TLS refusal, saying what to fix; None when TLS is not the reason
    """
    context = kwargs.get("ssl_context")
    hosts = aiokafka.conn.collect_hosts(kwargs.get("bootstrap_servers", "localhost"))
    if context is None or not hosts:
        return None
    host, port, _ = hosts[0]
    return tls.refusal(await tls.probe(host, port, context), where)


async def _login_refusal(kwargs: dict, where: str) -> LoginRefusedError | None:
    """
    Why a producer with a SASL login could not bootstrap: aiokafka logs the
    broker's refusal and raises only "Unable to bootstrap". One connection
    to the first bootstrap server tells.

    :param kwargs: The producer's keyword arguments
    :return: The refused login, saying what to fix; None when the login is not the reason
    """
    if not str(kwargs.get("security_protocol", "")).upper().startswith("SASL"):
        return None
    hosts = aiokafka.conn.collect_hosts(kwargs.get("bootstrap_servers", "localhost"))
    if not hosts:
        return None
    host, port, _ = hosts[0]
    options = {
        key: value
        for key, value in kwargs.items()
        if key in ("client_id", "security_protocol", "ssl_context", "request_timeout_ms")
        or key.startswith("sasl_")
    }
    try:
        connection = await aiokafka.conn.create_conn(host, port, **options)
    except LOGIN_REFUSED as e:
        return _refused_login(e, where)
    except Exception:  # not a refusal: the bootstrap error stands
        return None
    connection.close()
    return None


def _refused_login(error: Exception, where: str) -> LoginRefusedError:
    """A SASL login the broker refused, saying what to fix."""
    return LoginRefusedError(
        f"Kafka at {where} refused the login ({error}): check the profile's sasl_mechanism, "
        f"sasl_plain_username and sasl_plain_password (connection)"
    )


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for a refused SASL login, an authorization
    error, a message too large, or connection options aiokafka refuses. Otherwise aiokafka marks each error; its
    catch-all ``UnknownError`` (code -1) and its timeouts are retried too,
    since brokers answer so while they recover (a restarted broker
    re-creating a topic).
    """
    if isinstance(error, (TypeError, ValueError)) and not isinstance(error, aiokafka.errors.KafkaError):
        return False  # aiokafka refused the profile's connection options (acks: al, say)
    if isinstance(
        error, (aiokafka.errors.UnknownError, aiokafka.errors.KafkaTimeoutError, aiokafka.errors.KafkaUnavailableError)
    ):
        return True
    return retry_helps(error, LOGIN_REFUSED + NOT_AUTHORIZED + TOO_LARGE)


def binding(hub, ctx) -> cloudevents.Binding:
    """
    :return: The CloudEvents Kafka binding: attributes in ``ce_`` headers,
        ``datacontenttype`` in ``content-type``
    """
    return cloudevents.KAFKA


def messaging(hub, ctx, routing_key: str | None) -> dict:
    """
    :return: The OpenTelemetry messaging attributes of a message to ``routing_key``
    """
    key = ctx.acct.get("key") or routing_key
    partition = ctx.acct.get("partition")
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": ",".join(_topics_of(ctx.acct, routing_key)),
        "messaging.kafka.message.key": str(key) if key else None,
        "messaging.destination.partition.id": str(partition) if partition not in (None, "") else None,
    }


def _topics_of(acct, routing_key: str | None) -> list[str]:
    """:return: The topics of a message: the profile's, else the routing key"""
    topics = acct.get("topics") or ([routing_key] if routing_key else [])
    if isinstance(topics, str):
        topics = [topics]
    return [str(topic) for topic in topics]


def describe(hub, ctx) -> str:
    """
    :return: The bootstrap servers, ``kafka://host:port``
    """
    servers = (ctx.acct.get("connection") or {}).get("bootstrap_servers", "localhost:9092")
    if isinstance(servers, (list, tuple)):
        servers = ",".join(map(str, servers))
    return f"kafka://{servers}"


def unchecked_hostname(hub, ctx) -> str | None:
    """:return: The option of the profile that turns the checking of host names off, or None"""
    return tls.unchecked(ctx.acct, TLS_NAMES)


# Connect a profile at start, close it at stop: on CONNECTIONS; publish on send
open, close, publish = hub_functions("kafka")


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event to the producer, in order; the returned future completes
    when Kafka acknowledged it (per the profile's ``acks``).

    :param routing_key: The topic when the profile names none; the message key when it names no key
    :param event: The event
    """
    outbox = hub.ingress.kafka.BY_CTX.get(ctx) or hub.ingress.kafka.CONNECTIONS.find(ctx)
    if not outbox.holder.ready:
        await outbox.holder.open()
    route = outbox.route(routing_key)
    for topic in route[0]:
        if topic not in outbox.partitions:
            await outbox.learn(route[0])
            break
    return outbox.add(route, event)


async def send_many(hub, ctx, events: list):
    """
    Hand several events to the producer at once, in order: each is appended
    to the batch of its topic and partition, and the batches go to the
    producer together. A batch that is full goes as it is and a new one is
    started.

    :param events: ``(routing_key, event)`` of each event
    :return: The confirmation of each event (a future that completes when
        Kafka acknowledged its batch), in order; for the events before the
        first one that cannot go (no topic, too large), which is left out
    :raises Exception: What the first event cannot go for
    """
    outbox = hub.ingress.kafka.BY_CTX.get(ctx) or hub.ingress.kafka.CONNECTIONS.find(ctx)
    if not outbox.holder.ready:
        await outbox.holder.open()
    confirmations = []
    partitions = outbox.partitions
    for routing_key, event in events:
        try:
            route = outbox.route(routing_key)
            for topic in route[0]:
                if topic not in partitions:
                    await outbox.learn(route[0])
                    break
            confirmations.append(outbox.add(route, event))
        except Exception:
            if not confirmations:
                raise
            break  # the lane hands this event off again, alone, and learns why
    return confirmations


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Consume what the profile's topics receive from now on (``evbus listen``),
    with a consumer of no group: it commits no offsets, so it takes nothing
    away from the consumer groups of the topics.

    aiokafka reconnects for ever and raises nothing when the brokers are
    gone: after ``LISTEN_PROBE_MS`` without a record, the listener asks for
    the cluster's metadata, which fails when no broker answers.

    :param routing_key: The topic to listen on instead of the profile's (``--routing-key``)
    :return: An async iterator of (topic, body)
    :raises NoDestinationError: The profile names no topic and no routing key was given
    :raises ListenError: No broker could be reached, or they were lost
    """
    topics = [routing_key] if routing_key else ctx.acct.get("topics") or []
    if isinstance(topics, str):
        topics = [topics]
    if not topics:
        raise NoDestinationError("no Kafka topic to listen on: the profile names none and no --routing-key was given")
    kwargs = {
        key: value
        for key, value in _producer_kwargs(hub, ctx).items()
        if key in ("bootstrap_servers", "client_id", "security_protocol", "ssl_context", "sasl_mechanism",
                   "sasl_plain_username", "sasl_plain_password", "request_timeout_ms")
    }
    consumer = aiokafka.AIOKafkaConsumer(*map(str, topics), auto_offset_reset="latest", **kwargs)
    try:
        await consumer.start()
    except BaseException as e:
        await _stop(consumer)
        if isinstance(e, Exception):
            refusal = await _tls_refusal(kwargs, hub.ingress.kafka.describe(ctx))
            raise listen_error("cannot connect", refusal or e) from e
        raise
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=LISTEN_PROBE_MS)
            if not batches:
                try:
                    await consumer.topics()  # fails once no broker answers
                except aiokafka.errors.KafkaError as e:
                    raise listen_error("lost the connection", e) from e
            for records in batches.values():
                for record in records:
                    yield record.topic, record.value
    finally:
        await _stop(consumer)


async def _stop(consumer):
    """
    Stop a consumer, within ``STOP_GRACE`` seconds for what aiokafka leaves.

    aiokafka's ``stop()`` cancels the fetcher's requests under way and awaits
    them one by one: the first one's CancelledError (a fetch from a broker
    that is gone) ends ``stop()`` there, before it closes the client, whose
    metadata task would go on retrying the brokers, and logging each
    failure, until the process ends. That CancelledError is dropped and the
    rest is closed here. A cancellation of the caller's task is not dropped,
    nor one that the client's close swallows.
    """
    cancels = asyncio.current_task().cancelling()
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling() > cancels:
            raise
        fetches = [task for task in getattr(getattr(consumer, "_fetcher", None), "_pending_tasks", ()) if not task.done()]
        for task in fetches:
            task.cancel()
        if fetches:
            await asyncio.wait(fetches, timeout=STOP_GRACE)
        client = getattr(consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(TimeoutError):  # the listener's own error says what went wrong
                async with asyncio.timeout(STOP_GRACE):
                    await client.close()
    if asyncio.current_task().cancelling() > cancels:
        raise asyncio.CancelledError()
