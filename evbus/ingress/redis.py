"""
Redis ingress, to a stream (XADD) or a pub/sub channel (PUBLISH), with one
client per profile, connected at start and reused by every event.

Accepts the acct provider ``redis``. Install with ``pip install "evbus-ng[redis]"``.

.. code-block:: yaml

    redis:
      my_profile:
        connection:               # keyword arguments of redis.asyncio.Redis
          url: redis://:secret@127.0.0.1:6379/0   # or host, port, db, username, password, ssl, ...
        tls:                      # optional: TLS (see evbus.tls); {} for the defaults
          ca_file: /path/ca.pem
          cert_file: /path/client.pem   # with key_file and password, for mutual TLS
        mode: stream              # stream (XADD, the default) or pubsub (PUBLISH)
        stream: events            # the stream (mode stream); the event's routing key when empty
        channel: events           # the channel (mode pubsub); the event's routing key when empty
        maxlen: 100000            # optional: XADD MAXLEN ~ maxlen, an approximate cap of the stream
        envelope: cloudevents     # optional: send CloudEvents (evbus.cloudevents; pubsub: structured mode)

A stream entry has the fields ``body`` (the serialized event), ``id``,
``timestamp`` (seconds since the epoch) and ``content_type`` of its event;
with tracing on also ``traceparent`` and ``tracestate``, in CloudEvents binary
mode ``ce_specversion``, ``ce_id``, .... A pub/sub message is the body alone.

An event counts as published when Redis answered its command: the entry id
of XADD (the entry is in the stream, and as durable as the server's
persistence settings make it), or the receiver count of PUBLISH (pub/sub is
at most once: a subscriber that is not connected misses the message).

Commands go to Redis in pipelines on one connection, in order: what the
lanes hand over while one pipeline is on its way goes in the next. A failed
pipeline fails the commands queued behind it too, so that the lane sends
them again in order; the next pipeline connects again. Replies are bounded
by the connection's ``socket_timeout`` (redis-py's default: 5 s) per pipeline.

A refused login (``WRONGPASS``, ``NOAUTH``) and a command the profile's user
may not run (``NOPERM``) fail at once, saying what to fix: a retry cannot
change them.

TLS: the profile's ``tls`` block (the same in every broker profile) makes
the SSL context of the connection, with the server's certificate verified
and its host name checked. redis-py's own options (``ssl: true``,
``ssl_ca_certs``, ... or a ``rediss://`` url) keep working instead, with
hostname checking on unless ``ssl_check_hostname: false`` (redis-py 5 leaves
it off by default); the two cannot be mixed.
"""
import asyncio
import contextlib
import inspect
import json
import math
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

from evbus.connection import import_error

try:
    import redis.asyncio
    import redis.exceptions
    from redis.backoff import NoBackoff
    from redis.asyncio.retry import Retry

    # redis-py before 5.3 wants a command name for a connection of the pool; later ones warn about it
    _COMMAND = inspect.signature(redis.asyncio.ConnectionPool.get_connection).parameters.get("command_name")
    _NAMES_A_COMMAND = _COMMAND is not None and _COMMAND.default is inspect.Parameter.empty
    IMPORT_ERROR = None
except ImportError as e:  # missing or older than the extra's floor (raised again when broken)
    IMPORT_ERROR = import_error(e, ("redis",))

from evbus import cloudevents
from evbus import tls
from evbus.connection import Holder
from evbus.connection import Route as BaseRoute
from evbus.connection import close_quietly
from evbus.connection import fail_waiting
from evbus.connection import hub_functions
from evbus.connection import listen_error
from evbus.connection import options
from evbus.connection import retry_helps
from evbus.connection import set_up
from evbus.connection import tls_block
from evbus.connection import virtual
from evbus.exc import LoginRefusedError
from evbus.exc import NoDestinationError
from evbus.exc import ProfileError
from evbus.exc import TlsConfigError
from evbus.exc import TlsRefusedError

__contracts__ = ["broker"]


async def _take_connection(pool):
    """:return: A connection of the pool, asked for as the installed redis-py wants"""
    if _NAMES_A_COMMAND:
        return await pool.get_connection("PING")
    return await pool.get_connection()


def __virtual__(hub):
    return virtual(IMPORT_ERROR, "the redis ingress (acct provider redis) needs redis-py", "redis")


