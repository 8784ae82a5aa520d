"""
Delivery lanes: one ordered queue and one task per (ingress plugin, acct profile).

A lane delivers its events in the order they were put. Lanes never wait for
each other: a slow or failing destination holds up its own lane only.

Every lane has the same delivery machinery, whatever the plugin:

- each broker call is bounded by ``policy.timeout``;
- a failed publish is retried with exponential backoff and full jitter until
  the seconds budget is spent (the last attempt starts when it ends), or a
  cap of attempts when one is set; only then is the event given up: handed
  to ``on_failure`` (dead letter, log, error callback), counted, and the lane
  goes on. A lane whose event used up its budget is *down*: until a publish
  succeeds, its events get one attempt each;
- an error the plugin says a retry cannot help (``retriable``: a refused
  login, a message too large) gives the event up after that one attempt;
- a lane holds at most ``limit`` events; when full, the listener waits for
  room, or the oldest event not yet handed off is given up (``when_full``);
- a plugin that can pipeline (:class:`Destination` with ``pipelined``) gets up
  to ``window`` events handed off before the oldest is confirmed; when one
  fails, the lane goes back to the oldest unconfirmed event and hands them all
  off again, in order (at-least-once: a retry may repeat an event). A plugin
  that also takes several events at once (``send_many``) gets every event
  that waits, up to the window, in one call; a lone event goes alone, at
  once. Each event keeps its own confirmation, so the rest is the same. A failure
  is charged to the event it belongs to: a hand-off that fails behind events
  in flight waits for them first, and when several events in flight fail
  with one error that a retry cannot help, they are handed off one at a time
  to find whose it is.
"""
import asyncio
import collections
import dataclasses
import itertools
import random
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

from evbus.exc import LaneFullError
from evbus.types import RECORD_BODY
from evbus.types import RECORD_ROUTING_KEY
from evbus.types import Event
from evbus.types import event_of

# Seconds a closing lane's task gets to end, and its plugin to flush and disconnect
CLOSE_GRACE = 3.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """
    How hard a lane tries before it gives an event up.

    The seconds budget governs: an event is retried until ``seconds`` have
    passed since its first failure, and the last delay is cut short so that
    the last attempt starts when the budget ends. A broker outage shorter
    than ``seconds`` therefore costs no event.

    :param attempts: Publish attempts per event at most, in all (1 = no retry);
        0 = no limit on the count, the seconds budget decides
    :param seconds: Seconds after an event's first failure when its last attempt starts
    :param backoff: The first retry's delay ceiling; it doubles on each retry (full jitter)
    :param backoff_max: The largest delay ceiling
    :param timeout: Seconds one broker call (hand-off or confirmation) may take
    """

    attempts: int = 0
    seconds: float = 30.0
    backoff: float = 0.1
    backoff_max: float = 5.0
    timeout: float = 10.0

    def delay(self, retry: int) -> float:
        """
        :param retry: 1 for the first retry
        :return: Seconds to wait before it: uniform in [0, min(backoff_max, backoff * 2**(retry-1))]
        """
        return random.uniform(0, min(self.backoff_max, self.backoff * 2 ** min(retry - 1, 64)))

    def next_delay(self, attempts: int, elapsed: float) -> float | None:
        """
        :param attempts: The attempts an event had, all failed (1 after its first failure)
        :param elapsed: Seconds since its first failure
        :return: Seconds to wait before the next attempt, cut to what is left of the
            seconds budget (``elapsed + delay == seconds``: the last attempt);
            None when the budget is spent
        """
        left = self.seconds - elapsed
        if left <= 0 or (self.attempts and attempts >= self.attempts):
            return None
        return min(self.delay(attempts), left)


def retriable(error: BaseException) -> bool:
    """
    :return: False for errors that say a retry cannot help (``error.retriable`` is False,
        as aiokafka marks them), else True
    """
    return getattr(error, "retriable", True) is not False


def _drop(receipt: Any):
    """Let go of a receipt: cancel it when it is still pending, else retrieve its error (unlogged)."""
    if isinstance(receipt, asyncio.Future):
        if not receipt.done():
            receipt.cancel()
        elif not receipt.cancelled():
            receipt.exception()  # retrieved, so asyncio does not log it
    elif asyncio.iscoroutine(receipt):
        receipt.close()


