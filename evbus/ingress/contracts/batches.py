"""
The contract of a broker plugin that hands several events off at once
(evbus's ``kafka``: one batch per partition), named beside ``broker``::

    __contracts__ = ["broker", "batches"]

A lane calls ``send_many`` when more than one event waits, so that each
event is still confirmed, retried or dead-lettered on its own
(:class:`evbus.lane.Destination`).
"""


async def sig_send_many(hub, ctx, events: list):
    """
    Hand several events off at once, in order.

    :param events: ``(routing_key, event)`` of each event
    :return: One awaitable confirmation per event; for the first ones only
        when it had to stop at an event (it raises when it could hand off none)
    """