def __init__(hub):
    profile_keys = ("connection", "mode", "stream", "channel", "maxlen", "tls")
    # CONNECTIONS: connection key -> Writer; BY_CTX: a lane's ctx -> its Route
    set_up(hub, "redis", acct=["redis"], profile_keys=profile_keys, holder=_writer, route=Route)


def command(*args: bytes, more: int = 0) -> bytes:
    """
    A command in RESP, the Redis protocol: an array of bulk strings.

    :param args: The command and its arguments, as bytes
    :param more: How many arguments the caller appends after these (as :data:`ENTRY` does)
    """
    return b"*%d\r\n" % (len(args) + more) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


# The rest of an XADD after "body": the body and the other fields of the entry,
# as RESP bulk strings; formatted with (len(body), body, len(id), id, ...)
ENTRY = (
    b"$%d\r\n%s\r\n"
    b"$2\r\nid\r\n$%d\r\n%s\r\n"
    b"$9\r\ntimestamp\r\n$%d\r\n%s\r\n"
    b"$12\r\ncontent_type\r\n$%d\r\n%s\r\n"
)
ENTRY_ARGUMENTS = 7


class Writer(Holder):
    """
    One profile's Redis client and connection, and the commands waiting for
    the next pipeline: they are written in one go, and the replies read in order.
    """

    def __init__(self, connection_kwargs: dict, where: str, tls_block: Mapping | None = None):
        super().__init__(where)
        self.connection_kwargs = connection_kwargs
        self.tls_block = tls_block
        self.client: Any = None
        # The pool connection the writer keeps for itself
        self.connection: Any = None
        # (command in RESP, future of its reply), in order
        self.queue: list[tuple[bytes, asyncio.Future]] = []
        self.flusher: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.client is not None and self.loop is asyncio.get_running_loop()

    async def connect(self):
        """Make the client, check that the server answers, and take a connection of the pool."""
        kwargs = dict(self.connection_kwargs)
        # No retry of redis-py's own (its default: several, with backoff): the lane's retry
        # policy decides, and with retry_attempts 1 an event gets one attempt, not redis-py's
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        client = _client(kwargs, self.tls_block)
        try:
            await client.ping()
            self.connection = await _take_connection(client.connection_pool)
        except BaseException as e:
            await client.aclose()
            refusal = _refusal(e, self.where)
            if refusal is not None:
                raise refusal from e
            raise
        self.client = client

    async def close(self):
        client, self.client = self.client, None
        self.connection = None
        flusher, self.flusher = self.flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
        self._fail(self.queue, redis.exceptions.ConnectionError("the connection was closed"))
        self.queue = []
        if client is not None:
            await close_quietly(client.aclose())  # disconnects the pool's connections, the writer's too

    def submit(self, packed: bytes) -> asyncio.Future:
        """
        Queue one command for the next pipeline.

        :param packed: The command in RESP (:func:`command`)
        :return: The future of its reply
        """
        future = self.loop.create_future()
        self.queue.append((packed, future))
        if self.flusher is None:
            self.flusher = self.loop.create_task(self._flush())
        return future

    async def _flush(self):
        """Send the queued commands in pipelines, one at a time, until none is left."""
        connection = self.connection
        try:
            while self.queue:
                batch, self.queue = self.queue, []
                # A command whose future is done was dropped: its lane went back and will send it again
                batch = [(packed, future) for packed, future in batch if not future.done()]
                if not batch:
                    continue
                timeout = connection.socket_timeout
                try:
                    # One time limit for the whole pipeline, instead of one per reply
                    async with asyncio.timeout(timeout):
                        # (re)connects when the connection was lost
                        await connection.send_packed_command(
                            b"".join(packed for packed, _ in batch), check_health=False
                        )
                        for _, future in batch:
                            try:
                                reply = await connection.read_response(timeout=math.inf)
                            except redis.exceptions.ResponseError as e:  # this command's own error
                                if not future.done():
                                    future.set_exception(_refusal(e, self.where) or e)
                            else:
                                if not future.done():
                                    future.set_result(reply)
                except Exception as e:
                    error = e
                    if isinstance(e, TimeoutError) and not isinstance(e, redis.exceptions.RedisError):
                        error = redis.exceptions.TimeoutError(
                            f"no reply from {self.where} within {timeout} s"
                        )
                    # (a reconnect may be refused): one error for all, so the lane sees them share it
                    error = _refusal(error, self.where) or error
                    try:
                        await connection.disconnect()  # unread replies would answer the next commands
                    except Exception:
                        pass
                    # Those queued behind fail too: the lane sends them all again, in order
                    self._fail(batch, error)
                    self._fail(self.queue, error)
                    self.queue = []
        finally:
            if self.flusher is asyncio.current_task():
                self.flusher = None

    @staticmethod
    def _fail(queued: list[tuple[bytes, asyncio.Future]], error: BaseException):
        fail_waiting((future for _, future in queued), error)