@dataclasses.dataclass
class Destination:
    """
    What a lane needs of an ingress plugin, adapted once per lane.

    :param send: ``send(ctx, routing_key, event)``. Not pipelined: returns an
        awaitable that publishes and confirms the event (or None when it is
        published already). Pipelined: a coroutine that hands the event off
        in order and returns an awaitable of its confirmation.
    :param pipelined: Whether ``send`` hands off and confirms separately
    :param send_many: Pipelined plugins only, optional: ``send_many(ctx, items)``, a
        coroutine that hands off several events at once, in order; ``items`` is a list
        of ``(routing_key, event)``. It returns the awaitables of their confirmations,
        one per event in order, for all of them or for the first ones: when it
        cannot hand off an event, it stops there, and raises when that is the first.
        The lane hands the rest off at its next step (one at a time when
        ``send_many`` stopped for an event's own error, which then raises again)
    :param inline: ``send`` never waits: an event that finds the lane empty is
        published by :meth:`Lane.put` at once, without the hop through the task
    :param publish_nowait: ``publish_nowait(ctx, routing_key, body)``: what an inline
        ``send`` calls with the event's body, for a record that needs no Event
        (:func:`~evbus.types.make_record`); or None
    :param open: ``open(ctx)`` -> awaitable; connects early, or None
    :param close: ``close(ctx)`` -> awaitable; flushes and disconnects, or None
    :param describe: ``describe(ctx)`` -> str; where the destination is (host and port), for messages
    :param retriable: ``retriable(error)`` -> bool; the plugin's word on whether a retry can help
        (default: :func:`retriable`)
    """

    send: Callable[[Any, str | None, Event], Any]
    pipelined: bool = False
    send_many: Callable[[Any, list[tuple[str | None, Event]]], Awaitable[list]] | None = None
    inline: bool = False
    publish_nowait: Callable[[Any, str | None, bytes], None] | None = None
    open: Callable[[Any], Awaitable] | None = None
    close: Callable[[Any], Awaitable] | None = None
    describe: Callable[[Any], str] | None = None
    retriable: Callable[[BaseException], bool] = retriable


