"""
RabbitMQ (AMQP 0-9-1) ingress, with one connection and one confirming channel
per profile, opened at start and reused by every event.

Accepts the acct providers ``pika``, ``amqp`` and ``rabbitmq``. Install with
``pip install "evbus-ng[pika]"``.

.. code-block:: yaml

    pika:
      my_profile:
        connection:               # keyword arguments of aio_pika.connect / connect_robust
          url: amqp://guest:guest@127.0.0.1:5672/   # or host, port, login, password, virtualhost, ssl, ...
        tls:                      # optional: TLS, amqps (see evbus.tls); {} for the defaults
          ca_file: /path/ca.pem
          cert_file: /path/client.pem   # with key_file and password, for mutual TLS
        routing_key: my-queue     # used when the event has none
        exchange: default         # "default" is the default exchange; else an existing exchange's name
        timeout: 10               # seconds to wait for the broker's confirmation (optional)
        persistent: false         # delivery mode 2 when true (default: transient, as pop-evbus)
        mandatory: true           # the default: a message no queue takes is a failed publish
        envelope: cloudevents     # optional: send CloudEvents (evbus.cloudevents)

Each event is published with publisher confirms: it counts as published when
RabbitMQ acknowledged it. Its AMQP properties carry the event id
(``message_id``), its time (``timestamp``) and the serializer's
``content_type``; its headers, with tracing on, ``traceparent`` and
``tracestate``, and in CloudEvents binary mode the attributes
``cloudEvents_specversion``, ``cloudEvents_id``, ....

Events are published with the ``mandatory`` flag: a message that no queue
is bound to take (the routing key on the exchange) comes back (basic.return)
and is a failed publish, not retried: it is dead-lettered with the exchange
and the routing key named. ``mandatory: false`` lets RabbitMQ drop such
messages silently, counted as published (as pop-evbus did).

A refused login (``ACCESS_REFUSED``), a refused write permission on the
exchange, a message over RabbitMQ's ``max_message_size`` and a returned
message fail at once: a retry cannot change them.

TLS: the profile's ``tls`` block (the same in every broker profile) makes
the SSL context of the connection (aio-pika's ``ssl_context``; the url's
scheme becomes ``amqps``, whose default port is 5671), with the server's
certificate verified and its host name checked. aio-pika's own ``ssl:
true`` with ``ssl_options`` (or an ``amqps://`` url with ``cafile``,
``certfile``, ``keyfile`` in its query) keep working instead; the two
cannot be mixed. A certificate that is not trusted or not for the host
fails at once, saying so.
"""
import asyncio
import datetime
from typing import Any

try:
    import aio_pika
    import aiormq.exceptions
    from aiormq import spec

    HAS_LIBS = True
    IMPORT_ERROR = ""
except ImportError as e:  # missing, or a version older than the extra's floor
    HAS_LIBS = False
    IMPORT_ERROR = str(e)

from evbus import cloudevents
from evbus import tls
from evbus.connection import LoopLock
from evbus.connection import PerCtx
from evbus.connection import error_text
from evbus.exc import EvbusError
from evbus.exc import ListenError
from evbus.exc import LoginRefusedError
from evbus.exc import RefusedError


class PublishNacked(EvbusError, ConnectionError):
    """RabbitMQ refused (nacked) a message."""


class MessageReturned(RefusedError):
    """RabbitMQ returned a mandatory message: no queue is bound to take it."""


def __virtual__(hub):
    if not HAS_LIBS:
        return False, (
            f"the pika ingress (acct providers pika, amqp, rabbitmq) needs aio-pika: "
            f'pip install "evbus-ng[pika]" ({IMPORT_ERROR})'
        )
    return True


def __init__(hub):
    hub.ingress.pika.ACCT = ["pika", "amqp", "rabbitmq"]
    # connection key -> Publisher
    hub.ingress.pika.PUBLISHERS = {}
    # id(ctx) -> (ctx, Publisher): the lookup of every send, without rebuilding the key
    hub.ingress.pika.BY_CTX = PerCtx()


