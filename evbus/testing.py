"""
A pytest plugin for pop projects that fire events: the bus runs on in-process
capture, so that a test puts events through its own code and asserts on what
each ingress plugin, acct profile and routing key would have received, with
the bodies decoded, and no broker.

evbus installs it (entry point ``pytest11``: ``evbus = evbus.testing``). Its
fixtures:

- ``evbus_hub``: the hub the bus runs on: a new hub with the ``evbus`` dyne
  and its config (no command line parsed). Override it to run the bus on a
  hub of your own, e.g. pytest-pop's::

      @pytest.fixture
      def evbus_hub(hub):
          return hub

- ``evbus_profiles``: the profiles the bus routes by: acct data
  (``{provider: {profile name: profile data}}``) or the path of a plain-text
  acct file. The default, ``{"internal": {"*": {}}}``, takes every event.
- ``evbus_capture``: a :class:`Capture`, the bus started on ``evbus_hub``
  with ``evbus_profiles`` and every lane delivering to it instead of to its
  ingress plugin; the bus is stopped at the end of the test.

Events are matched, routed and ordered exactly as on a real bus; only the
last hop, the plugin's publish, is replaced. A profile of a plugin that
cannot load (its client library is missing) gets nothing, as on a real bus.

``evbus_capture`` is an async fixture: pytest-asyncio (which pytest-pop
brings) runs it.
"""
import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

import pytest

try:
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # another plugin may run async fixtures
    _async_fixture = pytest.fixture

# The profiles of evbus_profiles: every event, on the internal ingress
EVERYTHING = {"internal": {"*": {}}}


@dataclasses.dataclass(frozen=True, slots=True)
class Captured:
    """
    What one destination would have received of one event.

    :param plugin: The ingress plugin, e.g. ``kafka``
    :param provider: The acct provider of the profile, e.g. ``amqp``
    :param acct_profile: The name of the acct profile that matched (a pattern)
    :param profile: The event's profile, as put
    :param routing_key: The routing key the plugin would have got: the event's, else the profile's
    :param body: The serialized body
    :param content_type: The serializer's MIME type
    :param event_id: The event's id
    """

    plugin: str
    provider: str
    acct_profile: str
    profile: str
    routing_key: str | None
    body: bytes
    content_type: str
    event_id: str

    @property
    def data(self) -> Any:
        """The body decoded: JSON and msgpack bodies as Python data, text (``str``) as str, anything else as bytes."""
        if self.content_type == "application/json":
            return json.loads(self.body)
        if self.content_type == "application/msgpack":
            import msgpack

            return msgpack.unpackb(self.body, raw=False, strict_map_key=False)
        if self.content_type.startswith("text/plain"):
            return self.body.decode()
        return self.body