class Lane:
    """
    The delivery lane of one destination.

    :param plugin: The ingress plugin name
    :param provider: The acct provider the profile came from
    :param profile: The acct profile name (a pattern for event profiles)
    :param ctx: The ``ctx`` handed to the plugin; ``ctx.acct`` is the profile data
    :param destination: The plugin's functions, adapted
    :param on_failure: ``on_failure(lane, event, error, attempts)`` -> awaitable; called for a given-up event
    :param policy: Retries and timeouts
    :param window: Events handed off and not yet confirmed, at most (pipelined plugins)
    :param log: ``log(message)``: where warnings about the destination go
    :param limit: Events the lane holds at most (0: no limit)
    :param when_full: ``"wait"``: the listener waits for room (backpressure up to
        ``put``); ``"dead-letter"``: the oldest event not yet handed off is given up
    :param on_settled: ``on_settled(event)``, called once the lane published or gave up an
        event (with its record, when it published the record in line)
    :param after_settled: ``after_settled()``, called once the lane's task has settled
        events (not after :meth:`put` published one in line: its caller goes on first)
    :param envelope: ``envelope(event)`` -> what the plugin sends instead of the event
        (a CloudEvent, see :mod:`evbus.cloudevents`), or None
    :param telemetry: The lane's spans and metrics (:class:`evbus.telemetry.LaneTelemetry`),
        or None: no hook is called
    """

    def __init__(
        self,
        plugin: str,
        provider: str,
        profile: str,
        ctx: Any,
        destination: Destination,
        on_failure: Callable[["Lane", Event, BaseException, int], Awaitable],
        policy: RetryPolicy = RetryPolicy(),
        window: int = 1000,
        log: Callable[[str], None] | None = None,
        limit: int = 0,
        when_full: str = "wait",
        on_settled: Callable[[Event], None] | None = None,
        after_settled: Callable[[], None] | None = None,
        envelope: Callable[[Event], Event] | None = None,
        telemetry: Any = None,
    ):
        self.plugin = plugin
        self.provider = provider
        self.profile = profile
        self.ctx = ctx
        self.routing_key = ctx.acct.get("routing_key")
        self.destination = destination
        self.policy = policy
        self.window = max(1, window) if destination.pipelined else 1
        self.limit = limit
        self.when_full = when_full
        self._on_settled = on_settled
        self._after_settled = after_settled
        self._room: list[asyncio.Future] = []
        self.telemetry = telemetry
        self._send = destination.send
        self._send_many = destination.send_many if destination.pipelined else None
        if envelope is not None or telemetry is not None:
            self._send = _wired(destination.send, envelope, telemetry)
            if self._send_many is not None:
                self._send_many = _wired_many(self._send_many, envelope, telemetry)
        self._inline = destination.inline
        # Records are published in line with the plugin's publish_nowait where nothing
        # else needs their Event: no envelope, no telemetry (on_settled gets the record)
        self._publish_record = (
            destination.publish_nowait if destination.inline and envelope is None and telemetry is None else None
        )
        self._on_failure = on_failure
        self._log = log or (lambda message: None)
        # Events not yet settled: the first ones are in flight (handed off, unconfirmed)
        self._pending: collections.deque[Event] = collections.deque()
        self._in_flight: collections.deque[Any] = collections.deque()
        # Events given up outside the task (failed inline in put(), dropped from a full
        # lane), with their error, for the task to report: it can await the error callback
        self._to_report: collections.deque[tuple[Event, BaseException]] = collections.deque()
        self._wakeup: asyncio.Future | None = None
        self._idle: list[asyncio.Future] = []
        # (sequence number, future) of callers waiting for one event to be settled
        self._settle_waiters: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        # Set by close(): the task ends at its next step instead of waiting for events
        self._closing = False
        # While the lane closes: the loop time by which the error callbacks of what it gives up must
        # have returned (they share its grace), else None
        self.callbacks_until: float | None = None
        # The depth at which the listener waits for room; 0: it never does (no limit, the
        # lane drops instead, or a stop's deadline passed)
        self._wait_at = limit if when_full == "wait" else 0
        # Set when an event used up its retry budget; cleared by the next success
        self.down = False
        # The error of the last failed publish, until one succeeds
        self.last_error: BaseException | None = None
        # The oldest event while its attempts fail, how many failed, when the first
        # did, and whether the last attempt its seconds budget allows was made
        self._tried: Event | None = None
        self._attempts = 0
        self._first_failure = 0.0
        self._last_try = False
        # Events still to hand off one at a time, after a failure several of them shared
        self._one_by_one = 0
        self.queued = 0
        self.published = 0
        self.retried = 0
        self.failed = 0
        self.publish_seconds = 0.0
        self.max_publish_seconds = 0.0

    def __repr__(self):
        return f"<Lane ingress.{self.plugin} profile={self.profile!r} depth={len(self._pending)}>"

    @property
    def where(self) -> str:
        """The destination for messages: plugin, profile and, where the plugin tells, host and port."""
        text = f"ingress.{self.plugin} profile '{self.profile}'"
        if self.destination.describe is not None:
            try:
                text += f" ({self.destination.describe(self.ctx)})"
            except Exception:  # a description is a courtesy, never a failure
                pass
        return text

    def start(self):
        """Start the lane's task (and its early connection) in the running loop."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"evbus lane ingress.{self.plugin}:{self.profile}"
            )

    def put(self, event: Event | tuple) -> int:
        """
        Queue an event on this lane; never waits.

        :param event: The event to publish, or its record (:func:`~evbus.types.make_record`),
            which becomes its Event here unless it is published in line as it is
        :return: Its sequence number on this lane, for :meth:`settled`
        """
        self.queued += 1
        if event.__class__ is tuple:
            publish = self._publish_record
            if publish is None or self._pending or self._to_report:
                event = event_of(event)
            else:
                routing_key = event[RECORD_ROUTING_KEY]
                if routing_key is None:
                    routing_key = self.routing_key
                try:
                    publish(self.ctx, routing_key, event[RECORD_BODY])
                except Exception as e:  # reported by the lane's task, which can await the error callback
                    self._to_report.append((event_of(event), e))
                    self._notify()
                else:
                    self.published += 1
                    if self._on_settled is not None:
                        self._on_settled(event)
                    if self._settle_waiters:
                        self._wake_settled()
                return self.queued
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.queued(event)
        if self._inline and not self._pending and not self._to_report:
            routing_key = event.routing_key if event.routing_key is not None else self.routing_key
            try:
                self._send(self.ctx, routing_key, event)
            except Exception as e:  # reported by the lane's task, which can await the error callback
                self._to_report.append((event, e))
            else:
                self.published += 1
                if telemetry is not None:
                    telemetry.published(event)
                if self._on_settled is not None:
                    self._on_settled(event)
                if self._settle_waiters:
                    self._wake_settled()
                return self.queued
        else:
            pending = self._pending
            if self.limit and len(pending) >= self.limit and self.when_full == "dead-letter":
                # Drop the oldest event that is not handed off yet
                oldest = pending[len(self._in_flight)] if len(pending) > len(self._in_flight) else None
                if oldest is not None:
                    pending.remove(oldest)
                    self._to_report.append(
                        (oldest, LaneFullError(f"dropped: the lane to {self.where} held {self.limit} events"))
                    )
            pending.append(event)
        self._notify()
        return self.queued

    def _notify(self):
        """Start the lane's task, or wake it: it has events to publish or failures to report."""
        if self._task is None:
            self.start()
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self):
        if self.destination.open is not None:
            await self._open()
        pending = self._pending
        in_flight = self._in_flight
        send = self._send
        send_many = self._send_many
        lane_routing_key = self.routing_key
        ctx = self.ctx
        policy = self.policy
        pipelined = self.destination.pipelined
        loop = asyncio.get_running_loop()
        # (event, error) of a hand-off that failed behind events in flight: that event's
        # own failure, charged to it once the events before it are settled
        deferred: tuple[Event, BaseException] | None = None
        error: BaseException
        while not self._closing:
            if self._to_report:
                event, error = self._to_report.popleft()
                # An event dropped from a full lane was never tried; one that failed inline, once
                await self._give_up(event, error, 0 if isinstance(error, LaneFullError) else 1)
                continue
            if not pending:
                self._set_idle()
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            if deferred is not None and not in_flight:
                event, error = deferred
                deferred = None
                if event is pending[0]:  # (else it was dropped from a full lane meanwhile)
                    await self._failed(error, self.destination.retriable(error))
                continue
            started = time.perf_counter()
            try:
                async with asyncio.timeout(policy.timeout):
                    # Hand off events in order, up to the window (one at a time while sorting out
                    # a failure that several events shared)
                    window = 1 if self._one_by_one else self.window
                    while deferred is None and len(in_flight) < window and len(in_flight) < len(pending):
                        handed = len(in_flight)
                        if send_many is not None and min(window, len(pending)) - handed > 1:
                            # Several events wait: hand them off in one call
                            events = list(itertools.islice(pending, handed, min(window, len(pending))))
                            try:
                                receipts = await send_many(
                                    ctx,
                                    [
                                        (e.routing_key if e.routing_key is not None else lane_routing_key, e)
                                        for e in events
                                    ],
                                )
                                if not receipts or len(receipts) > len(events):
                                    raise RuntimeError(
                                        f"send_many of ingress.{self.plugin} returned {len(receipts)} "
                                        f"confirmations for {len(events)} events"
                                    )
                            except Exception as e:
                                if not in_flight:
                                    raise
                                deferred = (events[0], e)
                                break
                            in_flight.extend(receipts)
                            continue
                        event = pending[handed]
                        routing_key = event.routing_key if event.routing_key is not None else lane_routing_key
                        try:
                            receipt = send(ctx, routing_key, event)
                            if pipelined:
                                receipt = await receipt
                        except Exception as e:
                            if not in_flight:
                                raise
                            deferred = (event, e)
                            break
                        in_flight.append(receipt)
                    # Confirm the oldest
                    receipt = in_flight[0]
                    if receipt is not None:
                        await receipt
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    self._forget_in_flight()
                    raise
                # A receipt that someone else cancelled: a failed publish, not the lane's end
                error = ConnectionError(f"the confirmation from {self.where} was cancelled")
            except TimeoutError as e:
                error = TimeoutError(
                    f"no confirmation within {policy.timeout} s from {self.where}" + (f": {e}" if str(e) else "")
                )
            except Exception as e:  # a failed publish never stops the lane
                error = e
            else:
                in_flight.popleft()
                done = pending.popleft()
                if self.telemetry is not None:
                    self.telemetry.published(done)
                if self._on_settled is not None:
                    self._on_settled(done)
                if self._tried is not None:
                    self._tried, self._attempts = None, 0
                if self._one_by_one:
                    self._one_by_one -= 1
                if self.last_error is not None:
                    self.last_error = None
                    if self.down:
                        self.down = False
                        self._log(f"{self.where} is up again")
                if pipelined:
                    # and the confirmations that have arrived behind it, without another wait
                    self._harvest_confirmed()
                elapsed = time.perf_counter() - started
                self.publish_seconds += elapsed
                if elapsed > self.max_publish_seconds:
                    self.max_publish_seconds = elapsed
                self.published += 1
                self._wake_waiters()
                continue
            # Failure: keep what was confirmed
            self._harvest_confirmed()
            if not pending:
                self._forget_in_flight()
                continue
            can_retry = self.destination.retriable(error)
            shared = 0 if can_retry else self._failed_alike(error)
            if can_retry or shared or not in_flight:
                # Go back to the oldest unconfirmed event: all from it on are handed off again
                self._forget_in_flight()
                deferred = None
            else:
                # The oldest event's own refusal: the events behind it stay in flight
                _drop(in_flight.popleft())
            await self._failed(error, can_retry, shared)

    async def _failed(self, error: BaseException, can_retry: bool, shared: int = 0):
        """
        The oldest event failed: count its attempt, then retry it after a
        backoff, hand off the events that shared the error one at a time, or
        give it up.

        :param error: Why it failed
        :param can_retry: Whether a retry can help, in the plugin's word
        :param shared: How many events in flight behind it failed with the very same error
        """
        policy = self.policy
        self.last_error = error
        head = self._pending[0]
        if head is not self._tried:  # the count belongs to one event
            self._tried, self._attempts, self._last_try = head, 0, False
        self._attempts += 1
        attempts = self._attempts
        now = time.monotonic()
        if attempts == 1:
            self._first_failure = now
        elapsed = now - self._first_failure
        if not can_retry and shared:
            # Events in flight failed with this one error (a closed channel, a failed batch):
            # it may be another's. Hand them off one at a time to tell whose it is
            self._one_by_one = shared + 1
            self.retried += 1
            if self.telemetry is not None:
                self.telemetry.retried(head, error, attempts, 0.0)
            self._log(
                f"Publish to {self.where} failed for {shared + 1} events at once, "
                f"trying them one at a time: {type(error).__name__}: {error}"
            )
            return
        # A destination that is down (it already used up a budget) gets one attempt per
        # event until a publish succeeds again: its events go to the dead letters at once
        delay = None
        if can_retry and not self.down and not self._last_try:
            delay = policy.next_delay(attempts, elapsed)
        if delay is not None:
            self._last_try = elapsed + delay >= policy.seconds
            self.retried += 1
            if self.telemetry is not None:
                self.telemetry.retried(head, error, attempts, delay)
            if attempts == 1 or self._last_try:  # the retries between go uncounted in the log
                budget = (
                    f"up to {policy.attempts} attempts within {policy.seconds:g} s"
                    if policy.attempts else f"for up to {policy.seconds:g} s"
                )
                self._log(
                    f"Publish to {self.where} failed, "
                    + (f"retrying {budget}" if attempts == 1 else f"attempt {attempts}, retrying for the last time")
                    + f": {type(error).__name__}: {error}"
                )
            await asyncio.sleep(delay)
            return
        if can_retry and not self.down:
            self.down = True
            self._log(
                f"{self.where} is down: its events are dead-lettered after one attempt each "
                f"until a publish succeeds again"
            )
        self._tried, self._attempts = None, 0
        if self._one_by_one:
            self._one_by_one -= 1
        await self._give_up(self._pending.popleft(), error, attempts)

    def attempts_of(self, event: Event) -> int:
        """
        :param event: An event of this lane
        :return: How many of its attempts failed so far (only the oldest event has any)
        """
        return self._attempts if event is self._tried else 0

    def _failed_alike(self, error: BaseException) -> int:
        """
        :return: How many events in flight behind the oldest failed with the very same error
        """
        return sum(
            1
            for receipt in itertools.islice(self._in_flight, 1, None)
            if isinstance(receipt, asyncio.Future)
            and receipt.done()
            and not receipt.cancelled()
            and receipt.exception() is error
        )

    def _harvest_confirmed(self):
        """Count the in-flight events at the front whose confirmation has arrived."""
        pending, in_flight = self._pending, self._in_flight
        confirmed = None  # (a confirmation that several events share is looked at once)
        while in_flight:
            receipt = in_flight[0]
            if receipt is not confirmed:
                if not isinstance(receipt, asyncio.Future) or not receipt.done():
                    break
                if receipt.cancelled() or receipt.exception() is not None:
                    break
                confirmed = receipt
            in_flight.popleft()
            done = pending.popleft()
            self.published += 1
            if self.telemetry is not None:
                self.telemetry.published(done)
            if self._on_settled is not None:
                self._on_settled(done)
        self._wake_waiters()

    def _forget_in_flight(self):
        """Drop the receipts of unconfirmed events; they will be handed off again."""
        for receipt in self._in_flight:
            _drop(receipt)
        self._in_flight.clear()

    async def _open(self):
        try:
            async with asyncio.timeout(self.policy.timeout):
                await self.destination.open(self.ctx)
        except TimeoutError:
            self._log(f"Cannot connect to {self.where} within {self.policy.timeout} s; events wait for it")
        except Exception as e:
            if self.destination.retriable(e):
                self._log(f"Cannot connect to {self.where}; events wait for it: {type(e).__name__}: {e}")
            else:  # (a refused login, say): each event's publish fails the same way, at once
                self._log(f"Cannot connect to {self.where}: {type(e).__name__}: {e}; a retry cannot help")

    async def _give_up(self, event: Event, error: BaseException, attempts: int = 1):
        try:
            await self._on_failure(self, event, error, attempts)
        except asyncio.CancelledError:
            raise
        except Exception:  # the failure handler logs; it must not end the lane
            pass
        self.failed += 1
        if self.telemetry is not None:
            routing_key = event.routing_key if event.routing_key is not None else self.routing_key
            self.telemetry.given_up(event, error, attempts, routing_key)
        if self._on_settled is not None:
            self._on_settled(event)
        self._wake_waiters()

    @property
    def depth(self) -> int:
        """The events the lane holds: waiting, or handed off and not yet confirmed."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether the lane holds ``limit`` events and makes the listener wait for room."""
        return 0 < self._wait_at <= len(self._pending)

    def unbound(self):
        """
        Stop making the listener wait for room (a stop's deadline passed): the
        events still coming are taken, and given up when the lane closes.
        """
        self._wait_at = 0
        self._wake_room()

    async def room(self):
        """Return once the lane has room for another event."""
        while self.full:
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            await waiter

    def _wake_waiters(self):
        """
        The lane's task published or gave up events: tell ``after_settled``, and wake
        who waits for them to settle, and for room.
        """
        if self._after_settled is not None:
            self._after_settled()
        if self._settle_waiters:
            self._wake_settled()
        if self._room:
            self._wake_room()

    def _wake_room(self):
        waiters, self._room = self._room, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

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
        Return once every event queued so far was published or given up.
        """
        if not self._pending and not self._to_report:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    async def close(self, error: BaseException, grace: float | None = None) -> int:
        """
        Stop the lane: its task is cancelled, events still queued are given up
        with ``error``, then the plugin's ``close`` (flush, disconnect) runs.

        Every wait is bounded: the task gets ``grace`` seconds to end (a plugin
        or library that swallows a cancel is cancelled again, then left
        behind with a warning), and so does the plugin's ``close``. A
        cancellation of the caller is never swallowed.

        :param error: The reason given for what is not delivered
        :param grace: Seconds for the task to end and for the plugin to close,
            each (default: the policy's timeout)
        :return: How many events were not delivered
        """
        if grace is None:
            grace = self.policy.timeout
        self._closing = True
        # The task's end and the error callbacks of what is given up share one grace: a callback
        # that never returns cannot keep the events behind it from their dead letters
        self.callbacks_until = asyncio.get_running_loop().time() + grace
        task, self._task = self._task, None
        if task is not None and not await end_task(task, grace):
            self._log(
                f"The lane to {self.where} did not end within {grace} s of being cancelled "
                f"(its plugin ignores cancellation); left behind"
            )
        self._forget_in_flight()
        for event, inline_error in list(self._to_report):
            # an inline publish that failed made one attempt; an event dropped from a full lane none
            await self._give_up(event, inline_error, 0 if isinstance(inline_error, LaneFullError) else 1)
        self._to_report.clear()
        undelivered = list(self._pending)
        self._pending.clear()
        if undelivered and self.last_error is not None:
            # say why the lane could not deliver them in time
            last = self.last_error
            error = type(error)(f"{error}; the last publish to it failed: {type(last).__name__}: {last}")
        for event in undelivered:
            await self._give_up(event, error, self.attempts_of(event))
        self._wake_settled()
        self._wake_room()
        self._set_idle()
        if self.destination.close is not None:
            try:
                async with asyncio.timeout(grace):
                    await self.destination.close(self.ctx)
            except TimeoutError:
                self._log(f"Closing {self.where} took longer than {grace} s")
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                self._log(f"Closing {self.where} was cancelled by its plugin")
            except Exception as e:
                self._log(f"Closing {self.where} failed: {type(e).__name__}: {e}")
        return len(undelivered)

    def stats(self) -> dict[str, Any]:
        """
        :return: This lane's counts: queued, published, retried, failed, depth, and publish latency
        """
        return {
            "plugin": self.plugin,
            "provider": self.provider,
            "profile": self.profile,
            "queued": self.queued,
            "published": self.published,
            "retried": self.retried,
            "failed": self.failed,
            "dead_lettered": self.failed,
            "down": self.down,
            "depth": self.depth,
            "in_flight": len(self._in_flight),
            "mean_publish_seconds": self.publish_seconds / self.published if self.published else 0.0,
            "max_publish_seconds": self.max_publish_seconds,
        }


def _wired(
    send: Callable[[Any, str | None, Event], Any],
    envelope: Callable[[Event], Event] | None,
    telemetry: Any,
) -> Callable[[Any, str | None, Event], Any]:
    """
    A lane's ``send`` that hands the plugin what goes on the wire: the event
    in its envelope, with the trace context of its span.
    """

    def send_wired(ctx: Any, routing_key: str | None, event: Event) -> Any:
        wire = event if envelope is None else envelope(event)
        if telemetry is not None:
            wire = telemetry.sending(event, wire, routing_key)
        return send(ctx, routing_key, wire)

    return send_wired


def _wired_many(
    send_many: Callable[[Any, list[tuple[str | None, Event]]], Awaitable[list]],
    envelope: Callable[[Event], Event] | None,
    telemetry: Any,
) -> Callable[[Any, list[tuple[str | None, Event]]], Awaitable[list]]:
    """
    A lane's ``send_many`` that hands the plugin what goes on the wire: each
    event in its envelope, with the trace context of its span (as
    :func:`_wired` does for one).
    """

    def send_many_wired(ctx: Any, items: list[tuple[str | None, Event]]) -> Awaitable[list]:
        wired = []
        for routing_key, event in items:
            wire = event if envelope is None else envelope(event)
            if telemetry is not None:
                wire = telemetry.sending(event, wire, routing_key)
            wired.append((routing_key, wire))
        return send_many(ctx, wired)

    return send_many_wired


async def end_task(task: asyncio.Task, grace: float) -> bool:
    """
    Cancel a task and wait, at most ``grace`` seconds, for it to end.

    A library may swallow a cancel (``asyncio.wait_for`` on Python 3.11 does
    when the call it waits for completes in the same turn): the task is then
    cancelled again at its next wait, every 50 ms, until the grace runs out.
    A cancellation of the caller propagates; the task's own outcome is
    retrieved, so asyncio logs nothing about it.

    :return: Whether the task ended
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.wait((task,), timeout=min(remaining, 0.05))
    if not task.done():
        return False
    if not task.cancelled():
        task.exception()
    return True