class Publisher:
    """One profile's connection and confirming channel, opened once."""

    def __init__(self, connection_kwargs: dict, exchange: str, where: str, tls_block: Any = None):
        self.connection_kwargs = connection_kwargs
        self.tls_block = tls_block
        self.exchange_name = exchange
        self.where = where
        self.connection: Any = None
        self.channel: Any = None
        self.raw_channel: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Serializes open(): lanes of profiles that share this connection open it once
        self.lock = LoopLock()

    @property
    def ready(self) -> bool:
        return (
            self.raw_channel is not None
            and self.loop is asyncio.get_running_loop()
            and not self.connection.is_closed
            and not self.raw_channel.is_closed
        )

    async def open(self):
        """Connect, open a channel with publisher confirms, check the exchange exists."""
        async with self.lock.get():
            if self.ready:
                return
            await self.close()
            self.loop = asyncio.get_running_loop()
            try:
                self.connection = await aio_pika.connect(**_with_tls(self.connection_kwargs, self.tls_block))
            except (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError) as e:
                raise _login_refused(e, self.where) from e
            except Exception as e:
                refusal = tls.refusal(e, self.where)
                if refusal is not None:
                    raise refusal from e
                raise
            try:
                self.channel = await self.connection.channel(publisher_confirms=True)
                if self.exchange_name:
                    # Fails early, with a clear 404 from the broker, when the exchange does not exist
                    await self.channel.get_exchange(self.exchange_name, ensure=True)
                self.raw_channel = await self.channel.get_underlay_channel()
            except BaseException:
                await self.close()
                raise

    async def close(self):
        connection, self.connection = self.connection, None
        self.channel = self.raw_channel = None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass


def _login_refused(error: Exception, where: str) -> LoginRefusedError:
    """The refused login of a connection, saying what to fix."""
    if isinstance(error, aiormq.exceptions.AuthenticationError):
        # No login mechanism in common (the url's ?auth=...)
        return LoginRefusedError(f"RabbitMQ at {where} takes none of the login mechanisms evbus offers: {error}")
    reason = error.args[0] if error.args else error
    return LoginRefusedError(
        f"RabbitMQ at {where} refused the login ({reason}): check the profile's login and password"
    )


def _mandatory(ctx) -> bool:
    """The profile's ``mandatory``: true unless it says false."""
    value = ctx.acct.get("mandatory")
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    return str(value).lower() not in ("false", "0", "no", "off")


def _exchange(ctx) -> str:
    exchange = ctx.acct.get("exchange") or "default"
    return "" if exchange == "default" else exchange


def _connection_kwargs(ctx) -> dict:
    connection = ctx.acct.get("connection") or {}
    kwargs = {key: value for key, value in dict(connection).items() if key != "loop"}
    kwargs.setdefault("connection_class", QuietConnection)
    return kwargs


if HAS_LIBS:

    class QuietConnection(aio_pika.Connection):
        """
        An aio-pika connection that, when it never connected (the broker is
        down or refused the login), leaves nothing to close: aio-pika's own
        schedules a ``close()`` at garbage collection, which then never runs
        ("coroutine 'Connection.close' was never awaited").
        """

        def __del__(self):
            if self.transport is not None:
                super().__del__()


def _tls_block(ctx) -> Any:
    """:return: The profile's ``tls`` block, checked against aio-pika's own TLS options"""
    block = tls.block(ctx.acct)
    connection = ctx.acct.get("connection") or {}
    tls.conflict(block, connection, native=("ssl_options", "ssl_context"))
    query = aio_pika.connection.make_url(str(connection["url"])).query if connection.get("url") else {}
    tls.conflict(block, query, native=("cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl"))
    return block


def _with_tls(kwargs: dict, tls_block: Any) -> dict:
    """
    The keyword arguments of ``aio_pika.connect`` with the SSL context of the
    profile's ``tls`` block, over amqps (aiormq 7 takes TLS from the scheme alone).

    :raises TlsConfigError: for a tls block evbus cannot use
    """
    if tls_block is None:
        return kwargs
    kwargs = dict(kwargs, ssl_context=tls.TlsOptions.parse(tls_block).context())
    if kwargs.get("url"):
        url = aio_pika.connection.make_url(str(kwargs["url"]))
        if url.scheme == "amqp":
            url = url.with_scheme("amqps")
        kwargs["url"] = url
    else:
        kwargs["ssl"] = True
    return kwargs


def _key(ctx) -> tuple:
    connection = repr(sorted(_connection_kwargs(ctx).items(), key=lambda kv: kv[0]))
    return (connection, _exchange(ctx), tls.key(ctx.acct))


