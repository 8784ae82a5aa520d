"""
NATS ingress, core NATS or JetStream, with one connection per profile,
opened at start and reused by every event.

Accepts the acct provider ``nats``. Install with ``pip install "evbus-ng[nats]"``.

.. code-block:: yaml

    nats:
      my_profile:
        connection:               # keyword arguments of nats.connect
          servers: nats://127.0.0.1:4222   # or a list; nats://user:password@host:port works too
          user: user
          password: secret        # or token: ...
          name: my-app
        tls:                      # optional: TLS (see evbus.tls); {} for the defaults
          ca_file: /path/ca.pem
          cert_file: /path/client.pem   # with key_file and password, for mutual TLS
        subject: events.default   # used when the event has no routing key
        jetstream: true           # publish to JetStream and wait for its PubAck (default: core NATS)
        stream: EVENTS            # optional: the stream that must take the message (JetStream)
        envelope: cloudevents     # optional: send CloudEvents (evbus.cloudevents)

The event's routing key (or the profile's ``routing_key``) is the subject;
``subject`` is the one used when there is none.

Each message carries the NATS headers ``Evbus-Id``, ``Evbus-Timestamp``
(seconds since the epoch) and ``Content-Type`` of its event; a JetStream
message also ``Nats-Msg-Id`` (the event id), so that the stream drops a copy
that a retry sent again within its duplicate window. With tracing on, also
``traceparent`` and ``tracestate``; in CloudEvents binary mode the attributes
``ce-specversion``, ``ce-id``, ... (values percent-encoded).

A JetStream publish counts as published when the stream acknowledged it
(PubAck): each message names a reply subject of its own under one inbox of
the connection, and the stream's answer there settles that event alone (a
PubAck; an error of the stream; "no responders" when no stream took the
message). Core NATS acknowledges nothing: events are written to the
connection as they come, and one PING after a batch of them confirms the
whole batch once its PONG is back, so a publish counts as published when the
server read it (not when a subscriber got it: core NATS is at most once).

The header block of a route's messages is written once per lane but for
the event's id and time, byte for byte as nats-py would write the same
headers (:class:`Headers`); the message goes to nats-py's write buffer as
one protocol command, as ``Client.publish`` puts it there (or through
``Client.publish`` itself, with the headers as a dict, on a nats-py whose
buffer is not where this module looks for it).

The lanes retry and reconnect: unless the profile sets ``allow_reconnect:
true`` (nats-py then reconnects and buffers on its own), a lost connection
fails the events not yet confirmed at once, and the lane sends them again
on a new connection.

What a retry cannot change fails at once, saying what to fix: a refused
login (authorization violation), a JetStream subject that no stream takes
(checked once per subject before its first publish, and again after a
publish that no stream answered), a ``stream`` that does not exist or does
not take the subject, and a message over the server's ``max_payload``.

TLS: the profile's ``tls`` block (the same in every broker profile) makes
the SSL context of the connection (nats-py's ``tls``; ``server_hostname``
is its ``tls_hostname``), with the server's certificate verified and its
host name checked. A ``tls://`` server URL without a block is TLS with
nats-py's defaults (verified too). A certificate that is not trusted or
not for the host fails at once, saying so. So does a server that does not
require TLS where the profile asks for it (its INFO without
``tls_required``): nothing, not even the login, is sent to it in the clear.
"""
import asyncio
import contextlib
import dataclasses
import itertools
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from evbus.connection import import_error

try:
    import nats
    import nats.errors
    import nats.js.api
    import nats.js.errors

    IMPORT_ERROR = None
except ImportError as e:  # missing or older than the extra's floor (raised again when broken)
    IMPORT_ERROR = import_error(e, ("nats",))

from evbus import cloudevents
from evbus import tls
from evbus.connection import Holder
from evbus.connection import Route as BaseRoute
from evbus.connection import close_quietly
from evbus.connection import connection_key
from evbus.connection import fail_waiting
from evbus.connection import hub_functions
from evbus.connection import listen_error
from evbus.connection import options
from evbus.connection import retry_helps
from evbus.connection import set_up
from evbus.connection import tls_block
from evbus.connection import virtual
from evbus.exc import ConnectError
from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from evbus.exc import NoDestinationError
from evbus.exc import RefusedError
from evbus.exc import TlsRefusedError

