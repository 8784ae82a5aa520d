"""
MQTT ingress, with one client connection per profile, opened at start and
reused by every event.

Accepts the acct provider ``mqtt``. Install with ``pip install "evbus-ng[mqtt]"``.

.. code-block:: yaml

    mqtt:
      my_profile:
        connection:               # keyword arguments of aiomqtt.Client
          hostname: 127.0.0.1
          port: 1883
          username: user
          password: secret
          identifier: my-app      # the client id; a random one when empty
          protocol: 5             # 3.1, 3.1.1 (the default) or 5
        tls:                      # optional: TLS (see evbus.tls); {} for the defaults
          ca_file: /path/ca.pem
          cert_file: /path/client.pem   # with key_file and password, for mutual TLS
        topic: events/default     # used when the event has no routing key
        qos: 1                    # 0, 1 (the default) or 2
        retain: false
        envelope: cloudevents     # optional: send CloudEvents (evbus.cloudevents; 3.1.1: structured mode)

The event's routing key (or the profile's ``routing_key``) is the topic;
``topic`` is the one used when there is none.

With QoS 1 or 2 an event counts as published when the broker acknowledged it
(PUBACK, or PUBCOMP for QoS 2); with QoS 0 when it was written to the
connection. The message is the event body as it is: MQTT 3.1.1 has no
headers. With ``protocol: 5`` each message also carries the content type of
its event and the user properties ``Evbus-Id`` and ``Evbus-Timestamp``
(seconds since the epoch); with tracing on, ``traceparent`` and
``tracestate``. In CloudEvents binary mode the user properties are the
CloudEvent's attributes (``specversion``, ``id``, ...) and the trace context,
without ``Evbus-Id`` and ``Evbus-Timestamp``.

A lost connection fails the events not yet acknowledged at once; the lane
sends them again on a new connection.

What a retry cannot change fails at once, saying what to fix: a CONNACK
that refuses the user name, password or authorization; with ``protocol: 5``
a message over the Maximum Packet Size the broker declares, and a PUBACK
that refuses the message as not authorized, with an invalid topic name or
payload format. (An MQTT 3.1.1 broker acknowledges a message it drops for
its size or its ACL: nothing tells evbus.)

TLS: the profile's ``tls`` block (the same in every broker profile) makes
the SSL context of the connection (aiomqtt's ``tls_context``), with the
server's certificate verified and its host name checked. aiomqtt's own
``tls_params`` (a mapping, ``{}`` for its defaults) and ``tls_insecure`` keep
working instead; the two cannot be mixed. A certificate that is not trusted
or not for the host, and a client certificate the broker requires and did
not get, fail at once, saying so.
"""
import asyncio
from collections.abc import Mapping
from typing import Any

from evbus.connection import import_error

try:
    import aiomqtt
    import paho.mqtt.client as paho_mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    IMPORT_ERROR = None
except ImportError as e:  # missing or older than the extra's floor (raised again when broken)
    IMPORT_ERROR = import_error(e, ("aiomqtt", "paho"))

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
from evbus.exc import ConfigError
from evbus.exc import ConnectError
from evbus.exc import LoginRefusedError
from evbus.exc import MessageTooLargeError
from evbus.exc import NackedError
from evbus.exc import NoDestinationError
from evbus.exc import RefusedError

__contracts__ = ["broker"]

# protocol: in a profile -> aiomqtt.ProtocolVersion member name
PROTOCOLS = {"3": "V31", "3.1": "V31", "4": "V311", "3.1.1": "V311", "5": "V5", "5.0": "V5"}

# CONNACK reason codes that a retry cannot help: refused credentials (MQTT 3.1.1 and 5)
REFUSED_CREDENTIALS = {4, 5, 134, 135}
# PUBACK reason codes (MQTT 5) that a retry cannot help: not authorized; topic name or payload format invalid
PUBACK_NOT_AUTHORIZED = 0x87
PUBACK_REFUSED = {0x87, 0x90, 0x99}


def __virtual__(hub):
    return virtual(IMPORT_ERROR, "the mqtt ingress (acct provider mqtt) needs aiomqtt", "mqtt")


def __init__(hub):
    profile_keys = ("connection", "topic", "qos", "retain", "tls")
    # CONNECTIONS: connection key -> Publisher; BY_CTX: a lane's ctx -> its Route
    set_up(hub, "mqtt", acct=["mqtt"], profile_keys=profile_keys, holder=_publisher, route=Route)


