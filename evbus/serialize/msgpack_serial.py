"""
MessagePack, strict: a body msgpack cannot encode is an error at ``put``.
"""
import msgpack

__virtualname__ = "msgpack"

CONTENT_TYPE = "application/msgpack"


def apply(hub, data) -> bytes:
    """
    :param data: The event body
    :return: MessagePack bytes
    """
    return msgpack.packb(data, use_bin_type=True)
