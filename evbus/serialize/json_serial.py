"""
JSON, lenient like pop-evbus: what json cannot encode is converted, not refused.

- a set or frozenset becomes a sorted list (unsortable items: in iteration order)
- another iterable (tuple, generator, deque, ...) becomes a list
- bytes become text (UTF-8, undecodable bytes replaced)
- anything else becomes its ``repr()``
- float NaN and +/-Infinity become ``null``: the output is always valid JSON

A circular reference is an error (:class:`~evbus.exc.SerializeError` at ``put``).
"""
import json
import math

__virtualname__ = "json"

CONTENT_TYPE = "application/json"


def _default(data):
    if isinstance(data, (set, frozenset)):
        try:
            return sorted(data)
        except TypeError:
            return list(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode(errors="replace")
    if hasattr(data, "__iter__"):
        return list(data)
    return repr(data)


def _finite(data):
    """Replace NaN and infinities by None, in a copy of nested lists and dicts."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(item) for item in data]
    return data


_ENCODER = json.JSONEncoder(default=_default, allow_nan=False, separators=(", ", ": "))


def _c_encoder():
    """
    The C encoder behind ``_ENCODER``, made once instead of on every call as
    ``JSONEncoder.encode`` does; same output (``json.dumps``' separators, ASCII).
    Without cycle markers it keeps no state, so threads can share it; a cycle
    ends in a RecursionError, which ``put`` reports as a circular body.
    """
    if json.encoder.c_make_encoder is None:
        return None
    return json.encoder.c_make_encoder(
        None, _default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )


_C_ENCODE = _c_encoder()


def apply(hub, data) -> bytes:
    """
    :param data: The event body
    :return: UTF-8 JSON
    """
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(data, 0)).encode()
        return _ENCODER.encode(data).encode()
    except ValueError as e:
        if "Circular reference" in str(e):
            raise
        # NaN or infinity somewhere: encode a copy where they are null
        return _ENCODER.encode(_finite(json.loads(json.dumps(data, default=_default)))).encode()
