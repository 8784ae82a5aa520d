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

How a publish goes out (:class:`Outbox`): the lane hands events off up to
its ``max_in_flight`` window; each takes the channel's next delivery tag,
its frames are encoded with what the profile's messages share encoded
once (:mod:`evbus.amqp`), and the publishes of one turn of the loop go to
the socket in one write. RabbitMQ's basic.ack, basic.nack and basic.return
find the event's confirmation by its delivery tag (by its message id for a
return) in aiormq's own map: no task, lock or timer per message.

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
import collections
from typing import Any

from evbus.connection import import_error

try:
    import aio_pika
    import aiormq.exceptions
    from aiormq import spec
    from aiormq.abc import ChannelFrame

    from evbus import amqp

    # Errors of a login the broker refused (the credentials, or no login mechanism in common)
    LOGIN_REFUSED = (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError)

    IMPORT_ERROR = None
except ImportError as e:  # missing or older than the extra's floor (raised again when broken)
    IMPORT_ERROR = import_error(e, ("aio_pika", "aiormq"))

from evbus import cloudevents
from evbus import tls
from evbus.connection import Holder
from evbus.connection import Route as BaseRoute
from evbus.connection import close_quietly
from evbus.connection import connection_key
from evbus.connection import error_text
from evbus.connection import hub_functions
from evbus.connection import listen_error
from evbus.connection import options
from evbus.connection import retry_helps
from evbus.connection import set_up
from evbus.connection import virtual
from evbus.exc import ConnectError
from evbus.exc import ListenError
from evbus.exc import LoginRefusedError
from evbus.exc import NackedError
from evbus.exc import NoDestinationError
from evbus.exc import RefusedError

__contracts__ = ["broker"]


def __virtual__(hub):
    return virtual(IMPORT_ERROR, "the pika ingress (acct providers pika, amqp, rabbitmq) needs aio-pika", "pika")


def __init__(hub):
    acct = ["pika", "amqp", "rabbitmq"]
    profile_keys = ("connection", "exchange", "routing_key", "mandatory", "persistent", "timeout", "tls")
    # CONNECTIONS: connection key -> Publisher; BY_CTX: a lane's ctx -> its Route
    set_up(hub, "pika", acct=acct, profile_keys=profile_keys, holder=_publisher, route=Route, key=_key)


class Publisher(Holder):
    """One profile's connection and confirming channel, opened once."""

    def __init__(self, connection_kwargs: dict, exchange: str, where: str, tls_block: Any = None):
        super().__init__(where)
        self.connection_kwargs = connection_kwargs
        self.tls_block = tls_block
        self.exchange_name = exchange
        self.connection: Any = None
        self.channel: Any = None
        self.raw_channel: Any = None
        # The publishes on the open channel
        self.outbox: Outbox | None = None

    @property
    def ready(self) -> bool:
        return (
            self.outbox is not None
            and self.loop is asyncio.get_running_loop()
            and not self.connection.is_closed
            and not self.raw_channel.is_closed
        )

    async def connect(self):
        """Connect, open a channel with publisher confirms, check the exchange exists."""
        try:
            self.connection = await aio_pika.connect(**_with_tls(self.connection_kwargs, self.tls_block))
        except LOGIN_REFUSED as e:
            raise _login_refused(e, self.where) from e
        except Exception as e:
            refusal = tls.refusal(e, self.where)
            if refusal is not None:
                raise refusal from e
            if isinstance(e, OSError):
                # The socket's error names no address under every loop ("[Errno 111] Connection refused")
                raise ConnectError(f"cannot connect to {self.where}: {error_text(e)}") from e
            raise
        try:
            self.channel = await self.connection.channel(publisher_confirms=True)
            if self.exchange_name:
                # Fails early, with a clear 404 from the broker, when the exchange does not exist
                await self.channel.get_exchange(self.exchange_name, ensure=True)
            self.raw_channel = await self.channel.get_underlay_channel()
            self.outbox = Outbox(self.raw_channel, self.exchange_name, self.where)
        except BaseException:
            await self.close()
            raise

    async def close(self):
        connection, self.connection = self.connection, None
        self.channel = self.raw_channel = self.outbox = None
        if connection is not None and not connection.is_closed:
            await close_quietly(connection.close())