def client_kwargs(hub, connection: dict, tls_block: Any = None) -> dict:
    """
    The keyword arguments of ``aiomqtt.Client`` from a profile's ``connection``.

    :param connection: The profile's ``connection``; ``protocol`` may be a
        name ("3.1.1", "5"), ``tls_params`` and ``will`` mappings
    :param tls_block: The profile's ``tls`` block: its SSL context is the client's ``tls_context``
    :raises TlsConfigError: for a tls block evbus cannot use
    """
    kwargs = {key: value for key, value in dict(connection).items() if key != "loop"}
    if tls_block is not None:
        kwargs["tls_context"] = tls.TlsOptions.parse(tls_block).context()
    kwargs.setdefault("hostname", "localhost")
    protocol = kwargs.get("protocol")
    if protocol is not None and not isinstance(protocol, aiomqtt.ProtocolVersion):
        name = str(protocol).lower().lstrip("v")
        if name not in PROTOCOLS:
            raise ConfigError(f"unknown MQTT protocol '{protocol}': use 3.1, 3.1.1 or 5")
        kwargs["protocol"] = aiomqtt.ProtocolVersion[PROTOCOLS[name]]
    if isinstance(kwargs.get("tls_params"), Mapping):
        kwargs["tls_params"] = aiomqtt.TLSParameters(**kwargs["tls_params"])
    if isinstance(kwargs.get("will"), dict):
        kwargs["will"] = aiomqtt.Will(**kwargs["will"])
    return kwargs


