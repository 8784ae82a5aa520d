"""
Dead letters: every event a lane gives up (retry budget spent, stop timeout,
full lane) is written with its destination, attempts and masked error to the
dead-letter store (config ``dead_letter_file``, a private file: 0600, in
directories evbus makes 0700); ``replay`` publishes them again and removes
what was delivered.
"""
import asyncio
from typing import Any

from evbus import private
from evbus.deadletter import DeadLetterStore
from evbus.deadletter import default_path
from evbus.deadletter import to_event
from evbus.deadletter import to_record
from evbus.exc import ConfigError
from evbus.propagate import propagate


def __init__(hub):
    hub.evbus.deadletter.STORES = {}
    # Dead letters that could not be written (the store's file cannot be made, say)
    hub.evbus.deadletter.UNWRITTEN = 0


def store(hub) -> DeadLetterStore:
    """
    :return: The store of the configured ``dead_letter_file`` (one per path)
    """
    path = hub.evbus.settings.get("dead_letter_file") or default_path()
    stores = hub.evbus.deadletter.STORES
    found = stores.get(path)
    if found is None:
        found = stores[path] = DeadLetterStore(path)
    return found


def check(hub):
    """
    Check at start that the configured ``dead_letter_file`` can be the store:
    missing (it is made when the first event is given up), or a regular file.

    :raises ConfigError: It is a directory, a device, a FIFO, ...
    """
    path = hub.evbus.settings.get("dead_letter_file") or default_path()
    try:
        private.regular_or_missing(path)
    except OSError as e:
        raise ConfigError(f"Cannot use the dead-letter file {path}: {e}") from None


def record(hub, lane, event, error: BaseException, attempts: int) -> dict[str, Any]:
    """
    Write one given-up event to the store.

    :param lane: The lane that gave it up
    :param event: The event
    :param error: Why (its text is masked)
    :param attempts: How many publishes were tried
    :return: The record written
    """
    entry = to_record(
        event,
        plugin=lane.plugin,
        provider=lane.provider,
        acct_profile=lane.profile,
        attempts=attempts,
        error=hub.evbus.MASK.exception(error),
    )
    try:
        hub.evbus.deadletter.store().append(entry)
    except Exception:
        hub.evbus.deadletter.UNWRITTEN += 1
        raise
    return entry


def unwritten(hub) -> int:
    """:return: How many dead letters could not be written: those events are lost"""
    return hub.evbus.deadletter.UNWRITTEN


def read(hub, plugin: str | None = None, acct_profile: str | None = None) -> list[dict[str, Any]]:
    """
    :param plugin: Only the dead letters of this ingress plugin
    :param acct_profile: Only those of this acct profile
    :return: The dead-letter records, oldest first
    """
    return [
        entry
        for entry in hub.evbus.deadletter.store().read()
        if (plugin is None or entry.get("plugin") == plugin)
        and (acct_profile is None or entry.get("acct_profile") == acct_profile)
    ]


async def replay(
    hub, contexts: dict[str, Any], plugin: str | None = None, acct_profile: str | None = None
) -> dict[str, int]:
    """
    Publish dead letters again, each to its own destination (plugin and acct
    profile) with the lanes' retries, and remove those delivered. Those that
    fail again are dead-lettered again; those whose destination is not in
    ``contexts`` stay.

    :param contexts: The output of ``hub.evbus.acct.profiles`` with the destinations
    :param plugin: Only the dead letters of this ingress plugin
    :param acct_profile: Only those of this acct profile
    :return: Counts: ``replayed``, ``delivered``, ``failed`` and ``no_destination``
    """
    entries = hub.evbus.deadletter.read(plugin=plugin, acct_profile=acct_profile)
    router = hub.evbus.route.router(contexts)
    lanes = {(lane.plugin, lane.profile): lane for lane in router.lanes}
    waiting, no_destination = [], 0
    try:
        for entry in entries:
            lane = lanes.get((entry.get("plugin"), entry.get("acct_profile")))
            if lane is None:
                no_destination += 1
                continue
            # Back to its own destination through the propagate hop: a full lane makes it wait for room
            settle: list = []
            await propagate([to_event(entry)], router, lanes=(lane,), settle=settle)
            waiting.extend((entry, lane, seq) for lane, seq in settle)
        await asyncio.gather(*(lane.settled(seq) for _, lane, seq in waiting))
    except asyncio.CancelledError:
        # Interrupted: the lanes give up what they still hold (dead-lettered again) as
        # they close, so every replayed record is settled and none is kept twice
        await hub.evbus.shutdown.close(0)
        _forget_replayed(hub, waiting)
        raise
    return {**_forget_replayed(hub, waiting), "no_destination": no_destination}


def _forget_replayed(hub, waiting: list[tuple[dict, Any, int]]) -> dict[str, int]:
    """
    Remove the replayed records, each delivered or written again as a new record.

    :return: Counts: ``replayed``, ``delivered`` and ``failed``
    """
    replayed = {entry["record"] for entry, _, _ in waiting}
    # Events that failed again were written as new records, with the same event id
    failed_again = {
        (entry["id"], entry.get("plugin"), entry.get("acct_profile"))
        for entry in hub.evbus.deadletter.store().read()
        if entry.get("record") not in replayed
    }
    delivered = {
        entry["record"]
        for entry, _, _ in waiting
        if (entry["id"], entry.get("plugin"), entry.get("acct_profile")) not in failed_again
    }
    hub.evbus.deadletter.store().remove(lambda entry: entry.get("record") in replayed)
    return {"replayed": len(waiting), "delivered": len(delivered), "failed": len(waiting) - len(delivered)}