# Connection options the plugin sets unless the profile does: one quick
# connection attempt per server (nats-py would otherwise try each server 60
# times, 2 s apart), and no reconnect of its own (the lane retries).
QUICK_CONNECT = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0}

# The header block of a NATS message, as nats-py writes it: keys are RFC 7230
# tokens, a CR or LF in a value becomes a space (it would end the line)
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
# What nats-py refuses in a subject it publishes to: it could end the protocol line
_SUBJECT_INVALID = re.compile(r"[ \t\r\n]")
# The reply of a server that found no subscriber (no stream) for a request
NO_RESPONDERS = "503"
# What of nats-py's client Client.publish uses to put a command in its write buffer
_BUFFER = ("_send_command", "_flush_pending", "_flush_queue", "_max_pending_size")
# Reply subjects kept before those of abandoned publishes (timed out, cancelled) are swept
SWEEP_AT = 4096


__contracts__ = ["broker"]


class NoStreamError(RefusedError, LookupError):
    """No JetStream stream takes a subject, or the stream a profile names does not exist or does not take it."""


def __virtual__(hub):
    return virtual(IMPORT_ERROR, "the nats ingress (acct provider nats) needs nats-py", "nats")


def __init__(hub):
    profile_keys = ("connection", "jetstream", "stream", "subject", "tls")
    # CONNECTIONS: connection key -> Connection; BY_CTX: a lane's ctx -> its Route
    set_up(hub, "nats", acct=["nats"], profile_keys=profile_keys, holder=_connection, route=Route, key=_key)


