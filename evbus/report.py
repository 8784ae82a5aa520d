"""
Failure reporting: one log line for a lane's failure, and its repeats counted.

A destination that is down fails every event sent to it; a line per event
would bury everything else (and a progress bar). So a failure of a lane that
comes within ``window`` seconds of the last line written for that lane, with
the same kind of error, is counted instead of written; the count comes out
in one line before the lane's next written line, or when the lane closes.
Every failure is still dead-lettered, counted in ``stats()`` and handed to
the error callback.
"""
import time
from collections.abc import Callable
from typing import Any

#: Seconds an error callback's awaitable may take; past them it is cancelled and the lane goes on
CALLBACK_TIMEOUT = 5.0


class Repeats:
    """
    :param window: Seconds after a written line during which failures of the same kind are counted
    :param clock: The time source (seconds)
    """

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        # id(lane) -> [lane, time of the last line written, error kind, failures counted since]
        self._lanes: dict[int, list] = {}

    def note(self, lane: Any, kind: str) -> tuple[bool, int]:
        """
        Note a failure of ``lane``.

        :param kind: What kind of error it is (e.g. its type name)
        :return: (whether to write its line, how many failures were counted
            since the last line and are to be summarized first)
        """
        now = self.clock()
        entry = self._lanes.get(id(lane))
        if entry is not None and entry[0] is lane and entry[2] == kind and now - entry[1] < self.window:
            entry[3] += 1
            return False, 0
        counted = entry[3] if entry is not None and entry[0] is lane else 0
        self._lanes[id(lane)] = [lane, now, kind, 0]
        return True, counted

    def flush(self, lane: Any) -> int:
        """
        Forget ``lane`` (it closed).

        :return: How many of its failures were counted and not written yet
        """
        entry = self._lanes.pop(id(lane), None)
        return entry[3] if entry is not None and entry[0] is lane else 0
