"""
The contract of serialize plugins: ``apply(data)`` returns bytes (or str, which
evbus encodes as UTF-8). A plugin may name its content type in a module-level
``CONTENT_TYPE`` (pop makes it the plugin's attribute) or set it in ``__init__``.
"""


def sig_apply(hub, data) -> bytes | str:
    ...
