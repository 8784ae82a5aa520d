"""
What the broker plugins share about their connections.
"""
import asyncio


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
