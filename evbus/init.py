"""
The listener's plain classes; its hub face is :mod:`evbus.evbus.init`
(``hub.evbus.init.start``, ``stop``, ``join``).
"""
import asyncio


class Stop:
    """The item stop() puts on the broker queue: everything before it is delivered first."""

    __slots__ = ("timeout", "deadline", "done", "queued")

    def __init__(self, timeout: float | None, done: asyncio.Future):
        self.timeout = timeout
        # The loop time by which the lanes must have drained; None: no limit
        self.deadline = None if timeout is None else done.get_loop().time() + timeout
        self.done = done
        # False when a full queue had no room for it: the listener stops once the queue is empty
        self.queued = True

    def remaining(self) -> float | None:
        """:return: Seconds left until the deadline (never negative), or None for no limit"""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.done.get_loop().time())