class Confirmation(asyncio.Future):
    """
    RabbitMQ's answer to one publish. aiormq's channel resolves it from its
    map of delivery tags (``channel.confirmations``): basic.ack resolves it;
    basic.nack fails it (aiormq's ``DeliveryError``), and so do a basic.return
    (:class:`~evbus.exc.RefusedError`), the channel closing (its reason) and the
    profile's ``timeout`` (``TimeoutError``).
    """

    __slots__ = ("outbox", "tag", "routing_key", "message_id")

    def set_result(self, result: Any):
        if self.done():  # an answer after the timeout, or to a receipt the lane let go of
            return
        self._forget()
        returned = getattr(result, "delivery", None)
        if isinstance(returned, spec.Basic.Return):
            # what aiormq hands over for a basic.return when the channel does not raise on returns
            self._fail(RefusedError(_returned_text(returned, self.outbox.exchange, self.routing_key)))
        elif isinstance(result, spec.Basic.Ack):
            _SET_RESULT(self, result)
        else:
            self._fail(NackedError(f"RabbitMQ did not accept the message ({type(result).__name__})"))

    def set_exception(self, exception: Any):
        if self.done():
            return
        self._forget()
        self._fail(exception)

    def _fail(self, exception: BaseException):
        _SET_EXCEPTION(self, exception)
        # Retrieved once, as aiormq does for its own futures: a confirmation that no lane
        # awaits any more (the connection closed under it) is not logged when collected
        self.exception()

    def cancel(self, msg: Any = None) -> bool:
        self._forget()
        return _CANCEL(self, msg)

    def _forget(self):
        """Drop the message id that let aiormq find this publish when RabbitMQ returns it."""
        message_id = self.message_id
        if message_id is not None:
            self.message_id = None
            ids = self.outbox.message_ids
            if ids.get(message_id) == self.tag:
                del ids[message_id]


_SET_RESULT = asyncio.Future.set_result
_SET_EXCEPTION = asyncio.Future.set_exception
_CANCEL = asyncio.Future.cancel
# Bytes of frames after which the outbox hands them to the connection without waiting for the loop's turn
_FLUSH_BYTES = 1 << 20