def _header_block(headers: Mapping[str, str]) -> bytes:
    """
    The header block of a message with these headers, byte for byte as
    nats-py's ``Client.publish`` writes it: ``NATS/1.0``, a ``Key: value``
    line per header (key and value stripped, a CR or LF in a value made a
    space, a header with an empty key left out), and an empty line.

    :raises BadHeaderError: for a key that is not an RFC 7230 token (nats-py's error)
    """
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        key = key.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise _bad_header(key)
        lines.append(f"{key}: {value.strip().translate(_VALUE_NEWLINES)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


def _bad_header(key: str) -> Exception:
    error = getattr(nats.errors, "BadHeaderError", None)  # nats-py 2.16 and later
    return error(key) if error is not None else nats.errors.Error(f"nats: invalid header key {key!r}")


class Headers:
    """
    The headers of a route's messages: ``Evbus-Id``, ``Evbus-Timestamp``,
    ``Content-Type``, the event's own (trace context, CloudEvents
    attributes), and on JetStream ``Nats-Msg-Id`` and, when the profile
    names a stream, ``Nats-Expected-Stream``.

    The block of an event without headers of its own is made of parts built
    once per content type, the event's id and time between them.
    """

    def __init__(self, jetstream: bool, stream: str | None):
        self.jetstream = jetstream
        self.stream = stream if jetstream else None
        # content type -> the block from the end of the timestamp's value on, less the id
        self._tails: dict[str, tuple[str, str]] = {}

    def mapping(self, event) -> dict[str, str]:
        """:return: The headers of an event's message, in their order on the wire"""
        headers = {
            "Evbus-Id": event.id,
            "Evbus-Timestamp": repr(event.timestamp),
            "Content-Type": event.content_type,
        }
        if event.headers:  # trace context, CloudEvents attributes
            headers.update(event.headers)
        if self.jetstream:
            headers["Nats-Msg-Id"] = event.id
            if self.stream:
                headers["Nats-Expected-Stream"] = self.stream  # as nats-py's publish(stream=) adds it
        return headers

    def block(self, event) -> bytes:
        """:return: The header block of an event's message (:func:`_header_block` of :meth:`mapping`)"""
        if event.headers:
            return _header_block(self.mapping(event))
        tail = self._tails.get(event.content_type)
        if tail is None:
            tail = self._tail(event.content_type)
        event_id = event.id
        if not (event_id.isprintable() and " " not in event_id):  # (what strip() or translate() would change)
            event_id = event_id.strip().translate(_VALUE_NEWLINES)
        middle, end = tail
        block = f"NATS/1.0\r\nEvbus-Id: {event_id}\r\nEvbus-Timestamp: {event.timestamp!r}{middle}"
        if self.jetstream:  # the id again, in Nats-Msg-Id
            block = f"{block}{event_id}{end}"
        return block.encode()

    def _tail(self, content_type: str) -> tuple[str, str]:
        value = content_type.strip().translate(_VALUE_NEWLINES)
        if self.jetstream:
            end = "\r\n"
            if self.stream:
                end += f"Nats-Expected-Stream: {self.stream.strip().translate(_VALUE_NEWLINES)}\r\n"
            tail = (f"\r\nContent-Type: {value}\r\nNats-Msg-Id: ", end + "\r\n")
        else:
            tail = (f"\r\nContent-Type: {value}\r\n\r\n", "")
        if len(self._tails) < 16:
            self._tails[content_type] = tail
        return tail


class Acks:
    """
    The PubAcks a connection waits for: one inbox subscription, a reply
    subject per message under it, and the future of each by its reply
    subject. A reply that matches no future (one given up on, or one
    already settled) is ignored.
    """

    def __init__(self, client: Any):
        self.client = client
        self.prefix = client.new_inbox() + "."
        self.futures: dict[str, asyncio.Future] = {}
        self._next = itertools.count(1).__next__
        self._sweep_at = SWEEP_AT
        self._loop = asyncio.get_running_loop()

    async def start(self):
        """Subscribe to the inbox."""
        if _SUBJECT_INVALID.search(self.prefix):
            raise nats.errors.BadSubjectError
        await self.client.subscribe(self.prefix + "*", cb=self.on_reply)

    def expect(self) -> tuple[str, asyncio.Future]:
        """:return: A new reply subject, and the future of the PubAck that comes there"""
        futures = self.futures
        if len(futures) >= self._sweep_at:
            self.sweep()
        reply = f"{self.prefix}{self._next()}"
        future = futures[reply] = self._loop.create_future()
        return reply, future

    def sweep(self):
        """Forget the futures that are settled (given up on) but got no reply."""
        futures = self.futures
        for reply in [reply for reply, future in futures.items() if future.done()]:
            del futures[reply]
        self._sweep_at = max(SWEEP_AT, 2 * len(futures))

    def forget(self, reply: str):
        """Forget a reply subject whose message was not written."""
        future = self.futures.pop(reply, None)
        if future is not None and not future.done():
            future.cancel()

    async def on_reply(self, message: Any):
        """Settle the future of a reply: a PubAck, the stream's error, or no responders."""
        future = self.futures.pop(message.subject, None)
        if future is None or future.done():
            return
        headers = message.headers
        if headers and headers.get("Status") == NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            response = json.loads(message.data)
            error = response.get("error")
            if error is not None:
                future.set_exception(_api_error(error))
                return
            future.set_result(_pub_ack(response))
        except Exception as e:  # not a PubAck: a retry may get one
            future.set_exception(
                nats.js.errors.APIError(
                    description=f"unexpected reply to a JetStream publish: {message.data[:200]!r} ({e})"
                )
            )

    def fail(self, error: BaseException):
        """Fail every future still waiting (the connection is gone)."""
        futures, self.futures = self.futures, {}
        fail_waiting(futures.values(), error)


def _api_error(error: dict) -> Exception:
    """:return: The error of a stream's error reply, as nats-py makes it (``APIError`` and its kinds)"""
    try:
        nats.js.errors.APIError.from_error(error)  # raises what it makes
    except nats.js.errors.APIError as e:
        return e
    except Exception:  # a reply nats-py cannot read
        pass
    return nats.js.errors.APIError(code=error.get("code"), description=str(error.get("description", error)))


# The fields of nats-py's PubAck: a reply's other fields are left out, as its from_response does
_PUB_ACK_FIELDS = frozenset(f.name for f in dataclasses.fields(nats.js.api.PubAck)) if IMPORT_ERROR is None else frozenset()


def _pub_ack(response: dict) -> Any:
    """:return: The PubAck of a response, as nats-py's ``PubAck.from_response`` makes it"""
    return nats.js.api.PubAck(**{key: value for key, value in response.items() if key in _PUB_ACK_FIELDS})


class Session:
    """
    One client of a profile's connection, and what it was handed and has not
    confirmed yet: the core NATS batches waiting for their PONG, and the
    JetStream publishes waiting for their PubAck.
    """

    def __init__(self):
        self.client: Any = None
        self.js: Any = None
        self.acks: Acks | None = None
        self.flushes: dict[asyncio.Future, asyncio.Task] = {}
        # The subjects checked for what nats-py refuses in a subject
        self.subjects: set[str] = set()
        self._buffered = False

    def attach(self, client: Any):
        """Take the connected client; find nats-py's write buffer (see :meth:`write`)."""
        self.client = client
        self._buffered = all(hasattr(client, name) for name in _BUFFER)

    async def write(self, subject: str, reply: str, headers: "Headers", event: Any):
        """
        Write one message: its HPUB command goes to nats-py's write buffer,
        with the checks and counts of ``Client.publish``; on a nats-py whose
        buffer is not where this looks, through ``Client.publish`` itself.

        :raises MaxPayloadError: for a body over the server's max_payload
        """
        client = self.client
        if subject not in self.subjects:
            self._check_subject(subject)
        if not self._buffered:
            await client.publish(subject, event.body, reply=reply, headers=headers.mapping(event))
            return
        if client.is_closed:
            raise nats.errors.ConnectionClosedError
        if client.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        body = event.body
        size = len(body)
        if not client.is_connected:
            # Reconnecting: buffered up to its limit, as nats-py does
            if client._max_pending_size <= 0 or size + client.pending_data_size > client._max_pending_size:
                raise nats.errors.OutboundBufferLimitError
        if size > client.max_payload:
            raise nats.errors.MaxPayloadError
        block = headers.block(event)
        length = len(block)
        stats = client.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        await client._send_command(
            b"".join((f"HPUB {subject} {reply} {length} {length + size}\r\n".encode(), block, body, b"\r\n"))
        )
        if client._flush_queue is not None and client._flush_queue.empty():
            await client._flush_pending()

    def _check_subject(self, subject: str):
        if not self.client.options.get("skip_subject_validation"):
            if not subject or _SUBJECT_INVALID.search(subject):
                raise nats.errors.BadSubjectError
        if len(self.subjects) >= SWEEP_AT:
            self.subjects.clear()
        self.subjects.add(subject)

    async def fail(self):
        """
        nats-py's callback when the client lost its connection: what it holds
        fails now, so that the lane sends it again.
        """
        error = nats.errors.ConnectionClosedError()
        pending = list(self.flushes)
        for task in self.flushes.values():
            task.cancel()  # their PONG will not come
        if self.acks is not None:
            self.acks.fail(error)
        fail_waiting(pending, error)

    async def flush(self, route: "Route", batch: asyncio.Future):
        """
        Confirm a batch of core NATS publishes: PING after them, done when the
        PONG is back.
        """
        if route.batch is batch:
            route.batch = None  # events published from here on wait for the next PING
        client = self.client
        try:
            # nats-py writes its PING straight to the socket, ahead of what it still buffers:
            # the batch's publishes must have left the buffer first
            waited = 0
            while client.pending_data_size > 0 and not client.is_closed:
                await asyncio.sleep(0 if waited < 10 else 0.001)
                waited += 1
            await client.flush()
        except asyncio.CancelledError:
            if not batch.done():
                batch.set_exception(nats.errors.ConnectionClosedError())
        except Exception as e:
            if not batch.done():
                batch.set_exception(e)
        else:
            if not batch.done():
                batch.set_result(None)
        finally:
            self.flushes.pop(batch, None)


class Connection(Holder):
    """One profile's NATS connection (and JetStream context), opened once."""

    def __init__(
        self, connection_kwargs: dict, jetstream: bool, stream: str | None, where: str, tls_block: Any = None
    ):
        super().__init__(where)
        self.connection_kwargs = connection_kwargs
        self.tls_block = tls_block
        self.jetstream = jetstream
        self.stream = stream
        self.session = Session()
        self.last_error: BaseException | None = None
        # JetStream: the subjects a stream (the profile's, when it names one) was seen to take
        self.covered: set[str] = set()

    @property
    def client(self) -> Any:
        """The nats-py client, or None"""
        return self.session.client

    @property
    def ready(self) -> bool:
        client = self.session.client
        return client is not None and self.loop is asyncio.get_running_loop() and not client.is_closed

    async def connect(self):
        """
        Connect; with JetStream, check that the profile's ``stream`` (when it
        names one) exists, and subscribe to the inbox of the PubAcks.
        """
        kwargs = _client_kwargs(self.connection_kwargs, self.tls_block)
        kwargs.setdefault("name", "evbus")
        # A new session: a late callback of the last client fails what that client held, no more
        session = Session()
        kwargs.update(error_cb=self._on_error, closed_cb=session.fail, disconnected_cb=session.fail)
        self.last_error = None
        client = Client()
        try:
            await client.connect(**kwargs)
        except Exception as e:
            await _abandon(client)
            refusal = tls.refusal(e, self.where) or tls.refusal(self.last_error, self.where)
            if refusal is not None:
                raise refusal from None
            if isinstance(e, nats.errors.NoServersError):
                if _login_refused(self.last_error):
                    raise self._refused(self.last_error) from None
                last = self.last_error
                reason = f": {type(last).__name__}: {last}" if last else ""
                raise ConnectError(f"cannot connect to {self.where}{reason}") from None
            if _login_refused(e):
                raise self._refused(e) from None
            raise
        session.attach(client)
        if self.jetstream:
            js = session.js = client.jetstream()
            try:
                if self.stream:
                    await js.stream_info(self.stream)
                session.acks = Acks(client)
                await session.acks.start()
            except BaseException as e:
                await client.close()
                if isinstance(e, nats.js.errors.NotFoundError):
                    raise NoStreamError(
                        f"JetStream stream '{self.stream}' does not exist on {self.where}: "
                        f"create it, or name an existing stream in the profile"
                    ) from None
                raise
        self.session = session

    def _refused(self, error: BaseException) -> LoginRefusedError:
        return LoginRefusedError(
            f"NATS at {self.where} refused the login ({error}): "
            f"check the profile's user and password (or token, or credentials)"
        )

    async def check_subject(self, subject: str, stream: str | None):
        """
        Check, once per subject, that a JetStream stream takes it (the
        profile's stream, when it names one); a publish no stream takes
        would only come back as "no responders", over and over.

        :raises NoStreamError: No stream takes the subject, or another than the profile names
        """
        try:
            name = await self.session.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            raise NoStreamError(
                f"no JetStream stream on {self.where} takes subject '{subject}': "
                f"create a stream for subject '{subject}' (or one that matches it)"
            ) from None
        if stream and name != stream:
            raise NoStreamError(
                f"subject '{subject}' goes to JetStream stream '{name}' on {self.where}, not to the "
                f"profile's stream '{stream}': add the subject to stream '{stream}', or fix the profile"
            )
        self.covered.add(subject)

    async def close(self):
        session, self.session = self.session, Session()
        client = session.client
        if client is not None and not client.is_closed:
            await close_quietly(client.close())  # writes what is buffered
        await session.fail()  # what the client still held, should nats-py not have said so yet

    async def _on_error(self, error: Exception):
        # nats-py reports connection errors here (and would log them); the lane reports its own
        self.last_error = error


async def _abandon(client: Any):
    """
    Close the socket of a client whose connect failed (a refused login, say),
    and wait for it, at most a second: nats-py leaves it to the garbage
    collector, which may log its reset as "Future exception was never retrieved".
    """
    transport = getattr(client, "_transport", None)
    if transport is None:
        return
    with contextlib.suppress(Exception):
        transport.close()
        async with asyncio.timeout(1):
            await transport.wait_closed()


if IMPORT_ERROR is None:

    class Client(nats.NATS):
        """
        A nats-py client that never goes on in plain text where TLS was asked
        for (the profile's ``tls`` block, nats-py's ``tls`` option or a
        ``tls://`` server): nats-py starts TLS only when the server's INFO
        says ``tls_required``, and would otherwise send the credentials and
        the events in the clear to a server (or to whoever stands between)
        that leaves it out. Refused before anything is sent.
        """

        async def _process_info(self, info: dict, initial_connection: bool = False):
            if (
                initial_connection
                and not info.get("tls_required")
                and not self.options.get("tls_handshake_first")
                and self._current_server is not None
                and ("tls" in self.options or self._current_server.uri.scheme == "tls")
            ):
                uri = self._current_server.uri
                raise TlsRefusedError(
                    f"the NATS server at {uri.hostname}:{uri.port} does not require TLS, which the "
                    f"profile asks for: nothing was sent to it (make the server require TLS, or use "
                    f"tls handshake_first on both sides with the connection's tls_handshake_first: true)"
                )
            await super()._process_info(info, initial_connection)


class Route(BaseRoute):
    """What a lane's sends need of its profile: the connection and the per-profile settings."""

    __slots__ = ("subject", "stream", "headers", "batch")

    def __init__(self, connection: Connection, ctx):
        super().__init__(connection)
        self.subject = ctx.acct.get("subject") or None
        self.stream = connection.stream
        # The headers of its messages, their constant parts built once
        self.headers = Headers(connection.jetstream, self.stream)
        # Core NATS: the confirmation shared by the events published since the last PING
        self.batch: asyncio.Future | None = None


def _tls_block(ctx) -> Any:
    """:return: The profile's ``tls`` block, checked against nats-py's own TLS options"""
    return tls_block(ctx, native=("tls", "tls_hostname"))


def _client_kwargs(connection_kwargs: dict, tls_block: Any) -> dict:
    """
    The keyword arguments of ``nats.connect``: the profile's connection,
    one quick attempt per server unless it allows nats-py's reconnects, and
    the SSL context of its ``tls`` block.

    :raises TlsConfigError: for a tls block evbus cannot use
    """
    kwargs = dict(connection_kwargs)
    if not kwargs.get("allow_reconnect"):
        kwargs["allow_reconnect"] = False
        for name, value in QUICK_CONNECT.items():
            kwargs.setdefault(name, value)
    if tls_block is not None:
        options = tls.TlsOptions.parse(tls_block)
        kwargs["tls"] = options.context()
        if options.server_hostname:
            kwargs["tls_hostname"] = options.server_hostname
    return kwargs


def _key(ctx) -> str:
    """:return: The connection key of a profile: with JetStream, and its stream, a connection of their own"""
    return connection_key(ctx, bool(ctx.acct.get("jetstream")), ctx.acct.get("stream") or None)


def _connection(hub, ctx) -> Connection:
    """The connection of a profile (made once per connection key)."""
    return Connection(
        options(ctx),
        jetstream=bool(ctx.acct.get("jetstream")),
        stream=ctx.acct.get("stream") or None,
        where=hub.ingress.nats.describe(ctx),
        tls_block=_tls_block(ctx),
    )


def _login_refused(error: BaseException | None) -> bool:
    """Whether a nats-py error is the server refusing the login ("Authorization Violation")."""
    if isinstance(error, nats.errors.AuthorizationError):
        return True
    return isinstance(error, nats.errors.Error) and "authorization violation" in str(error).lower()


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for a message over the server's size
    limit, a malformed subject, refused credentials, a subject no stream
    takes, or an event without a subject.

    A JetStream publish that no stream answered ("no responders") is
    retried: a server that restarts answers so while its streams come back.
    The next attempt checks again whether a stream takes the subject.
    """
    if _login_refused(error):
        return False
    if isinstance(error, nats.js.errors.NoStreamResponseError):
        for connection in hub.ingress.nats.CONNECTIONS.values():
            connection.covered.clear()
    return retry_helps(error, (nats.errors.MaxPayloadError, nats.errors.BadSubjectError))


def binding(hub, ctx) -> cloudevents.Binding:
    """
    :return: The CloudEvents NATS binding: attributes in ``ce-`` headers, percent-encoded
    """
    return cloudevents.NATS


def messaging(hub, ctx, routing_key: str | None) -> dict:
    """
    :return: The OpenTelemetry messaging attributes of a message to ``routing_key``: its subject
    """
    return {"messaging.system": "nats", "messaging.destination.name": routing_key or ctx.acct.get("subject")}


def describe(hub, ctx) -> str:
    """
    :return: The servers, ``nats://host:port`` (``tls://`` with TLS, comma
        separated), without credentials
    """
    servers = (ctx.acct.get("connection") or {}).get("servers") or "nats://localhost:4222"
    if isinstance(servers, str):
        servers = servers.split(",")
    secure = ctx.acct.get("tls") not in (None, False)
    described = []
    for server in servers:
        server = str(server).strip()
        if "://" not in server:
            server = f"nats://{server}"
        url = urllib.parse.urlsplit(server)
        scheme = "tls" if secure and url.scheme == "nats" else url.scheme
        described.append(f"{scheme}://{url.hostname}:{url.port or 4222}")
    return ",".join(described)


def unchecked_hostname(hub, ctx) -> str | None:
    """:return: The option of the profile that turns the checking of host names off, or None"""
    return tls.unchecked(ctx.acct)


# Connect a profile at start, close it at stop: on CONNECTIONS; publish on send (shielded: a core
# NATS confirmation is shared with the other events of its batch)
open, close, publish = hub_functions("nats", shield=True)


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event to the connection, in order; the returned future
    completes when JetStream acknowledged it (JetStream), or when the server
    answered the PING that followed it (core NATS).

    :param routing_key: The subject; the profile's ``subject`` when empty
    :param event: The event
    """
    route = hub.ingress.nats.CONNECTIONS.find(ctx)
    connection = route.holder
    if not connection.ready:
        await connection.open()
    subject = routing_key or route.subject
    if not subject:
        raise NoDestinationError("no NATS subject: the event has no routing key and the profile names no subject")
    session = connection.session
    try:
        if connection.jetstream:
            if subject not in connection.covered:
                await connection.check_subject(subject, route.stream)
                session = connection.session
            acks = session.acks
            if acks is None:  # the connection was closed while the subject was checked
                raise nats.errors.ConnectionClosedError
            reply, ack = acks.expect()
            try:
                await session.write(subject, reply, route.headers, event)
            except BaseException:
                acks.forget(reply)
                raise
            return ack
        await session.write(subject, "", route.headers, event)
    except nats.errors.MaxPayloadError:
        raise MessageTooLargeError(
            f"the event of {len(event.body)} bytes is larger than the max_payload of "
            f"{getattr(connection.client, 'max_payload', '?')} bytes of NATS at {connection.where}: "
            f"send smaller events, or raise max_payload in the server's configuration"
        ) from None
    batch = route.batch
    if batch is None or batch.done():
        loop = connection.loop
        batch = route.batch = loop.create_future()
        session.flushes[batch] = loop.create_task(session.flush(route, batch))
    return batch


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Subscribe to the profile's subject (``evbus listen``) and take what is
    published to it from now on, on a connection of its own (made from the
    profile's ``connection``) that is closed when the listening ends.

    The subject is the routing key given, else the profile's ``routing_key``,
    else its ``subject`` (as a published event's), and may hold wildcards
    (``events.*``, ``events.>``). The subscription is a core NATS one, with
    ``jetstream: true`` too: it gets what is published to the subject from
    now on, JetStream publishes included, and nothing that a stream held
    before; no consumer is made on the stream.

    :param routing_key: The subject, overriding the profile's
    :return: An async iterator of (subject, body)
    :raises NoDestinationError: The profile names no subject and no routing key was given
    :raises ListenError: No server could be reached, or the connection was lost
    """
    subject = routing_key or ctx.acct.get("routing_key") or ctx.acct.get("subject")
    if not subject:
        raise NoDestinationError(
            "no NATS subject to listen on: the profile names no subject and no --routing-key was given"
        )
    kwargs = _client_kwargs(options(ctx), _tls_block(ctx))
    kwargs.setdefault("name", "evbus-listen")
    errors: list[BaseException] = []

    async def on_error(error: Exception):
        errors.append(error)  # reported with the ListenError, instead of nats-py's log

    kwargs["error_cb"] = on_error
    client = Client()
    try:
        await client.connect(**kwargs)
    except Exception as e:  # refused credentials or certificate, a malformed server URL, ...
        await _abandon(client)
        where = hub.ingress.nats.describe(ctx)
        refusal = tls.refusal(e, where) or tls.refusal(errors[-1] if errors else None, where)
        if refusal is not None:
            raise listen_error("cannot connect", refusal) from e
        if isinstance(e, nats.errors.NoServersError):
            raise listen_error("cannot connect", errors[-1] if errors else None) from None
        raise listen_error("cannot connect", e) from e
    try:
        subscription = await client.subscribe(str(subject))
        await client.flush()  # the server has the subscription (and answers) before the first message
        async for message in subscription.messages:
            yield message.subject, message.data
        # The iterator ends when the client closed: not by us, so the connection was lost
        raise listen_error("lost the connection", errors[-1] if errors else None)
    finally:
        if not client.is_closed:
            await close_quietly(client.close())