class Capture:
    """
    The destinations of a bus that runs on in-process capture.

    :param hub: The hub the bus runs on
    """

    def __init__(self, hub):
        self.hub = hub
        self.captured: list[Captured] = []
        self.contexts: dict | None = None
        self._listener: asyncio.Task | None = None

    def destination(self, plugin: str, provider: str, acct_profile: str):
        """
        :return: The lane destination that records instead of publishing
            (``hub.evbus.route.STATE.capture``)
        """
        from evbus.lane import Destination

        def send(ctx, routing_key: str | None, event) -> None:
            self.captured.append(
                Captured(
                    plugin=plugin,
                    provider=provider,
                    acct_profile=acct_profile,
                    profile=event.profile,
                    routing_key=routing_key,
                    body=event.body,
                    content_type=event.content_type,
                    event_id=event.id,
                )
            )

        return Destination(send=send, inline=True)

    async def start(self, profiles: dict | str | os.PathLike | None = None, timeout: float = 10.0) -> dict:
        """
        Start the bus on capture.

        :param profiles: Acct data ``{provider: {profile name: data}}``, or the path of a
            plain-text acct file; None takes every event on the internal ingress
        :param timeout: Seconds the listener may take to start
        :return: The contexts the bus routes by
        :raises BusRunningError: when the hub's bus runs already
        :raises ConfigError: for malformed profiles
        """
        from evbus.exc import BusRunningError

        hub = self.hub
        if not hasattr(hub, "evbus"):
            hub.pop.sub.add(dyne_name="evbus")
        if hub.evbus.init.RUNNING:
            raise BusRunningError("The event bus of this hub runs already; stop it before capturing")
        hub.evbus.route.STATE.capture = self.destination
        if profiles is None:
            profiles = EVERYTHING
        if isinstance(profiles, (str, os.PathLike)):
            self.contexts = await hub.evbus.acct.profiles(acct_file=os.fspath(profiles))
        else:
            self.contexts = await hub.evbus.acct.profiles(acct_data=profiles)
        self._listener = asyncio.create_task(hub.evbus.init.start(self.contexts))
        await hub.evbus.init.join(timeout=timeout)
        return self.contexts

    async def settle(self, timeout: float = 10.0):
        """
        Return once every event put so far reached its destinations (the bus keeps running).

        :param timeout: Seconds to wait
        :raises EvbusTimeoutError: when the events did not all arrive in time
        :raises BusStoppedError: when the listener was cancelled
        :raises Exception: what ended the listener, when it failed
        """
        from evbus.exc import BusStoppedError
        from evbus.exc import EvbusTimeoutError

        hub = self.hub
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            listener = self._listener
            if listener is not None and listener.done():
                if listener.cancelled():
                    raise BusStoppedError("The capture's listener was cancelled")
                listener.result()  # it ended: raise what ended it
                return
            if hub.evbus.BUS.empty() and not hub.evbus.broker.STATE.handoff:
                # The listener hands what it takes to the lanes before it waits again
                lanes = hub.evbus.route.all_lanes()
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancel
                    async with asyncio.timeout_at(deadline):
                        await asyncio.gather(*(lane.drained() for lane in lanes))
                except TimeoutError:
                    pass
                else:
                    if hub.evbus.BUS.empty() and not hub.evbus.broker.STATE.handoff:
                        return
            if loop.time() > deadline:
                raise EvbusTimeoutError(
                    f"The events put did not all reach their destinations within {timeout} s"
                )
            await asyncio.sleep(0)

    async def stop(self, timeout: float = 10.0):
        """
        Stop the bus once every event put so far reached its destinations; the
        capture keeps what it received. Stopping a stopped capture does nothing.

        :param timeout: Seconds the bus may take to stop
        """
        listener, self._listener = self._listener, None
        try:
            if listener is not None and not listener.done():
                await self.hub.evbus.init.stop(timeout=timeout)
                async with asyncio.timeout(timeout):  # ends the listener if it outlasts its stop
                    await listener
            elif listener is not None and not listener.cancelled():
                listener.exception()  # settle() raised it already, or the test does not care
        finally:
            if self.hub.evbus.route.STATE.capture == self.destination:
                self.hub.evbus.route.STATE.capture = None

    def events(
        self,
        profile: str | None = None,
        plugin: str | None = None,
        acct_profile: str | None = None,
        routing_key: str | None = None,
    ) -> list[Captured]:
        """
        What arrived, in order, of the events that pass every filter given.

        :param profile: The event's profile
        :param plugin: The ingress plugin
        :param acct_profile: The acct profile that matched
        :param routing_key: The routing key the plugin got
        """
        wanted = {
            "profile": profile,
            "plugin": plugin,
            "acct_profile": acct_profile,
            "routing_key": routing_key,
        }
        wanted = {name: value for name, value in wanted.items() if value is not None}
        return [
            item
            for item in self.captured
            if all(getattr(item, name) == value for name, value in wanted.items())
        ]

    def bodies(self, **filters) -> list[Any]:
        """
        The decoded bodies of :meth:`events` (same filters), in order.
        """
        return [item.data for item in self.events(**filters)]

    def clear(self):
        """Forget what arrived so far."""
        self.captured.clear()


@pytest.fixture
def evbus_hub(monkeypatch):
    """A new hub with the evbus dyne and its config (the command line is not parsed)."""
    import pop.hub

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    return hub


@pytest.fixture
def evbus_profiles() -> dict | str | os.PathLike:
    """The profiles the capture bus routes by; override it with your project's."""
    return EVERYTHING


@_async_fixture
async def evbus_capture(evbus_hub, evbus_profiles):
    """The bus on ``evbus_hub``, started with ``evbus_profiles`` on in-process capture."""
    capture = Capture(evbus_hub)
    await capture.start(evbus_profiles)
    try:
        yield capture
    finally:
        await capture.stop()