def _publisher(hub, ctx) -> Publisher:
    """The publisher of a profile: found by the lane's ctx (once per lane, then from a cache)."""
    cached = hub.ingress.pika.BY_CTX.get(ctx)
    if cached is not None:
        return cached
    publishers = hub.ingress.pika.PUBLISHERS
    key = _key(ctx)
    publisher = publishers.get(key)
    if publisher is None:
        publisher = publishers[key] = Publisher(
            _connection_kwargs(ctx), _exchange(ctx), hub.ingress.pika.describe(ctx), tls_block=_tls_block(ctx)
        )
    return hub.ingress.pika.BY_CTX.put(ctx, publisher)


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for a refused login or permission
    (``ACCESS_REFUSED``), an exchange that does not exist (``NOT_FOUND``), a
    message over RabbitMQ's ``max_message_size``, or a message RabbitMQ returned.
    """
    if isinstance(
        error,
        (
            aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.AuthenticationError,
            aiormq.exceptions.ChannelAccessRefused,
        ),
    ):
        return False
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed) and "message size" in str(error):
        return False
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return False  # the profile's exchange does not exist: declare it, or fix the profile
    return getattr(error, "retriable", True) is not False


def binding(hub, ctx) -> cloudevents.Binding:
    """
    :return: The CloudEvents AMQP binding: attributes in ``cloudEvents_`` headers
        (AMQP application properties), ``datacontenttype`` in ``content_type``
    """
    return cloudevents.AMQP


def messaging(hub, ctx, routing_key: str | None) -> dict:
    """
    :return: The OpenTelemetry messaging attributes of a message to ``routing_key``:
        the exchange ("" for the default exchange) and the routing key
    """
    return {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": _exchange(ctx),
        "messaging.rabbitmq.destination.routing_key": routing_key or None,
    }


def describe(hub, ctx) -> str:
    """
    :return: The broker's address, ``amqp://host:port/vhost`` (``amqps://``
        with TLS), without credentials
    """
    connection = ctx.acct.get("connection") or {}
    secure = ctx.acct.get("tls") not in (None, False)
    if connection.get("url"):
        url = aio_pika.connection.make_url(str(connection["url"]))
        scheme = "amqps" if secure or url.scheme == "amqps" else "amqp"
        return f"{scheme}://{url.host}:{url.port or (5671 if scheme == 'amqps' else 5672)}{url.path}"
    secure = secure or bool(connection.get("ssl"))
    host = connection.get("host", "localhost")
    port = connection.get("port", 5671 if secure else 5672)
    return f"{'amqps' if secure else 'amqp'}://{host}:{port}/{connection.get('virtualhost', '')}"


def unchecked_hostname(hub, ctx) -> str | None:
    """
    :return: The option of the profile that turns the checking of the
        server's host name off, or None
    """
    connection = ctx.acct.get("connection") or {}
    query = aio_pika.connection.make_url(str(connection["url"])).query if connection.get("url") else {}
    options = connection.get("ssl_options") or {}
    if query.get("no_verify_ssl", "0") != "0" or str(options.get("no_verify_ssl", "0")) != "0":
        return "no_verify_ssl"
    return tls.unchecked(ctx.acct)


async def open(hub, ctx):
    """
    Connect the profile's publisher now, so that a broker that cannot be
    reached is reported when the bus starts.
    """
    await _publisher(hub, ctx).open()


async def close(hub, ctx):
    """
    Close the profile's connection; the lane has already waited for every
    confirmation.
    """
    publisher = hub.ingress.pika.PUBLISHERS.pop(_key(ctx), None)
    hub.ingress.pika.BY_CTX.forget(ctx, lambda cached: cached is publisher)
    if publisher is not None:
        await publisher.close()


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event to RabbitMQ, in order; the returned task completes when
    RabbitMQ confirmed it (and raises when it nacked or returned it).

    :param routing_key: The AMQP routing key
    :param event: The event
    """
    publisher = _publisher(hub, ctx)
    if not publisher.ready:
        await publisher.open()
    properties = spec.Basic.Properties(
        content_type=event.content_type,
        message_id=event.id,
        timestamp=datetime.datetime.fromtimestamp(int(event.timestamp), tz=datetime.timezone.utc),
        delivery_mode=2 if ctx.acct.get("persistent") else 1,
        # trace context, CloudEvents attributes
        headers=dict(event.headers) if event.headers else None,
    )
    return publisher.loop.create_task(
        _confirm(publisher, publisher.raw_channel, routing_key or "", event.body, properties, ctx)
    )