class Outbox:
    """
    The publishes on one confirming channel, without a task or a lock per message.

    Each publish takes the channel's next delivery tag and puts its
    :class:`Confirmation` in aiormq's map of delivery tags (and, for a
    mandatory message, its message id where aiormq looks up a returned
    message), so that aiormq's channel resolves it as it resolves its own.
    The frames (:class:`evbus.amqp.Frames`) of the publishes made in one turn
    of the loop go to aiormq's connection writer as one piece: in the order
    of their delivery tags, on one socket write.

    Nothing else publishes on this channel: its delivery tags are evbus's alone.

    :param channel: The aiormq channel, open, with publisher confirms
    :param exchange: The exchange ("" for the default exchange)
    :param where: The broker's address, for messages
    """

    def __init__(self, channel: Any, exchange: str, where: str):
        self.channel = channel
        self.exchange = exchange
        self.where = where
        self.loop = asyncio.get_running_loop()
        self.frames = amqp.Frames(channel.number, exchange, channel.max_content_size)
        self.confirmations = channel.confirmations
        self.message_ids = channel.message_id_delivery_tag
        self.write_queue = channel.write_queue
        # Frames not yet handed to the connection's writer
        self.buffer = bytearray()
        self.flush_scheduled = False
        # Hands frames over while the connection's write queue is full, else None
        self.writer: asyncio.Task | None = None
        # Per profile timeout: (deadline, confirmation) in the order of publishing
        self.deadlines: dict[float, collections.deque] = {}
        self.timer: asyncio.TimerHandle | None = None
        channel.closing.add_done_callback(self._closed)

    def publish(
        self, routing_key: str, event: Any, delivery_mode: int, mandatory: bool, timeout: float | None
    ) -> Confirmation:
        """
        Publish one event, in order; never waits.

        :return: Its confirmation
        :raises ValueError: for a routing key longer than 255 characters
        :raises TypeError: for a routing key or property that AMQP cannot carry
        """
        message_id = event.id
        self.frames.write(
            self.buffer, routing_key, mandatory, event.body, event.content_type,
            delivery_mode, message_id, event.timestamp, event.headers,
        )
        channel = self.channel
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation = Confirmation(loop=self.loop)
        confirmation.outbox = self
        confirmation.tag = tag
        confirmation.routing_key = routing_key
        self.confirmations[tag] = confirmation
        if mandatory and message_id:
            self.message_ids[message_id] = tag
            confirmation.message_id = message_id
        else:
            confirmation.message_id = None
        if timeout:
            self._watch(confirmation, timeout)
        if len(self.buffer) >= _FLUSH_BYTES:
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return confirmation

    def flush(self):
        """Hand the frames written so far to the connection's writer."""
        self.flush_scheduled = False
        if self.writer is not None or not self.buffer:
            return  # (the writer takes them when there is room)
        if self.channel.is_closed:
            self.buffer.clear()  # their confirmations fail with the channel's reason
            return
        frames = self._take()
        try:
            self.write_queue.put_nowait(frames)
        except asyncio.QueueFull:  # the writer is behind: wait for room, keeping the order
            self.writer = self.loop.create_task(self._write_when_room(frames))

    def _take(self) -> Any:
        payload, self.buffer = self.buffer, bytearray()
        return ChannelFrame(payload=payload, should_close=False)

    async def _write_when_room(self, frames: Any):
        try:
            while True:
                await self.write_queue.put(frames)
                if not self.buffer or self.channel.is_closed:
                    return
                frames = self._take()
        finally:
            self.writer = None

    def _watch(self, confirmation: Confirmation, timeout: float):
        """Fail ``confirmation`` with TimeoutError when no answer came within ``timeout`` seconds."""
        deadline = self.loop.time() + timeout
        queue = self.deadlines.get(timeout)
        if queue is None:
            queue = self.deadlines[timeout] = collections.deque()
        while queue and queue[0][1].done():
            queue.popleft()
        queue.append((deadline, confirmation))
        timer = self.timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._expire)

    def _expire(self):
        self.timer = None
        now = self.loop.time()
        soonest = None
        for queue in self.deadlines.values():
            while queue:
                deadline, confirmation = queue[0]
                if not confirmation.done():
                    if deadline > now:
                        break
                    self._time_out(confirmation)
                queue.popleft()
            if queue and (soonest is None or queue[0][0] < soonest):
                soonest = queue[0][0]
        if soonest is not None:
            self.timer = self.loop.call_at(soonest, self._expire)

    def _time_out(self, confirmation: Confirmation):
        # A late answer then finds a cancelled confirmation, which aiormq ignores quietly
        if self.confirmations.get(confirmation.tag) is confirmation:
            ignored = self.loop.create_future()
            ignored.cancel()
            self.confirmations[confirmation.tag] = ignored
        confirmation.set_exception(TimeoutError())

    def _closed(self, closing: asyncio.Future):
        """The channel closed: every confirmation still awaited fails with the reason."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        if self.writer is not None:
            self.writer.cancel()
        self.buffer.clear()
        reason = None if closing.cancelled() else closing.exception()
        if reason is None or isinstance(reason, asyncio.CancelledError):
            reason = ConnectionError(f"the channel to RabbitMQ at {self.where} closed")
        for confirmation in list(self.confirmations.values()):
            if isinstance(confirmation, Confirmation) and not confirmation.done():
                if isinstance(reason, aiormq.exceptions.ChannelAccessRefused):
                    error = _publish_refused(reason, self.where)
                    error.__cause__ = reason
                    confirmation.set_exception(error)
                else:
                    confirmation.set_exception(reason)


def _publish_refused(error: Exception, where: str) -> LoginRefusedError:
    """The refused write permission of a publish, saying what to fix."""
    return LoginRefusedError(
        f"RabbitMQ at {where} refused the publish ({error.args[0] if error.args else error}): "
        f"give the profile's user write permission on the exchange, or use another login"
    )


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
    kwargs = options(ctx)
    kwargs.setdefault("connection_class", QuietConnection)
    return kwargs


if IMPORT_ERROR is None:

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


def _key(ctx) -> str:
    """:return: The connection key of a profile: a channel publishes to one exchange"""
    return connection_key(ctx, _exchange(ctx))


class Route(BaseRoute):
    """
    What a lane's sends need of its profile: the publisher and the settings of
    every message, read once per lane.
    """

    __slots__ = ("delivery_mode", "mandatory", "timeout")

    def __init__(self, publisher: Publisher, ctx):
        super().__init__(publisher)
        self.delivery_mode = 2 if ctx.acct.get("persistent") else 1
        self.mandatory = _mandatory(ctx)
        timeout = ctx.acct.get("timeout")
        self.timeout = float(timeout) if timeout else None


def _publisher(hub, ctx) -> Publisher:
    """The publisher of a profile's connection and exchange (made once per connection key)."""
    return Publisher(_connection_kwargs(ctx), _exchange(ctx), hub.ingress.pika.describe(ctx), _tls_block(ctx))


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for a refused login or permission
    (``ACCESS_REFUSED``), an exchange that does not exist (``NOT_FOUND``), a
    message over RabbitMQ's ``max_message_size``, or a message RabbitMQ returned.
    """
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed) and "message size" in str(error):
        return False
    # (ChannelNotFoundEntity: the profile's exchange does not exist: declare it, or fix the profile)
    refused = (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelNotFoundEntity)
    return retry_helps(error, LOGIN_REFUSED + refused)


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
    """:return: The option of the profile that turns the checking of host names off, or None"""
    connection = ctx.acct.get("connection") or {}
    query = aio_pika.connection.make_url(str(connection["url"])).query if connection.get("url") else {}
    options = connection.get("ssl_options") or {}
    if query.get("no_verify_ssl", "0") != "0" or str(options.get("no_verify_ssl", "0")) != "0":
        return "no_verify_ssl"
    return tls.unchecked(ctx.acct)


# Connect a profile at start, close it at stop: on CONNECTIONS; publish on send
open, close, publish = hub_functions("pika")


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event to RabbitMQ, in order; the returned future completes when
    RabbitMQ confirmed it (and fails when it nacked or returned it).

    :param routing_key: The AMQP routing key
    :param event: The event
    """
    route = hub.ingress.pika.CONNECTIONS.find(ctx)
    publisher = route.holder
    if not publisher.ready:
        await publisher.open()
    return publisher.outbox.publish(
        routing_key or "", event, route.delivery_mode, route.mandatory, route.timeout
    )


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


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Consume the profile's queue (``evbus listen``): the queue named by the
    routing key, which must exist.

    One message is taken at a time (prefetch 1) and acknowledged once it was
    taken: when the next one is asked for, or when the iterator is closed
    after it (``--count`` reached). A ``BrokenPipeError`` thrown in at the
    ``yield`` (the output went away before the message was printed) leaves it
    unacknowledged: it goes back to the queue as the channel closes.

    :param routing_key: The queue, when the profile names no routing_key
    :return: An async iterator of (queue, body)
    :raises ListenError: The broker cannot be reached or refused the login,
        the queue does not exist, or the connection was lost
    """
    queue_name = routing_key or ctx.acct.get("routing_key")
    if not queue_name:
        raise NoDestinationError("no queue to listen on: the profile names no routing_key and no --routing-key was given")
    try:
        connection = await aio_pika.connect(**_with_tls(_connection_kwargs(ctx), _tls_block(ctx)))
    except Exception as e:
        raise listen_error("cannot connect", tls.refusal(e, hub.ingress.pika.describe(ctx)) or e) from e
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
                    try:
                        yield queue_name, message.body
                    except GeneratorExit:  # closed after taking it
                        await message.ack()
                        raise
                    await message.ack()
        except aio_pika.exceptions.AMQPError as e:
            raise listen_error("lost the connection", e) from e
        # The iterator ends when the channel closed: not by us, so the connection was lost
        raise listen_error("lost the connection", lost[0] if lost else None)
    finally:
        if not connection.is_closed:
            await close_quietly(connection.close())
