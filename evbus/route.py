"""
Routing: which lanes an event goes to.

A :class:`Router` holds the lanes of one contexts dict (one
:class:`~evbus.lane.Lane` per ingress plugin and acct profile, made by
``hub.evbus.route.router``) and matches an event's profile name against
their profile name patterns once per distinct event profile: after that,
the lanes of a profile are a dict lookup (:func:`evbus.propagate.propagate`
reads ``by_profile`` first).
"""
from collections.abc import Callable
from typing import Any

from evbus.lane import Lane


class RouteState:
    """Routers by contexts identity, the lanes of the routers stopped since, and the events no lane took."""

    def __init__(self):
        self.routers: dict[int, "Router"] = {}
        self.retired: list[Lane] = []
        self.unrouted = 0
        # When set, lanes deliver to what it returns instead of their ingress plugin:
        # capture(plugin name, provider, acct profile name) -> Destination (see evbus.testing)
        self.capture = None

    def running_lanes(self) -> list[Lane]:
        """:return: The lanes of the routers in use (not those stopped)"""
        return [lane for found in list(self.routers.values()) for lane in found.lanes]

    def all_lanes(self) -> list[Lane]:
        """:return: Every lane, running or stopped since the last start"""
        return self.retired + self.running_lanes()

    def retire(self) -> list[Lane]:
        """Forget the routers in use (the bus stops); :return: their lanes, kept for stats"""
        current = self.running_lanes()
        self.routers.clear()
        self.retired = current
        return current


class Router:
    """
    The lanes of one contexts dict, and the event-profile -> lanes cache.

    :param contexts: The contexts the lanes were made of
    :param lanes: The lanes
    :param find: The match plugin's ``find(name, pattern)``
    :param counts: Where events that no lane takes are counted (``unrouted``)
    """

    def __init__(self, contexts: Any, lanes: list[Lane], find: Callable[[str, str], Any], counts: RouteState):
        # Hold the contexts so that its id() stays unique while routed
        self.contexts = contexts
        self.lanes = lanes
        self._find = find
        self.counts = counts
        # The lanes of each event profile matched so far: the listener looks here first
        self.by_profile: dict[str, tuple[Lane, ...]] = {}

    def match(self, profile: str) -> tuple[Lane, ...]:
        """
        :param profile: An event's profile name
        :return: The lanes whose profile pattern matches it (cached in ``by_profile``)
        """
        try:
            return self.by_profile[profile]
        except KeyError:
            pass
        matched = tuple(lane for lane in self.lanes if self._matches(profile, lane.profile))
        self.by_profile[profile] = matched
        return matched

    def _matches(self, profile: str, pattern: str) -> bool:
        try:
            return bool(self._find(profile, pattern))
        except Exception:  # a pattern the match plugin rejects matches nothing
            return False