async def _confirm(publisher: Publisher, channel, routing_key: str, body: bytes, properties, ctx):
    exchange = publisher.exchange_name
    try:
        confirmation = await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=_mandatory(ctx),
            timeout=ctx.acct.get("timeout"),
            wait=False,
        )
    except aiormq.exceptions.ChannelAccessRefused as e:
        raise LoginRefusedError(
            f"RabbitMQ at {publisher.where} refused the publish ({e.args[0] if e.args else e}): "
            f"give the profile's user write permission on the exchange, or use another login"
        ) from e
    # A returned message (basic.return) resolves the confirmation: the channel does not raise on returns
    returned = getattr(confirmation, "delivery", None)
    if isinstance(returned, spec.Basic.Return):
        raise MessageReturned(_returned_text(returned, exchange, routing_key))
    if confirmation is not None and not isinstance(confirmation, spec.Basic.Ack):
        raise PublishNacked(f"RabbitMQ did not accept the message ({type(confirmation).__name__})")


def _returned_text(frame, exchange: str, routing_key: str) -> str:
    """What a basic.return says, and what to do about it."""
    exchange = frame.exchange if frame.exchange is not None else exchange
    routing_key = frame.routing_key if frame.routing_key is not None else routing_key
    on = f"exchange '{exchange}'" if exchange else "the default exchange"
    if frame.reply_text == "NO_ROUTE":
        return (
            f"RabbitMQ returned the message: no queue is bound to routing key '{routing_key}' on {on} "
            f"(NO_ROUTE); bind a queue to it, or set mandatory: false in the profile to let RabbitMQ drop such messages"
        )
    return (
        f"RabbitMQ returned the message for routing key '{routing_key}' on {on}: "
        f"{frame.reply_text} ({frame.reply_code})"
    )


async def publish(hub, ctx, routing_key: str, body: bytes):
    """
    Publish one body and wait for RabbitMQ's confirmation (the ingress contract;
    the lanes use ``send``).

    :param routing_key: The AMQP routing key
    :param body: The serialized event body
    """
    from evbus.types import Event

    receipt = await send(hub, ctx, routing_key, Event(profile="", routing_key=routing_key, body=body))
    await receipt


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Consume the profile's queue (``evbus listen``): the queue named by the
    routing key, which must exist.

    One message is taken at a time (prefetch 1) and acknowledged as it is
    handed out, so that a consumer that stops after N messages took exactly
    N: the one RabbitMQ had sent ahead goes back to the queue, unacknowledged.

    :param routing_key: The queue, when the profile names no routing_key
    :return: An async iterator of (queue, body)
    :raises ListenError: The broker cannot be reached or refused the login,
        the queue does not exist, or the connection was lost
    """
    queue_name = routing_key or ctx.acct.get("routing_key")
    if not queue_name:
        raise EvbusError("no queue to listen on: the profile names no routing_key and no --routing-key was given")
    try:
        connection = await aio_pika.connect(**_with_tls(_connection_kwargs(ctx), _tls_block(ctx)))
    except Exception as e:
        reason = tls.refusal(e, hub.ingress.pika.describe(ctx)) or e
        raise ListenError(f"cannot connect: {error_text(reason)}") from e
    # Why the connection or the channel closed, when the broker or the network closed it
    lost: list[BaseException] = []

    def closed(_, error: BaseException | None):
        if error is not None:
            lost.append(error)

    connection.close_callbacks.add(closed)
    try:
        channel = await connection.channel()
        channel.close_callbacks.add(closed)
        await channel.set_qos(prefetch_count=1)
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            raise ListenError(f"queue '{queue_name}' does not exist") from None
        try:
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    yield queue_name, message.body
        except aio_pika.exceptions.AMQPError as e:
            raise ListenError(f"lost the connection: {error_text(e)}") from e
        # The iterator ends when the channel closed: not by us, so the connection was lost
        reason = f": {error_text(lost[0])}" if lost else ""
        raise ListenError(f"lost the connection{reason}")
    finally:
        if not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass
