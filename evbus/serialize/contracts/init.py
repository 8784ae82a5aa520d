"""
The contract of serialize plugins: ``apply(data)`` returns bytes (or str, which
evbus encodes as UTF-8). A plugin may set ``CONTENT_TYPE`` in ``__init__``.
"""


def sig_apply(hub, data) -> bytes | str:
    ...
