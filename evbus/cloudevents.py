"""
CloudEvents 1.0 on the wire: a profile with ``envelope: cloudevents`` sends
every event as a CloudEvent, in the binary or the structured content mode
of its broker's protocol binding.

.. code-block:: yaml

    kafka:
      my-profile:
        envelope: cloudevents         # the default, "none", sends the body as it is
        cloudevents:                  # optional, each key too
          mode: binary                # binary (the default) or structured
          source: /my/app             # default: evbus
          type: com.example.{profile} # default: evbus.{profile}; {profile} is the event's profile

The attributes of an event: ``specversion`` 1.0, ``id`` the event id,
``source`` and ``type`` from the profile, ``time`` the event's timestamp
(RFC 3339, UTC), ``datacontenttype`` the serializer's content type
(``application/json``, ``application/msgpack``).

Binary mode keeps the body as it is and puts the attributes in message
headers, named as the broker's binding says (:class:`Binding`): Kafka
headers ``ce_id``, ...; AMQP application properties (RabbitMQ headers)
``cloudEvents_id``, ...; NATS headers ``ce-id``, ... (values
percent-encoded); MQTT 5 user properties ``id``, ...; Redis stream fields
``ce_id``, .... ``datacontenttype`` is the message's content type
(Kafka ``content-type`` header, AMQP ``content_type`` property, MQTT 5
Content Type, NATS ``Content-Type`` header, the Redis field ``content_type``),
and a header of its own where the binding maps every attribute (NATS, MQTT,
Redis).

Structured mode makes the body the CloudEvent in the JSON event format, with
the content type ``application/cloudevents+json``: ``data`` is the event's
body as JSON when the serializer makes JSON, else ``data_base64``.

An ingress plugin names its binding with ``binding(hub, ctx)``, which
returns one of the bindings below, or None when the profile's messages carry
no headers (MQTT 3.1.1, Redis pub/sub): those profiles take the structured
mode only, as do plugins without the hook (the internal queues).
"""
import base64
import dataclasses
import datetime
import json
import urllib.parse
from collections.abc import Callable
from collections.abc import Mapping

from evbus.exc import ProfileError
from evbus.types import Event
from evbus.types import wire_copy

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
MODES = ("binary", "structured")
DEFAULT_SOURCE = "evbus"
DEFAULT_TYPE = "evbus.{profile}"

# NATS header values: what the binding says stays as it is (printable ASCII
# without space, double quote and percent); the rest is percent-encoded
_NATS_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


@dataclasses.dataclass(frozen=True)
class Binding:
    """
    How a protocol carries the attributes of a CloudEvent in binary mode.

    :param protocol: Its name, for messages
    :param prefix: What precedes each attribute's name in its header name
    :param datacontenttype: Whether ``datacontenttype`` has a header too
        (else the message's content type alone carries it)
    :param percent_encode: Whether header values are percent-encoded (NATS)
    """

    protocol: str
    prefix: str
    datacontenttype: bool = False
    percent_encode: bool = False

    def header(self, name: str, value: str) -> tuple[str, str]:
        """:return: The header of one attribute: (name with prefix, value)"""
        if self.percent_encode:
            value = urllib.parse.quote(value, safe=_NATS_SAFE)
        return self.prefix + name, value


KAFKA = Binding("Kafka", "ce_")
# The AMQP binding allows "cloudEvents_" and "cloudEvents:" and prefers "_" (JMS selectors)
AMQP = Binding("AMQP", "cloudEvents_")
NATS = Binding("NATS", "ce-", datacontenttype=True, percent_encode=True)
MQTT = Binding("MQTT 5", "", datacontenttype=True)
# Redis streams have no binding: fields named like the Kafka binding's headers, every attribute
REDIS = Binding("Redis streams", "ce_", datacontenttype=True)


def rfc3339(timestamp: float) -> str:
    """:return: A time in seconds since the epoch as RFC 3339, UTC, e.g. 2024-05-01T12:00:00.123456Z"""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_json(content_type: str) -> bool:
    """:return: Whether a content type is JSON (``application/json``, ``...+json``, ``text/json``)"""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


