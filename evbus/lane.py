"""
Delivery lanes: one ordered queue and one task per (ingress plugin, acct profile).

A lane publishes its events one after the other, in the order they were put.
Lanes never wait for each other: a slow or failing destination holds up its
own lane only. An event that fails is handed to ``on_failure`` (log, count,
error callback) and the lane goes on with the next.
"""
import asyncio
import collections
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

from evbus.types import Event


class Lane:
    """
    The delivery lane of one destination.

    :param plugin: The ingress plugin name
    :param provider: The acct provider the profile came from
    :param profile: The acct profile name (a pattern for event profiles)
    :param ctx: The ``ctx`` handed to the plugin; ``ctx.acct`` is the profile data
    :param send: ``send(ctx, routing_key, body)`` -> awaitable or None; publishes one event
    :param on_failure: ``on_failure(lane, event, error)`` -> awaitable; called for a failed event
    :param inline: ``send`` never waits (a plugin's ``publish_nowait``): an event
        that finds the lane empty is published at once by :meth:`put`, without
        the hop through the lane's task
    """

    def __init__(
        self,
        plugin: str,
        provider: str,
        profile: str,
        ctx: Any,
        send: Callable[[Any, str | None, bytes], Awaitable],
        on_failure: Callable[["Lane", Event, BaseException], Awaitable],
        inline: bool = False,
    ):
        self.plugin = plugin
        self.provider = provider
        self.profile = profile
        self.ctx = ctx
        self.routing_key = ctx.acct.get("routing_key")
        self._send = send
        self._on_failure = on_failure
        self._inline = inline
        self._pending: collections.deque[Event] = collections.deque()
        # Events that failed inline in put(), with their error, for the task to report
        self._inline_failed: collections.deque[tuple[Event, BaseException]] = collections.deque()
        self._wakeup: asyncio.Future | None = None
        self._idle: list[asyncio.Future] = []
        # (sequence number, future) of callers waiting for one event to be settled
        self._settle_waiters: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._closed = False
        self.queued = 0
        self.published = 0
        self.failed = 0
        self.publish_seconds = 0.0
        self.max_publish_seconds = 0.0

    def __repr__(self):
        return f"<Lane ingress.{self.plugin} profile={self.profile!r} depth={len(self._pending)}>"

    def put(self, event: Event) -> int:
        """
        Queue an event on this lane; never waits.

        :param event: The event to publish
        :return: Its sequence number on this lane, for :meth:`settled`
        """
        self.queued += 1
        if self._inline and not self._pending and not self._inline_failed:
            routing_key = event.routing_key if event.routing_key is not None else self.routing_key
            try:
                self._send(self.ctx, routing_key, event.body)
            except Exception as e:  # reported by the lane's task, which can await the error callback
                self._inline_failed.append((event, e))
            else:
                self.published += 1
                if self._settle_waiters:
                    self._wake_settled()
                return self.queued
        else:
            self._pending.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"evbus lane ingress.{self.plugin}:{self.profile}"
            )
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        return self.queued

    async def _run(self):
        pending = self._pending
        send = self._send
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        while True:
            if self._inline_failed:
                event, error = self._inline_failed.popleft()
                await self._fail(event, error)
                self.failed += 1
                if self._settle_waiters:
                    self._wake_settled()
                continue
            if not pending:
                self._set_idle()
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            event = pending[0]
            routing_key = event.routing_key if event.routing_key is not None else self.routing_key
            started = time.perf_counter()
            try:
                ret = send(ctx, routing_key, event.body)
                if ret is not None:
                    await ret
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed publish never stops the lane
                self.failed += 1
                if pending and pending[0] is event:
                    pending.popleft()
                await self._fail(event, e)
                if self._settle_waiters:
                    self._wake_settled()
                continue
            elapsed = time.perf_counter() - started
            self.publish_seconds += elapsed
            if elapsed > self.max_publish_seconds:
                self.max_publish_seconds = elapsed
            self.published += 1
            if pending and pending[0] is event:
                pending.popleft()
            if self._settle_waiters:
                self._wake_settled()

    async def _fail(self, event: Event, error: BaseException):
        try:
            await self._on_failure(self, event, error)
        except asyncio.CancelledError:
            raise
        except Exception:  # the failure handler logs; it must not end the lane
            pass

    @property
    def settled_count(self) -> int:
        """How many events this lane has published or failed."""
        return self.published + self.failed

    async def settled(self, seq: int):
        """
        Return once the event with sequence number ``seq`` was published or failed.

        :param seq: What :meth:`put` returned
        """
        if self.settled_count >= seq:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._settle_waiters.append((seq, waiter))
        await waiter

    def _wake_settled(self):
        done = self.settled_count
        still = []
        for seq, waiter in self._settle_waiters:
            if seq <= done:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((seq, waiter))
        self._settle_waiters = still

    def _set_idle(self):
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drained(self):
        """
        Return once every event queued so far was published or failed.
        """
        if not self._pending and not self._inline_failed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    async def close(self, error: BaseException) -> int:
        """
        Stop the lane. Events still queued are failed with ``error``.

        :param error: The reason given for what is not delivered
        :return: How many events were not delivered
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for event, error in self._inline_failed:
            await self._fail(event, error)
            self.failed += 1
        self._inline_failed.clear()
        undelivered = list(self._pending)
        self._pending.clear()
        for event in undelivered:
            self.failed += 1
            await self._fail(event, error)
        self._wake_settled()
        self._set_idle()
        return len(undelivered)

    def stats(self) -> dict[str, Any]:
        """
        :return: This lane's counts: queued, published, failed, depth, and publish latency
        """
        return {
            "plugin": self.plugin,
            "provider": self.provider,
            "profile": self.profile,
            "queued": self.queued,
            "published": self.published,
            "failed": self.failed,
            "depth": len(self._pending),
            "mean_publish_seconds": self.publish_seconds / self.published if self.published else 0.0,
            "max_publish_seconds": self.max_publish_seconds,
        }
