"""
The in-process ingress: each routing key has an ``asyncio.Queue`` of event
bodies (bytes), for tests and for consumers in the same process.

.. code-block:: yaml

    internal:
      default: {}
      my_profile:
        routing_key: my_routing_key1
      "idem-*":
        routing_key: idem-events

An event's own routing key wins over the profile's; with neither, the queue
is the one of routing key ``None``. Consume with::

    queue = await hub.ingress.internal.get("my_routing_key1")
    body = await queue.get()
"""
import asyncio


def __init__(hub):
    hub.ingress.internal.QUEUE = {}
    hub.ingress.internal.ACCT = ["internal"]


async def get(hub, routing_key: str | None = None) -> asyncio.Queue:
    """
    :param routing_key: The routing key
    :return: Its queue, made if needed
    """
    queues = hub.ingress.internal.QUEUE
    channel = queues.get(routing_key)
    if channel is None:
        channel = queues[routing_key] = asyncio.Queue()
    return channel


async def publish(hub, ctx, routing_key: str, body: bytes):
    """
    :param ctx: ``ctx.acct`` is the profile's data
    :param routing_key: The queue to put the body on
    :param body: The serialized event body
    """
    channel = hub.ingress.internal.QUEUE.get(routing_key)
    if channel is None:
        channel = await hub.ingress.internal.get(routing_key)
    channel.put_nowait(body)
