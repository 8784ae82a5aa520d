"""
What the broker plugins share about their connections.
"""
import asyncio
from collections.abc import Callable
from typing import Any


def error_text(error: BaseException) -> str:
    """
    :param error: An exception of a client library
    :return: ``Type: message`` on one line (the type once: some libraries
        put it in the message already); the type alone when there is no message
    """
    name = type(error).__name__
    text = " ".join(str(error).split())
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class LoopLock:
    """
    An ``asyncio.Lock`` for the running loop: a lock belongs to the loop that
    first used it, and a bus can be started in one loop after another. It
    serializes the opening of a connection that several lanes share, so that
    they open it once.
    """

    def __init__(self):
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Lock:
        """:return: The lock of the running loop"""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


class PerCtx:
    """
    What a plugin works out once per lane ``ctx`` (its connection, its route),
    found again by the ctx's identity on every send. A lane's ctx lives as long
    as the lane; entries go when the plugin closes the connection.
    """

    def __init__(self):
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, ctx) -> Any:
        """:return: What was kept for this ctx, or None"""
        entry = self._entries.get(id(ctx))
        if entry is not None and entry[0] is ctx:
            return entry[1]
        return None

    def put(self, ctx, value: Any) -> Any:
        """Keep ``value`` for this ctx; return it."""
        self._entries[id(ctx)] = (ctx, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, ctx, uses: Callable[[Any], bool]) -> list[Any]:
        """
        Drop the entry of ``ctx`` and every entry whose value ``uses`` says belongs to a closed connection.

        :return: The values dropped
        """
        dropped = []
        for key, (_, value) in list(self._entries.items()):
            if key == id(ctx) or uses(value):
                del self._entries[key]
                dropped.append(value)
        return dropped