if IMPORT_ERROR is None:

    class TlsConnection(redis.asyncio.SSLConnection):
        """
        A redis-py TLS connection with the SSL context that evbus made of the
        profile's ``tls`` block, instead of one of redis-py's ``ssl_*`` options.
        """

        def __init__(self, *, tls_context: ssl.SSLContext, **kwargs):
            super().__init__(**kwargs)
            self.tls_context = tls_context

        def _connection_arguments(self) -> Mapping:
            # The TCP connection's arguments (host, port), and the context
            arguments = dict(redis.asyncio.Connection._connection_arguments(self))
            arguments["ssl"] = self.tls_context
            return arguments


def _client(kwargs: dict, tls_block: Mapping | None) -> Any:
    """
    A redis-py client of a profile's connection options.

    :param kwargs: Keyword arguments of ``redis.asyncio.Redis`` (or a ``url`` and those of ``from_url``)
    :param tls_block: The profile's ``tls`` block: the client's connections use its SSL context
    :raises TlsConfigError: for a tls block evbus cannot use, or TLS on a unix socket
    """
    kwargs = dict(kwargs)
    url = kwargs.pop("url", None)
    scheme = urllib.parse.urlsplit(str(url)).scheme if url else None
    if tls_block is None and (scheme == "rediss" or (not url and kwargs.get("ssl"))):
        # redis-py 5 does not check host names unless told to; 6 and later do
        kwargs.setdefault("ssl_check_hostname", True)
    context = None
    if tls_block is not None:
        if scheme == "unix" or kwargs.get("unix_socket_path"):
            raise TlsConfigError("a tls block needs a TCP connection to Redis, not a unix socket")
        context = tls.TlsOptions.parse(tls_block).context()
    client = redis.asyncio.Redis.from_url(str(url), **kwargs) if url else redis.asyncio.Redis(**kwargs)
    if context is not None:
        pool = client.connection_pool
        pool.connection_class = TlsConnection
        pool.connection_kwargs["tls_context"] = context
    return client


def _refusal(error: BaseException, where: str) -> LoginRefusedError | TlsRefusedError | None:
    """
    :return: A refused login (WRONGPASS, NOAUTH) or command (NOPERM), or a
        TLS handshake that a retry cannot mend, saying what to fix; None for
        other errors
    """
    refused = tls.refusal(error, where)
    if refused is not None:
        return refused
    if isinstance(error, redis.exceptions.AuthenticationError):
        return LoginRefusedError(
            f"Redis at {where} refused the login ({error}): check the profile's username and password"
        )
    if isinstance(error, redis.exceptions.NoPermissionError):
        return LoginRefusedError(
            f"Redis at {where} refused the command ({error}): "
            f"grant the profile's user the command (ACL SETUSER), or use another user"
        )
    return None


class Route(BaseRoute):
    """What a lane's sends need of its profile: the writer and the commands it makes."""

    __slots__ = ("pubsub", "key", "xadd_options", "heads")

    def __init__(self, writer: Writer, ctx):
        super().__init__(writer)
        acct = ctx.acct
        self.pubsub = pubsub = _mode(ctx) == "pubsub"
        key = (acct.get("channel") if pubsub else acct.get("stream")) or None
        self.key: str | None = str(key) if key else None
        maxlen = acct.get("maxlen")
        self.xadd_options = (b"MAXLEN", b"~", str(int(maxlen)).encode(), b"*") if maxlen else (b"*",)
        # (stream or channel, fields beside those of every event) -> the start of its command
        self.heads: dict[tuple[str, int], bytes] = {}

    def head(self, key: str, fields: int = 0) -> bytes:
        """
        :param fields: The fields the entry has beside those of every event (its headers)
        :return: ``PUBLISH <channel>``, or ``XADD <stream> [MAXLEN ~ <n>] * body``, in RESP
            with room for the arguments that follow
        """
        head = self.heads.get((key, fields))
        if head is None:
            if self.pubsub:
                head = command(b"PUBLISH", key.encode(), more=1)
            else:
                more = ENTRY_ARGUMENTS + 2 * fields
                head = command(b"XADD", key.encode(), *self.xadd_options, b"body", more=more)
            if len(self.heads) < 1000:  # routing keys are few; a flood of them is not cached
                self.heads[(key, fields)] = head
        return head


