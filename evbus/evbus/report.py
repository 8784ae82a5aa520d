"""
Failure reporting: what happens to an event a lane gives up.

``failure_handler(contexts)`` makes the function a lane calls for each such
event: it writes the dead letter, logs the failure with plugin and profile
(repeats of a destination that is down counted instead, see
:class:`evbus.report.Repeats`), and calls the error callback that
``error_callback_ref`` names, secrets masked.
"""
import asyncio
import inspect
from typing import Any

from evbus import report
from evbus.exc import ConfigError
from evbus.exc import PublishError
from evbus.lane import Lane
from evbus.report import Repeats


def __init__(hub):
    # Failures of a destination that is down are written once, then counted
    hub.evbus.report.REPEATS = Repeats()


def error_callback(hub):
    """
    :return: The function that ``error_callback_ref`` names, or None
    :raises ConfigError: when the reference names nothing callable on the hub
    """
    ref = hub.evbus.settings.read().error_callback_ref
    if not ref:
        return None
    try:
        func = hub[ref]
    except Exception:
        func = None
    if not callable(func):
        raise ConfigError(f"error_callback_ref '{ref}' names no function on the hub")
    return func


def repeated(hub, lane: Lane, count: int):
    """Log the failures of a lane that were counted instead of written, in one line."""
    hub.log.error(
        f"{count} more event(s) failed to publish on {hub.evbus.MASK.text(lane.where)} the same way, "
        f"dead-lettered",
        extra={"evbus_internal": True},
    )


def failure_handler(hub, contexts: Any):
    """
    Make the function a lane calls for an event it could not publish: it
    logs with plugin and profile, and calls the error callback, secrets masked.
    """
    masked_contexts = None

    async def on_failure(lane: Lane, event, error: BaseException, attempts: int):
        nonlocal masked_contexts
        mask = hub.evbus.MASK
        text = mask.exception(error)
        try:
            hub.evbus.deadletter.record(lane, event, error, attempts)
        except Exception as e:  # the failure is still logged and called back
            hub.log.error(f"Cannot write the dead letter of event {event.id}: {mask.exception(e)}",
                          extra={"evbus_internal": True})
        write, counted = hub.evbus.report.REPEATS.note(lane, type(error).__name__)
        if counted:
            hub.evbus.report.repeated(lane, counted)
        if write:
            tried = f"after {attempts} attempt(s)" if attempts else "without an attempt"
            hub.log.error(
                f"Event {event.id} (profile '{event.profile}') failed to publish on {mask.text(lane.where)} "
                f"{tried}, dead-lettered: {text}",
                extra={"evbus_internal": True},
            )
        try:
            callback = hub.evbus.report.error_callback()
        except Exception as e:
            hub.log.error(mask.exception(e), extra={"evbus_internal": True})
            return
        if callback is None:
            return
        if masked_contexts is None:
            masked_contexts = mask.data(contexts)
        exception = error
        if mask.text(str(error)) != str(error):
            exception = PublishError(mask.text(str(error)), type(error).__name__)
        error_data = {
            "exception": exception,
            "plugin": lane.plugin,
            "profile": event.profile,
            "acct_profile": lane.profile,
            "routing_key": event.routing_key if event.routing_key is not None else lane.routing_key,
            "event_id": event.id,
            "attempts": attempts,
            "body": event.body,
            "context": masked_contexts,
            "ctx": {"acct": mask.data(lane.ctx.acct)},
        }
        try:
            ret = callback(error_data)
            if inspect.isawaitable(ret):
                await hub.evbus.report.bounded(ret, getattr(lane, "callbacks_until", None))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            hub.log.error(
                f"The error callback failed: {mask.exception(e)}",
                extra={"evbus_internal": True},
            )

    return on_failure


async def bounded(hub, awaitable, until: float | None = None):
    """
    Await what an error callback returned, in line (the lane counts the
    failure once it returned), for ``CALLBACK_TIMEOUT`` seconds at most: one
    that never returns must not hold up its lane (the events behind it, and a
    stop). Past the bound it is cancelled, an error is logged, and the lane
    goes on. One that swallows the cancel holds its lane until it returns (at
    a stop, the lanes' close grace bounds that as well).

    :param until: The loop time by which it must have returned at the latest
        (a closing lane's: the callbacks of what it gives up share its grace)
    :raises Exception: what the callback raised
    """
    loop = asyncio.get_running_loop()
    bound = loop.time() + report.CALLBACK_TIMEOUT
    timeout = asyncio.timeout_at(bound if until is None else min(bound, until))
    try:
        async with timeout:
            await awaitable
    except TimeoutError:
        if not timeout.expired():
            raise  # the callback's own
    if timeout.expired():
        hub.log.error(
            f"The error callback did not return within {report.CALLBACK_TIMEOUT:g} s"
            f"{'' if until is None or bound <= until else ', or by the end of its lane closing'}: "
            f"cancelled, the lane goes on",
            extra={"evbus_internal": True},
        )