class Publisher(Holder):
    """One profile's MQTT client connection, opened once."""

    def __init__(self, client_kwargs: dict, where: str):
        super().__init__(where)
        self.client_kwargs = client_kwargs
        self.v5 = client_kwargs.get("protocol") == aiomqtt.ProtocolVersion.V5
        self.client: Any = None
        # The paho-mqtt client inside aiomqtt's: its publish() hands a message
        # off without waiting, where aiomqtt's awaits the acknowledgement
        self.paho: Any = None
        # message id -> future of its acknowledgement
        self.pending: dict[int, asyncio.Future] = {}
        self._forward_publish: Any = None
        self._forward_disconnect: Any = None
        # The Maximum Packet Size the broker declared in its CONNACK (MQTT 5), or None
        self.max_packet_size: int | None = None

    @property
    def ready(self) -> bool:
        return self.paho is not None and self.loop is asyncio.get_running_loop() and self.paho.is_connected()

    async def connect(self):
        """Connect (aiomqtt's ``__aenter__``) and take the acknowledgements of this client's messages."""
        client = aiomqtt.Client(**self.client_kwargs)
        forward_connect, forward_lost = client._client.on_connect, client._client.on_disconnect
        loop = asyncio.get_running_loop()
        connecting = True

        def on_connect(paho_client, userdata, flags, reason_code, properties=None):
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
            forward_connect(paho_client, userdata, flags, reason_code, properties)

        def fail_connect(reason_code):
            if connecting and not client._connected.done():
                lost = f"the connection was lost before the broker's CONNACK ({reason_code})"
                client._connected.set_exception(aiomqtt.MqttError(lost))

        def on_lost(paho_client, userdata, flags, reason_code, properties=None):
            # aiomqtt would wait for the CONNACK until its timeout (a broker that refuses the
            # client's certificate after the TLS handshake closes the connection): fail it now
            loop.call_soon_threadsafe(fail_connect, reason_code)
            forward_lost(paho_client, userdata, flags, reason_code, properties)

        client._client.on_connect, client._client.on_disconnect = on_connect, on_lost
        try:
            try:
                await client.__aenter__()
            except BaseException:
                await abandon(client)  # cancelled or failed half way: its socket and task go now
                raise
        except aiomqtt.MqttCodeError as e:  # the broker answered: refused credentials, say
            if _code(e.rc) in REFUSED_CREDENTIALS:
                raise LoginRefusedError(
                    f"the MQTT broker at {self.where} refused the connection ({e.rc}): "
                    f"check the profile's username and password, and that the user may connect"
                ) from e
            raise
        except aiomqtt.MqttError as e:  # the socket: aiomqtt's text names neither host nor port
            refusal = tls.refusal(e, self.where) or await self._tls_refusal()
            if refusal is not None:
                raise refusal from e
            raise ConnectError(f"cannot connect to {self.where}: {e}") from e
        finally:
            connecting = False
        paho = client._client
        self._forward_publish, paho.on_publish = paho.on_publish, self._on_publish
        self._forward_disconnect, paho.on_disconnect = paho.on_disconnect, self._on_disconnect
        self.client, self.paho = client, paho

    async def _tls_refusal(self) -> Exception | None:
        """
        Why a TLS connection failed, when aiomqtt did not say (a broker that
        refuses the client's certificate after the handshake leaves it
        waiting for the CONNACK): one probe of the handshake.
        """
        context = self.client_kwargs.get("tls_context")
        if context is None:
            return None
        host, port = self.client_kwargs["hostname"], int(self.client_kwargs.get("port", 1883))
        return tls.refusal(await tls.probe(host, port, context), self.where)

    async def close(self):
        client, self.client = self.client, None
        self.paho = None
        self._fail_pending(ConnectionError("the MQTT connection was closed"))
        if client is not None:
            await disconnect(client)

    def _on_publish(self, client, userdata, mid: int, reason_code, properties):
        """paho-mqtt's callback: a message was acknowledged (QoS 1 and 2) or written (QoS 0)."""
        future = self.pending.pop(mid, None) if client is self.paho else None
        if future is None:
            # a publish of aiomqtt's own (or of a client this publisher left)
            self._forward_publish(client, userdata, mid, reason_code, properties)
        elif not future.done():
            if getattr(reason_code, "is_failure", False):
                future.set_exception(_puback_error(reason_code, self.where))
            else:
                future.set_result(None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        """paho-mqtt's callback: the connection is gone; what it had not acknowledged fails now."""
        self._forward_disconnect(client, userdata, flags, reason_code, properties)
        if self.client is not None:
            _retrieve(self.client)
        if client is self.paho:
            self._fail_pending(ConnectionError(f"the MQTT connection was lost: {reason_code}"))

    def _fail_pending(self, error: BaseException):
        pending, self.pending = self.pending, {}
        fail_waiting(pending.values(), error)


def _retrieve(client: Any):
    """
    aiomqtt sets the error of a lost connection on a future that only its own
    message loop awaits (evbus uses none): take it, so that asyncio does not
    log "Future exception was never retrieved". The lane reports the loss.
    """
    disconnected = getattr(client, "_disconnected", None)
    if isinstance(disconnected, asyncio.Future) and disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


async def abandon(client: Any, grace: float = 1.0):
    """
    Close what a client that did not finish connecting holds (its socket, its
    housekeeping task), and wait at most ``grace`` seconds for that task to
    end. It may run while its caller is being cancelled: the cancel is
    raised after it.
    """
    _retrieve(client)
    paho = getattr(client, "_client", None)
    if paho is None:
        return
    # aiomqtt connects in an executor thread that a cancel does not stop: a socket it
    # opens from now on is closed at once, and aiomqtt never hears of it (no reader, no task)
    loop = asyncio.get_running_loop()
    paho.on_socket_open = lambda _paho, _userdata, _sock: _close_late(loop, paho)
    paho.on_socket_close = None
    paho.on_socket_register_write = paho.on_socket_unregister_write = None
    try:
        # What the connecting thread asked of the loop before (watch the socket) runs first
        await asyncio.sleep(0)
    finally:
        sock = getattr(paho, "_sock", None)
        if sock is not None:
            # aiomqtt is not told of the close (it would close again): the loop stops watching here
            fileno = sock.fileno()
            if fileno >= 0:
                loop.remove_reader(fileno)
                loop.remove_writer(fileno)
            paho._reset_sockets()
    await _end_misc_task(client, grace)


def _close_late(loop: asyncio.AbstractEventLoop, paho: Any):
    """From paho's connecting thread: close the socket of an abandoned client, in its loop while it runs."""
    try:
        loop.call_soon_threadsafe(paho._reset_sockets)
    except RuntimeError:  # the loop is closed
        paho._reset_sockets()


async def disconnect(client: Any, grace: float = 1.0):
    """
    Disconnect an aiomqtt client and wait, at most ``grace`` seconds, until its
    socket is closed and its housekeeping task has ended: a loop that closes
    right after would otherwise leave that task pending ("Task was
    destroyed") and paho's socket to be closed at garbage collection ("Event
    loop is closed").
    """
    await close_quietly(client.__aexit__(None, None, None))
    _retrieve(client)
    paho = getattr(client, "_client", None)
    if paho is not None and getattr(paho, "_sock", None) is not None:
        paho._reset_sockets()  # closes the socket now; aiomqtt then cancels its task
    await _end_misc_task(client, grace, cancel=False)


async def _end_misc_task(client: Any, grace: float, cancel: bool = True):
    """
    Wait, at most ``grace`` seconds, for a client's housekeeping task to end
    (a loop that closes right after would leave it pending); cancel it
    first if ``cancel``, or when it has not ended by then.
    """
    misc = getattr(client, "_misc_task", None)
    if misc is None or misc.done():
        return
    if cancel:
        misc.cancel()
    done, _ = await asyncio.wait([misc], timeout=grace)
    if not done and not cancel:
        misc.cancel()
        await asyncio.wait([misc], timeout=grace)


def _code(rc: Any) -> Any:
    return getattr(rc, "value", rc)


def _puback_error(reason_code: Any, where: str) -> Exception:
    """
    :param reason_code: The failure reason code of a PUBACK or PUBREC (MQTT 5)
    :param where: The broker, for the message
    :return: The error of the publish: a RefusedError when a retry cannot help
    """
    code = _code(reason_code)
    if code == PUBACK_NOT_AUTHORIZED:
        return LoginRefusedError(
            f"the MQTT broker at {where} refused the message ({reason_code}): "
            f"allow the profile's user to publish to the topic"
        )
    if code in PUBACK_REFUSED:
        return RefusedError(f"the MQTT broker at {where} refused the message: {reason_code}")
    return NackedError(f"the MQTT broker at {where} refused the message: {reason_code}")


def _packet_size(topic: str, qos: int, properties: Any, payload: bytes) -> int:
    """
    :return: The size in bytes of the PUBLISH packet of a message (MQTT 5), as the
        broker's Maximum Packet Size counts it
    """
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    remaining += len(properties.pack()) if properties is not None else 1
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + length_bytes + remaining


class Route(BaseRoute):
    """What a lane's sends need of its profile: the publisher and the per-profile settings."""

    __slots__ = ("topic", "qos", "retain", "evbus_properties")

    def __init__(self, publisher: Publisher, ctx):
        super().__init__(publisher)
        acct = ctx.acct
        self.topic = acct.get("topic") or None
        qos = acct.get("qos")
        self.qos = 1 if qos is None or qos == "" else int(qos)
        retain = acct.get("retain") or False
        self.retain = retain is True or str(retain).lower() in ("true", "1", "yes")
        # Evbus-Id and Evbus-Timestamp, unless the user properties are a CloudEvent's
        # attributes (binary mode): names of evbus's own would read as attributes there
        self.evbus_properties = not cloudevents.binary(acct)


def _tls_block(ctx) -> Any:
    """:return: The profile's ``tls`` block, checked against aiomqtt's own TLS options"""
    return tls_block(ctx, native=("tls_params", "tls_context", "tls_insecure"))


def _publisher(hub, ctx) -> Publisher:
    """The publisher of a profile's connection (made once per connection key)."""
    kwargs = hub.ingress.mqtt.client_kwargs(options(ctx), _tls_block(ctx))
    return Publisher(kwargs, where=hub.ingress.mqtt.describe(ctx))


def retriable(hub, error: BaseException) -> bool:
    """
    Whether a retry can help: not for refused credentials, a message the
    broker refused or would refuse (:class:`~evbus.exc.RefusedError`), nor
    for what paho-mqtt rejects as a ``ValueError`` (a topic with wildcards, a
    payload too large), nor for an event without a topic.
    """
    if isinstance(error, aiomqtt.MqttCodeError) and _code(error.rc) in REFUSED_CREDENTIALS:
        return False
    return retry_helps(error, (ValueError,))


def binding(hub, ctx) -> cloudevents.Binding | None:
    """
    :return: With ``protocol: 5``, the CloudEvents MQTT binding: attributes in user
        properties of their own names, ``datacontenttype`` the Content Type too;
        None with MQTT 3.1.1, whose messages carry no properties (structured mode only)
    """
    protocol = hub.ingress.mqtt.client_kwargs(options(ctx)).get("protocol")
    return cloudevents.MQTT if protocol == aiomqtt.ProtocolVersion.V5 else None


def messaging(hub, ctx, routing_key: str | None) -> dict:
    """
    :return: The OpenTelemetry messaging attributes of a message to ``routing_key``: its topic
    """
    return {"messaging.system": "mqtt", "messaging.destination.name": routing_key or ctx.acct.get("topic")}


def describe(hub, ctx) -> str:
    """
    :return: The broker's address, ``mqtt://host:port``, without credentials
    """
    connection = ctx.acct.get("connection") or {}
    secure = any(connection.get(name) is not None for name in ("tls_params", "tls_context"))
    scheme = "mqtts" if secure or ctx.acct.get("tls") not in (None, False) else "mqtt"
    return f"{scheme}://{connection.get('hostname', 'localhost')}:{connection.get('port', 1883)}"


def unchecked_hostname(hub, ctx) -> str | None:
    """:return: The option of the profile that turns the checking of host names off, or None"""
    if tls.flag((ctx.acct.get("connection") or {}).get("tls_insecure"), False):
        return "connection tls_insecure: true"
    return tls.unchecked(ctx.acct)


# Connect a profile at start, close it at stop: on CONNECTIONS; publish on send
open, close, publish = hub_functions("mqtt")


async def send(hub, ctx, routing_key: str, event):
    """
    Hand one event to the client, in order; the returned future completes
    when the broker acknowledged it (QoS 1 and 2) or when it was written to
    the connection (QoS 0).

    :param routing_key: The topic; the profile's ``topic`` when empty
    :param event: The event
    """
    route = hub.ingress.mqtt.CONNECTIONS.find(ctx)
    publisher = route.holder
    if not publisher.ready:
        await publisher.open()
    topic = routing_key or route.topic
    if not topic:
        raise NoDestinationError("no MQTT topic: the event has no routing key and the profile names no topic")
    properties = None
    if publisher.v5:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = event.content_type
        user_properties = list(event.headers)  # trace context, CloudEvents attributes
        if route.evbus_properties:
            user_properties += [("Evbus-Id", event.id), ("Evbus-Timestamp", repr(event.timestamp))]
        if user_properties:
            properties.UserProperty = user_properties  # (paho appends what is assigned)
        limit = publisher.max_packet_size
        # A cheap bound first (these properties take well under 512 bytes), then the exact size
        if limit and len(event.body) + len(topic) > limit - 512 and _packet_size(
            topic, route.qos, properties, event.body
        ) > limit:
            raise MessageTooLargeError(
                f"the event of {len(event.body)} bytes makes an MQTT packet larger than the Maximum "
                f"Packet Size of {limit} bytes of the broker at {publisher.where}: send smaller "
                f"events, or raise max_packet_size in the broker's configuration"
            )
    info = publisher.paho.publish(topic, event.body, route.qos, route.retain, properties)
    if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
        raise ConnectionError(f"MQTT publish failed: {paho_mqtt.error_string(info.rc)}")
    # aiomqtt writes from the event loop, so the acknowledgement cannot come before this
    future = publisher.loop.create_future()
    publisher.pending[info.mid] = future
    return future


async def listen(hub, ctx, routing_key: str | None = None):
    """
    Subscribe to the profile's topic (``evbus listen``) with its ``qos`` and
    take what is published to it from now on, on a client connection of its
    own (made from the profile's ``connection``) that is closed when the
    listening ends.

    The topic is the routing key given, else the profile's ``routing_key``,
    else its ``topic`` (as a published event's), and may hold wildcards
    (``events/+``, ``events/#``); retained messages of the topic come first.
    The connection takes a random client id and no ``will``, so that it does
    not take over the session of a publisher with the profile's
    ``identifier``, nor publish its will.

    The client acknowledges (QoS 1 and 2) each message as it arrives, ahead
    of what the listener takes: messages that come after the last one taken
    are acknowledged and not handed out. This loses nothing for anyone else:
    the subscription, and its copy of each message, are this client's alone.

    :param routing_key: The topic, overriding the profile's
    :return: An async iterator of (topic of the message, payload)
    :raises NoDestinationError: The profile names no topic and no routing key was given
    :raises ListenError: The broker could not be reached or refused the
        connection, or the connection was lost
    """
    topic = routing_key or ctx.acct.get("routing_key") or ctx.acct.get("topic")
    if not topic:
        raise NoDestinationError("no MQTT topic to listen on: the profile names no topic and no --routing-key was given")
    qos = ctx.acct.get("qos")
    qos = 1 if qos is None or qos == "" else int(qos)
    connection = {key: value for key, value in options(ctx).items() if key not in ("identifier", "will")}
    client = aiomqtt.Client(**hub.ingress.mqtt.client_kwargs(connection, _tls_block(ctx)))
    try:
        try:
            await client.__aenter__()
        except BaseException:
            await abandon(client)
            raise
    except aiomqtt.MqttError as e:  # the socket, or the broker refused (credentials, a certificate, say)
        raise listen_error("cannot connect", tls.refusal(e, hub.ingress.mqtt.describe(ctx)) or e) from e
    try:
        await client.subscribe(str(topic), qos=qos)
        try:
            async for message in client.messages:
                yield str(message.topic), bytes(message.payload)
        except aiomqtt.MqttError as e:
            raise listen_error("lost the connection", e) from e
    finally:
        await disconnect(client)