def _tls_block(ctx) -> Mapping | None:
    """:return: The profile's ``tls`` block, checked against redis-py's own TLS options"""
    return tls_block(ctx, native=(), prefix="ssl_")


def _mode(ctx) -> str:
    """
    :return: The profile's mode, ``stream`` or ``pubsub``
    :raises ProfileError: for another
    """
    mode = str(ctx.acct.get("mode") or "stream").lower()
    if mode not in ("stream", "pubsub"):
        raise ProfileError("redis", None, f"mode '{mode}' is neither stream nor pubsub")
    return mode


def _writer(hub, ctx) -> Writer:
    """The writer of a profile's connection (made once per connection key)."""
    _mode(ctx)  # a profile of neither mode has no writer
    return Writer(options(ctx), where=hub.ingress.redis.describe(ctx), tls_block=_tls_block(ctx))


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for refused credentials (WRONGPASS,
    NOAUTH) or permissions (NOPERM), a key that holds no stream (WRONGTYPE),
    an event without a stream or channel, or a connection that redis-py
    cannot make of the profile (a ValueError: an URL with another scheme).
    """
    if isinstance(error, redis.exceptions.ResponseError) and str(error).startswith("WRONGTYPE"):
        return False
    refused = (
        redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError, redis.exceptions.DataError, ValueError
    )
    return retry_helps(error, refused)


def binding(hub, ctx) -> cloudevents.Binding | None:
    """
    :return: In mode stream, the CloudEvents attributes as entry fields ``ce_<name>``
        (Redis has no binding of its own); None in mode pubsub, whose messages
        are the body alone (structured mode only)
    """
    return None if str(ctx.acct.get("mode") or "stream").lower() == "pubsub" else cloudevents.REDIS


def messaging(hub, ctx, routing_key: str | None) -> dict:
    """
    :return: The OpenTelemetry messaging attributes of a message to ``routing_key``: its stream or channel
    """
    pubsub = str(ctx.acct.get("mode") or "stream").lower() == "pubsub"
    return {
        "messaging.system": "redis",
        "messaging.destination.name": ctx.acct.get("channel" if pubsub else "stream") or routing_key,
    }


def describe(hub, ctx) -> str:
    """
    :return: The server's address, ``redis://host:port/db`` (``rediss://``
        with TLS), without credentials
    """
    connection = ctx.acct.get("connection") or {}
    secure = ctx.acct.get("tls") not in (None, False)
    if connection.get("url"):
        url = urllib.parse.urlsplit(str(connection["url"]))
        if url.scheme == "unix":
            return f"unix://{url.path}"
        scheme = "rediss" if secure else url.scheme
        return f"{scheme}://{url.hostname}:{url.port or 6379}{url.path or '/0'}"
    if connection.get("unix_socket_path"):
        return f"unix://{connection['unix_socket_path']}"
    scheme = "rediss" if connection.get("ssl") or secure else "redis"
    host, port = connection.get("host", "localhost"), connection.get("port", 6379)
    return f"{scheme}://{host}:{port}/{connection.get('db', 0)}"


def unchecked_hostname(hub, ctx) -> str | None:
    """:return: The option of the profile that turns the checking of host names off, or None"""
    connection = ctx.acct.get("connection") or {}
    if not tls.flag(connection.get("ssl_check_hostname"), True):
        return "connection ssl_check_hostname: false"
    if str(connection.get("ssl_cert_reqs", "")).lower() == "none":
        return "connection ssl_cert_reqs: none"
    return tls.unchecked(ctx.acct)


# Connect a profile at start, close it at stop: on CONNECTIONS; publish on send
open, close, publish = hub_functions("redis")


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event's command to the next pipeline, in order; the returned
    future completes with Redis's reply (the entry id of XADD, the receiver
    count of PUBLISH).

    :param routing_key: The stream or channel when the profile names none
    :param event: The event
    """
    route = hub.ingress.redis.CONNECTIONS.find(ctx)
    writer = route.holder
    if not writer.ready:
        await writer.open()
    key = route.key or routing_key
    if not key:
        raise NoDestinationError(
            f"no Redis {'channel' if route.pubsub else 'stream'}: "
            "the profile names none and the event has no routing key"
        )
    body = event.body
    if route.pubsub:
        return writer.submit(b"%s$%d\r\n%s\r\n" % (route.head(key), len(body), body))
    event_id = event.id.encode()
    timestamp = repr(event.timestamp).encode()
    content_type = event.content_type.encode()
    entry = route.head(key, len(event.headers)) + ENTRY % (
        len(body),
        body,
        len(event_id),
        event_id,
        len(timestamp),
        timestamp,
        len(content_type),
        content_type,
    )
    if event.headers:  # trace context, CloudEvents attributes: more fields
        entry += b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part)
            for name, value in event.headers
            for part in (name.encode(), value.encode())
        )
    return writer.submit(entry)


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Take what arrives at the profile's stream or channel from now on
    (``evbus listen``), on a client of its own (made from the profile's
    ``connection``) that is closed when the listening ends.

    Mode ``stream``: ``XREAD BLOCK`` from ``$`` (the entries added from now
    on, none of those the stream held before), then from the last entry read;
    the body is the entry's ``body`` field (an entry without one, not written
    by evbus, is given as its fields in JSON). Mode ``pubsub``: ``SUBSCRIBE``
    to the channel. The client reads without the profile's ``socket_timeout``,
    which would cut a blocking read short (``socket_connect_timeout`` still
    bounds connecting).

    :param routing_key: The stream or channel, overriding the profile's
        ``stream``/``channel`` (then its ``routing_key``)
    :return: An async iterator of (stream or channel, body)
    :raises NoDestinationError: The profile names no stream or channel and no routing key was given
    :raises ListenError: Redis cannot be reached or refused the login, or the
        connection was lost (after redis-py's own retries)
    """
    pubsub = _mode(ctx) == "pubsub"
    key = routing_key or ctx.acct.get("channel" if pubsub else "stream") or ctx.acct.get("routing_key")
    if not key:
        raise NoDestinationError(
            f"no Redis {'channel' if pubsub else 'stream'} to listen on: "
            "the profile names none and no --routing-key was given"
        )
    key = str(key)
    kwargs = options(ctx)
    kwargs.setdefault("socket_connect_timeout", kwargs.get("socket_timeout") or 5)
    kwargs["socket_timeout"] = None  # a blocking read waits as long as it takes
    kwargs["decode_responses"] = False  # bodies are bytes
    client = _client(kwargs, _tls_block(ctx))
    try:
        try:
            await client.ping()
        except redis.exceptions.RedisError as e:
            raise listen_error("cannot connect", _refusal(e, hub.ingress.redis.describe(ctx)) or e) from e
        try:
            bodies = _subscribed(client, key) if pubsub else _entries(client, key)
            async with contextlib.aclosing(bodies):
                async for body in bodies:
                    yield key, body
        except redis.exceptions.ConnectionError as e:
            raise listen_error("lost the connection", e) from e
    finally:
        await client.aclose()


async def _subscribed(client, channel: str):
    """What is published to a channel from now on: its bodies."""
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    try:
        await subscriber.subscribe(channel)
        while True:
            message = await subscriber.get_message(timeout=None)
            if message is not None and message["type"] == "message":
                yield message["data"]
    finally:
        await subscriber.aclose()


async def _entries(client, stream: str):
    """
    The entries added to a stream from now on, in order: their ``body``
    field, or all their fields in JSON (an entry evbus did not write).
    """
    last = "$"
    while True:
        reply = await client.xread({stream: last}, block=0)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                body = fields.get(b"body")
                if body is None:
                    body = json.dumps(
                        {name.decode(errors="replace"): value.decode(errors="replace")
                         for name, value in fields.items()}
                    ).encode()
                yield body
