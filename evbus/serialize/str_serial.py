"""
Text: a body is sent as its ``str()``, UTF-8 encoded.

The serializer of pop-serial's ``str`` plugin, which idem offers for its
``--serialize-plugin`` option: ``str(body).encode()``. It never fails, and
it is one-way: a dict arrives as its Python repr, not as JSON.
"""
__virtualname__ = "str"

CONTENT_TYPE = "text/plain; charset=utf-8"


def apply(hub, data) -> bytes:
    """
    :param data: The event body
    :return: ``str(data)``, UTF-8 encoded
    """
    return str(data).encode()
