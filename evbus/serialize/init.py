"""
Serializers turn an event body into bytes once, at put time.

The plugin in use is named by ``hub.serialize.PLUGIN`` (config
``serialize_plugin``), kept in step with ``hub.evbus.SERIAL_PLUGIN``.
"""


def __init__(hub):
    hub.serialize.PLUGIN = "json"


def apply(hub, data) -> bytes:
    """
    Serialize with the plugin in use.

    :param data: The event body
    :return: The serialized body
    """
    ret = hub.evbus.broker.serializer().apply(data)
    return ret.encode() if isinstance(ret, str) else ret
