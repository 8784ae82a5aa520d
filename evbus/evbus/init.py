"""
The listener: ``start(contexts)`` takes events off the broker queue and hands
them to their lanes; ``stop()`` drains the lanes and ends it; ``join()`` waits
until it runs.
"""
import asyncio
import sys
import time
from typing import Any

from evbus.distribution import check
from evbus.exc import BusRunningError
from evbus.exc import BusStoppedError
from evbus.exc import EvbusTimeoutError
from evbus.init import Stop
from evbus.lane import CLOSE_GRACE
from evbus.mask import Masker
from evbus.propagate import propagate


def __init__(hub):
    # pop-evbus, evbus-kafka or evbus-pika installed too: fail now, saying which to uninstall
    check()
    hub.evbus.STARTED = False
    hub.evbus.MASK = Masker()
    # The listener's own state: whether it runs, why it could not start, the pending stop
    hub.evbus.init.RUNNING = False
    # start() until its listener runs (or it fails)
    hub.evbus.init.STARTING = False
    hub.evbus.init.ERROR = None
    # The task of the start() that failed, whose error join() reported
    hub.evbus.init.FAILED = None
    hub.evbus.init.STOP = None
    for dyne in ("acct", "ingress", "output", "serialize", "match"):
        hub.pop.sub.add(dyne_name=dyne)
    if not hasattr(hub, "log"):
        # A hub that no config load set up: evbus logs through hub.log
        hub.pop.sub.add(dyne_name="log")


async def start(hub, contexts: dict[str, Any] | None = None):
    """
    Listen on the broker queue and propagate every event to its lanes, until stop().

    The contexts are checked first: a malformed profile, an unknown match
    plugin or an ingress plugin without ACCT raises here (and from ``join()``).
    With the spool on, what a crashed process left in it is delivered first.

    :param contexts: The output of ``hub.evbus.acct.profiles``
    :raises BusRunningError: when a listener already runs
    """
    if hub.evbus.init.RUNNING:
        raise BusRunningError("The event bus listener is already running")
    hub.evbus.init.ERROR = hub.evbus.init.FAILED = None
    # A stop() from now on is for this listener, even before it runs
    hub.evbus.init.STARTING = True
    try:
        if contexts is None:
            contexts = {}
        hub.evbus.broker.configure()
        hub.evbus.broker.serializer()
        hub.evbus.report.error_callback()
        hub.evbus.deadletter.check()
        hub.evbus.broker.use_telemetry(hub.evbus.telemetry.resolve())
        router = hub.evbus.route.router(contexts)
        bus: asyncio.Queue = await hub.evbus.broker.init()
    except Exception as e:
        hub.evbus.init.ERROR = e
        hub.evbus.init.FAILED = asyncio.current_task()
        # A stop() meant for this start is answered: the listener that never ran has nothing left
        pending_stop = hub.evbus.init.STOP
        if pending_stop is not None:
            hub.evbus.init.STOP = None
            if not pending_stop.done.done():
                pending_stop.done.set_result(0)
        raise
    finally:
        hub.evbus.init.STARTING = False
    spool = hub.evbus.spool.current()
    stop_item = None
    hub.evbus.init.RUNNING = True
    hub.evbus.broker.open_puts()
    hub.evbus.STARTED = True
    try:
        hub.log.debug(f"Started the event bus with {len(router.lanes)} lane(s)", extra={"evbus_internal": True})
        if spool is not None:
            await _redeliver(hub, router, spool)
        put_back = bus.put_back
        while stop_item is None:
            if bus.empty():
                pending_stop = hub.evbus.init.STOP
                if pending_stop is not None and not pending_stop.queued:
                    stop_item = pending_stop
                    break
            # Propagate the next event and every one queued behind it before yielding to the
            # loop again; what is not handed on (it came after the stop, or the listener was
            # cancelled while a lane made it wait) stays queued for the next start()
            batch = [await bus.get()]
            batch += bus.take_queued()
            stop_item = await propagate(batch, router, spool, None, False, None, put_back)
            if stop_item is not None and stop_item.done.done():
                stop_item = None  # the stop of a start that failed, answered then: not this listener's
    finally:
        hub.evbus.init.RUNNING = False
        # join() waits for the next start() from now on
        hub.evbus.STARTED = False
        if stop_item is not None:
            # Stopped: puts are refused until the next start()
            hub.evbus.broker.close_puts()
        if hub.evbus.init.STOP is stop_item:
            hub.evbus.init.STOP = None
        timeout = stop_item.remaining() if stop_item is not None else 0
        undelivered = None
        try:
            undelivered = await hub.evbus.shutdown.close(timeout)
        finally:
            if spool is not None:
                spool.flush()
                spool.trim()
            hub.log.debug("The event bus stopped", extra={"evbus_internal": True})
            queued = bus.events() if stop_item is None else 0
            if queued:
                # Cancelled (or failed) instead of stopped: puts are still taken, for the next start()
                hub.log.warning(
                    f"The event bus listener ended without stop(): {queued} event(s) stay queued, "
                    f"for the next start()"
                    + (f" (and in the spool {spool.path})" if spool is not None else ": lost if the process ends now"),
                    extra={"evbus_internal": True},
                )
            if stop_item is not None and not stop_item.done.done():
                if undelivered is None:
                    stop_item.done.set_exception(BusStoppedError("The listener was cancelled while it stopped"))
                else:
                    stop_item.done.set_result(undelivered)


