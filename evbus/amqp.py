"""
The AMQP 0-9-1 frames of a publish, encoded the way pamqp encodes them, with
what does not change from one message to the next encoded once.

A publish is three kinds of frame (AMQP 0-9-1, 4.2.6): the ``basic.publish``
method (exchange, routing key, mandatory), the content header (the body's
size and the message's properties) and the body, in frames of at most the
connection's ``frame_max``. :class:`Frames` writes them into a buffer that the
pika ingress hands to aiormq's connection writer in one piece per batch.

What is encoded once per channel: the ``basic.publish`` frame of each
routing key, and the properties that the messages of a profile share
(``content_type``, ``delivery_mode``). Per message: the body size,
``message_id``, ``timestamp`` and, when there are any, the ``headers``
(trace context, CloudEvents attributes), with pamqp's table encoder.
Anything out of the ordinary (a string longer than 255 bytes, an empty
message id) goes through pamqp's own marshalling, so that pamqp decides.
"""
import datetime
import struct

from pamqp import commands
from pamqp import encode
from pamqp import frame
from pamqp import header

FRAME_END = b"\xce"
# Frame type, channel, payload size (AMQP 0-9-1, 4.2.3)
_FRAME = struct.Struct(">BHI")
# A content header frame up to its properties: the frame's type (2), channel and
# payload size, then class id (basic, 60), weight (0), body size, property flags
_HEADER = struct.Struct(">BHIHHQH")
_TIMESTAMP = struct.Struct(">Q")
# The payload bytes of every content header evbus writes: class id, weight, body size,
# flags, the message id's length octet and the timestamp
_HEADER_FIXED = _HEADER.size - _FRAME.size + 1 + _TIMESTAMP.size
_FRAME_HEADER, _FRAME_BODY = 2, 3
_BASIC = 60
# basic.properties flags of the properties evbus sets (AMQP 0-9-1, 4.2.6.1)
_CONTENT_TYPE = 0x8000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_MESSAGE_ID = 0x0080
_TIMESTAMP_FLAG = 0x0040
_FLAGS = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID | _TIMESTAMP_FLAG
# The first second that a datetime cannot hold (year 10000): later timestamps go through pamqp
_DATETIME_END = 253402300800
# Routing keys whose basic.publish frame is kept per channel, at most (events may each name one)
_METHODS_KEPT = 1024


def properties(
    content_type: str, delivery_mode: int, message_id: str, timestamp: float, headers: tuple = ()
) -> commands.Basic.Properties:
    """
    :return: The basic.properties of a message, as pamqp models them: what
        :class:`Frames` encodes
    """
    return commands.Basic.Properties(
        content_type=content_type,
        message_id=message_id,
        timestamp=datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.timezone.utc),
        delivery_mode=delivery_mode,
        headers=dict(headers) if headers else None,
    )


class Frames:
    """
    The frames of the publishes on one channel.

    :param channel: The channel number
    :param exchange: The exchange every publish goes to ("" for the default exchange)
    :param max_body: The largest body frame payload: the connection's ``frame_max`` less 8
    """

    def __init__(self, channel: int, exchange: str, max_body: int):
        self.channel = channel
        self.exchange = exchange
        self.max_body = max_body
        # (routing key, mandatory) -> its basic.publish frame
        self._methods: dict[tuple[str, bool], bytes] = {}
        # (content type, delivery mode) -> the encoded content type and delivery mode, or
        # None when the content type is not one to encode here
        self._shared: dict[tuple[str, int], tuple[bytes, bytes] | None] = {}

    def method(self, routing_key: str, mandatory: bool) -> bytes:
        """
        :return: The basic.publish frame to ``routing_key`` on this channel's exchange
        :raises ValueError: for a routing key longer than 255 characters
        :raises TypeError: for one longer than 255 bytes (pamqp's check)
        """
        key = (routing_key, mandatory)
        found = self._methods.get(key)
        if found is None:
            if len(routing_key) > 255:
                raise ValueError("Routing key too long (max 255 bytes)")  # aiormq's words
            publish = commands.Basic.Publish(
                exchange=self.exchange, routing_key=routing_key, mandatory=mandatory
            )
            found = frame.marshal(publish, self.channel)
            if len(self._methods) >= _METHODS_KEPT:
                self._methods.clear()
            self._methods[key] = found
        return found

    def write(
        self,
        out: bytearray,
        routing_key: str,
        mandatory: bool,
        body: bytes,
        content_type: str,
        delivery_mode: int,
        message_id: str,
        timestamp: float,
        headers: tuple = (),
    ):
        """
        Append the frames of one publish to ``out``.

        :raises ValueError: for a routing key longer than 255 characters
        :raises TypeError: for a routing key or property pamqp cannot encode
        """
        method = self.method(routing_key, mandatory)
        channel = self.channel
        content_header = self._content_header(
            len(body), content_type, delivery_mode, message_id, timestamp, headers
        )
        out += method
        out += content_header
        size = len(body)
        if size <= self.max_body:
            if size:
                out += _FRAME.pack(_FRAME_BODY, channel, size)
                out += body
                out += FRAME_END
            return
        view = memoryview(body)
        for start in range(0, size, self.max_body):
            chunk = view[start:start + self.max_body]
            out += _FRAME.pack(_FRAME_BODY, channel, len(chunk))
            out += chunk
            out += FRAME_END

    def _content_header(
        self,
        body_size: int,
        content_type: str,
        delivery_mode: int,
        message_id: str,
        timestamp: float,
        headers: tuple,
    ) -> bytes:
        """The content header frame of one message."""
        shared_key = (content_type, delivery_mode)
        try:
            shared = self._shared[shared_key]
        except KeyError:
            shared = self._shared[shared_key] = _shared(content_type, delivery_mode)
        seconds = int(timestamp)
        mid = message_id.encode("utf-8") if message_id.__class__ is str else b""
        if shared is None or not mid or len(mid) > 255 or not 0 <= seconds < _DATETIME_END:
            # Out of the ordinary (see the module docstring): pamqp marshals it, and decides
            content = header.ContentHeader(
                body_size=body_size,
                properties=properties(content_type, delivery_mode, message_id, timestamp, headers),
            )
            return frame.marshal(content, self.channel)
        encoded_type, encoded_mode = shared
        flags = _FLAGS
        table = b""
        if headers:
            flags |= _HEADERS
            table = encode.field_table(dict(headers))
        size = _HEADER_FIXED + len(encoded_type) + len(table) + len(encoded_mode) + len(mid)
        return b"".join(
            (
                _HEADER.pack(_FRAME_HEADER, self.channel, size, _BASIC, 0, body_size, flags),
                encoded_type,
                table,
                encoded_mode,
                bytes((len(mid),)),
                mid,
                _TIMESTAMP.pack(seconds),
                FRAME_END,
            )
        )


def _shared(content_type: str, delivery_mode: int) -> tuple[bytes, bytes] | None:
    """
    :return: The encoded content type (a short string) and delivery mode (an
        octet), or None when the content type is empty or longer than 255 bytes
    """
    if not isinstance(content_type, str) or not content_type or not 0 <= delivery_mode <= 255:
        return None
    encoded = content_type.encode("utf-8")
    if len(encoded) > 255:
        return None
    return bytes((len(encoded),)) + encoded, bytes((delivery_mode,))
