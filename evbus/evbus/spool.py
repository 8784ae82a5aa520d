"""
The durable spool on the hub: the hub face of :mod:`evbus.spool`.

``current()`` is the spool the config names (options ``spool`` and
``spool_sync``), opened when first asked for and again when the config
names another; the broker stores the events it queues there, the lanes
tell it what they settled.
"""
from evbus.spool import Spool


def __init__(hub):
    # The spool in use, or None
    hub.evbus.spool.CURRENT = None


def current(hub) -> Spool | None:
    """
    :return: The spool of the loaded config (opened now if it was not), or None: no spool
    :raises ConfigError: for a ``spool_sync`` that is no choice
    """
    settings = hub.evbus.settings.read()
    spool = hub.evbus.spool.CURRENT
    if spool is not None and spool.path == settings.spool and spool.sync == settings.spool_sync:
        return spool
    if spool is None and not settings.spool:
        return None
    if spool is not None:
        spool.close()
    hub.evbus.spool.CURRENT = spool = Spool(settings.spool, settings.spool_sync) if settings.spool else None
    return spool