class Envelope:
    """
    The CloudEvents envelope of one profile: ``envelope(event)`` is what the
    plugin sends instead of the event.

    :param mode: ``binary`` or ``structured``
    :param source: The ``source`` attribute; ``{profile}`` is the event's profile
    :param type_: The ``type`` attribute; ``{profile}`` is the event's profile
    :param binding: The protocol binding (binary mode)
    """

    def __init__(self, mode: str, source: str, type_: str, binding: Binding | None):
        self.mode = mode
        self.source = source
        self.type = type_
        self.binding = binding
        # event profile -> (source, type)
        self._names: dict[str, tuple[str, str]] = {}

    def __call__(self, event: Event) -> Event:
        attributes = self.attributes(event)
        if self.mode == "structured":
            body = self.structured(attributes, event.body)
            return wire_copy(event, body, STRUCTURED_CONTENT_TYPE, event.headers)
        binding = self.binding
        headers = tuple(
            binding.header(name, value)
            for name, value in attributes.items()
            if name != "datacontenttype" or binding.datacontenttype
        )
        return wire_copy(event, event.body, event.content_type, event.headers + headers)

    def attributes(self, event: Event) -> dict[str, str]:
        """:return: The context attributes of an event's CloudEvent"""
        names = self._names.get(event.profile)
        if names is None:
            profile = event.profile
            names = (self.source.replace("{profile}", profile), self.type.replace("{profile}", profile))
            if len(self._names) < 1000:  # event profiles are few; a flood of them is not cached
                self._names[event.profile] = names
        return {
            "specversion": SPECVERSION,
            "id": event.id,
            "source": names[0],
            "type": names[1],
            "time": rfc3339(event.timestamp),
            "datacontenttype": event.content_type,
        }

    @staticmethod
    def structured(attributes: dict[str, str], body: bytes) -> bytes:
        """
        :return: The CloudEvent in the JSON event format: the body as ``data``
            when it is JSON (as it is, not parsed again), else as ``data_base64``
        """
        head = json.dumps(attributes, ensure_ascii=False, separators=(",", ":"))[:-1].encode()
        if is_json(attributes["datacontenttype"]):
            return head + b',"data":' + body + b"}"
        return head + b',"data_base64":"' + base64.b64encode(body) + b'"}'


def binary(acct: Mapping) -> bool:
    """
    :param acct: A profile's data
    :return: Whether the profile sends CloudEvents in binary mode (the attributes in headers)
    """
    options = acct.get("cloudevents")
    mode = options.get("mode") if isinstance(options, Mapping) else None
    return str(acct.get("envelope") or "").lower() == "cloudevents" and str(mode or "binary").lower() == "binary"


def envelope(
    acct: Mapping, binding: Callable[[], Binding | None], plugin: str, provider: str, profile: str
) -> Envelope | None:
    """
    The envelope a profile asks for.

    :param acct: The profile's data: ``envelope`` (``none`` or ``cloudevents``)
        and ``cloudevents`` (``mode``, ``source``, ``type``)
    :param binding: ``binding()`` -> the plugin's binding for this profile, or None
    :param plugin: The ingress plugin, for messages
    :param provider: The acct provider, for messages
    :param profile: The profile name, for messages
    :return: The envelope, or None to send events as they are
    :raises ProfileError: for an unknown envelope or mode, malformed options, or the binary
        mode on a plugin or profile whose messages carry no headers
    """
    kind = acct.get("envelope")
    options = acct.get("cloudevents")
    kind = str(kind).lower() if kind not in (None, "") else "none"
    if kind == "none":
        if options:
            raise ProfileError(provider, profile, "cloudevents options without 'envelope: cloudevents'")
        return None
    if kind != "cloudevents":
        raise ProfileError(provider, profile, f"envelope '{kind}' is neither none nor cloudevents")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ProfileError(provider, profile, f"cloudevents must be a mapping, not {type(options).__name__}")
    unknown = set(options) - {"mode", "source", "type"}
    if unknown:
        raise ProfileError(
            provider, profile, f"unknown cloudevents option(s) {', '.join(sorted(map(str, unknown)))}: "
            f"use mode, source, type"
        )
    mode = str(options.get("mode") or "binary").lower()
    if mode not in MODES:
        raise ProfileError(provider, profile, f"cloudevents mode '{mode}' is neither binary nor structured")
    found = None
    if mode == "binary":
        found = binding()
        if found is None:
            raise ProfileError(
                provider, profile, f"CloudEvents binary mode puts the attributes in message headers, and the "
                f"messages of ingress.{plugin} with this profile carry none: set cloudevents mode: structured"
            )
    source = str(options.get("source") or DEFAULT_SOURCE)
    type_ = str(options.get("type") or DEFAULT_TYPE)
    return Envelope(mode, source, type_, found)
