"""
Shutdown: the lanes drained, closed and retired when the bus stops.

``close(timeout)`` waits for the lanes to publish what they hold, fails what
they could not within the timeout and closes them; ``unbind()`` releases
the listener from full lanes once a stop's deadline has passed.
"""
import asyncio

from evbus.exc import EvbusTimeoutError
from evbus.lane import CLOSE_GRACE
from evbus.route import RouteState


def unbind(hub):
    """
    A stop's deadline passed: no lane makes the listener wait for room any
    more, so that it reaches the stop; what the lanes cannot publish is given
    up when they close.
    """
    for lane in hub.evbus.route.STATE.running_lanes():
        lane.unbound()


async def close(hub, timeout: float | None, grace: float = CLOSE_GRACE) -> int:
    """
    Wait until every lane has published what it holds, then stop the lanes.

    What a lane could not publish within ``timeout`` is failed with an
    :class:`~evbus.exc.EvbusTimeoutError`: logged, counted and handed to the
    error callback. The lanes then close together: each lane's task gets
    ``grace`` seconds to end and its plugin ``grace`` seconds to close, so
    this returns within ``timeout + 2 * grace`` seconds (and the time the
    error callback takes), whatever the plugins do.

    :param timeout: Seconds to wait for the lanes to drain; None waits as long as it takes
    :param grace: Seconds each lane's task gets to end, and its plugin to close
    :return: The number of events that were not delivered in time
    """
    state: RouteState = hub.evbus.route.STATE
    current = state.retire()
    if current and (timeout is None or timeout > 0):
        drained = [asyncio.ensure_future(lane.drained()) for lane in current]
        try:
            await asyncio.wait(drained, timeout=timeout)
        finally:
            for waiter in drained:
                waiter.cancel()
    error = EvbusTimeoutError("not delivered before the stop timeout ran out")
    # What the lanes give up now is written to the dead letters with one fsync, not one each
    with hub.evbus.deadletter.store().batch():
        results = await asyncio.gather(*(lane.close(error, grace) for lane in current), return_exceptions=True)
    undelivered = 0
    for lane, result in zip(current, results):
        counted = hub.evbus.report.REPEATS.flush(lane)
        if counted:
            hub.evbus.report.repeated(lane, counted)
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            hub.log.error(
                f"Closing the lane to {hub.evbus.MASK.text(lane.where)} failed: {hub.evbus.MASK.exception(result)}",
                extra={"evbus_internal": True},
            )
        else:
            undelivered += result
    if undelivered:
        hub.log.error(
            f"The event bus stopped with {undelivered} event(s) undelivered",
            extra={"evbus_internal": True},
        )
    return undelivered