async def _redeliver(hub, router, spool):
    """What a crashed process left in the spool goes first; what no profile of this start matches stays there."""
    dropped = spool.dropped()
    if dropped:
        hub.log.warning(
            f"The spool {spool.path} ended in a record cut short (a crash as it was written): "
            f"{dropped} byte(s) dropped",
            extra={"evbus_internal": True},
        )
    skipped, skipped_bytes = spool.skipped()
    if skipped:
        hub.log.warning(
            f"The spool {spool.path} held {skipped} corrupt record(s) amid good ones ({skipped_bytes} bytes): "
            f"skipped, the events they held (if any) are lost; the records after them are read",
            extra={"evbus_internal": True},
        )
    left_over = spool.left_over()
    if not left_over:
        return
    hub.log.warning(
        f"Re-delivering {len(left_over)} event(s) left in the spool {spool.path}",
        extra={"evbus_internal": True},
    )
    await propagate(left_over, router, spool, keep_unrouted=True)
    kept = sum(1 for event in left_over if not router.match(event.profile))
    if kept:
        hub.log.warning(
            f"{kept} event(s) left in the spool {spool.path} match no profile of this start: "
            f"they stay there until a start whose profiles match them",
            extra={"evbus_internal": True},
        )


async def stop(hub, timeout: float | None = None) -> int:
    """
    Stop the listener after every event put before this call was handed to
    its lanes and published there (or failed). Puts are refused from now on,
    until the bus is started again.

    :param timeout: Seconds to wait for the lanes (default: config ``stop_timeout``);
        what is not delivered by then is failed, logged and handed to the error callback
    :return: How many events were not delivered (0 when the listener was not running)
    """
    if timeout is None:
        timeout = hub.evbus.settings.get("stop_timeout")
    hub.evbus.broker.close_puts()
    bus = await hub.evbus.broker.init()
    # The puts other threads made before this call reach the queue first
    await hub.evbus.broker.puts_settled(timeout)
    if not hub.evbus.init.RUNNING and not hub.evbus.init.STARTING:
        # No listener to stop: a stop queued now would stop the next start() at once
        return 0
    loop = asyncio.get_running_loop()
    stop_item = hub.evbus.init.STOP
    if stop_item is None or stop_item.done.get_loop() is not loop:
        stop_item = Stop(timeout, loop.create_future())
        hub.evbus.init.STOP = stop_item
        if stop_item.deadline is not None:
            # Past the deadline no full lane holds the listener back from the stop
            unbind = loop.call_at(stop_item.deadline, hub.evbus.shutdown.unbind)
            stop_item.done.add_done_callback(lambda _: unbind.cancel())
        try:
            bus.put_nowait(stop_item)
        except asyncio.QueueFull:
            if hub.evbus.init.RUNNING:
                await bus.put(stop_item)
            else:
                stop_item.queued = False
    if not hub.evbus.init.RUNNING:
        return 0
    # The listener bounds the drain by the timeout, and closing the lanes by their grace
    wait = None if stop_item.deadline is None else stop_item.remaining() + 2 * CLOSE_GRACE + 1
    await asyncio.wait((stop_item.done,), timeout=wait)
    if not stop_item.done.done():
        # What the listener sets later (its undelivered count, or that it was cancelled) is nobody's now
        stop_item.done.add_done_callback(_retrieve_result)
        raise EvbusTimeoutError(f"The event bus did not stop within {timeout} s (and {wait - timeout:.0f} s to close)")
    return stop_item.done.result()


async def join(hub, timeout: float | None = 60.0):
    """
    Return once the listener has started.

    :param timeout: Seconds to wait; None waits forever
    :raises EvbusTimeoutError: when it has not started in time
    :raises Exception: what start() raised, when it could not start
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.0
    # A start() task created just before this call runs its first step first: what an
    # earlier start() raised is then no longer taken for its error
    await asyncio.sleep(0)
    while not hub.evbus.STARTED:
        if hub.evbus.init.ERROR is not None:
            failed = hub.evbus.init.FAILED
            if failed is not None:
                # join() reports what start() raised: the listener task's own copy of it
                # is retrieved, so that asyncio does not log it again as never retrieved
                failed.add_done_callback(_retrieve)
            raise hub.evbus.init.ERROR
        if deadline is not None and time.monotonic() > deadline:
            raise EvbusTimeoutError(f"The event bus listener did not start within {timeout} s")
        await asyncio.sleep(delay)
        delay = min(0.05, delay + 0.001)


def _retrieve_result(future: asyncio.Future):
    if not future.cancelled():
        future.exception()


def _retrieve(task: asyncio.Task):
    if not task.cancelled():
        task.exception()


def cli(hub):
    """
    The ``evbus`` command: load the config, run the subcommand, exit with its status.
    """
    sys.exit(hub.evbus.cli.run())
