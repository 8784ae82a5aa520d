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
      cloud:
        routing_key: cloud-events
        envelope: cloudevents     # bodies as CloudEvents in JSON (structured mode, see evbus.cloudevents)
        cloudevents:
          mode: structured

An event's own routing key wins over the profile's; with neither, the queue
is the one of routing key ``None``. Consume with::

    queue = await hub.ingress.internal.get("my_routing_key1")
    body = await queue.get()
"""
import asyncio

from evbus.broker import LeanQueue


def __init__(hub):
    plugin = hub.ingress.internal
    plugin.QUEUE = {}
    plugin.ACCT = ["internal"]
    # The lanes' hot path reads QUEUE from this plugin's namespace (a dict hit, where an
    # attribute of a pop plugin costs a detour), so that it still sees an assigned QUEUE
    contracted = plugin._attrs["publish_nowait"]
    plugin.publish_nowait = hub.evbus.broker.direct(contracted, _publish_nowait, vars(plugin))


async def get(hub, routing_key: str | None = None) -> asyncio.Queue:
    """
    :param routing_key: The routing key
    :return: Its queue, made if needed
    """
    queues = hub.ingress.internal.QUEUE
    channel = queues.get(routing_key)
    if channel is None:
        channel = queues[routing_key] = LeanQueue()
    return channel


async def publish(hub, ctx, routing_key: str, body: bytes):
    """
    :param ctx: ``ctx.acct`` is the profile's data
    :param routing_key: The queue to put the body on
    :param body: The serialized event body
    """
    hub.ingress.internal.publish_nowait(ctx, routing_key, body)


def publish_nowait(hub, ctx, routing_key: str, body: bytes):
    """
    The same as ``publish``, for callers that cannot await: it never waits.
    Lanes call it instead of ``publish`` (see the ingress contract).
    """
    _publish_nowait(vars(hub.ingress.internal), ctx, routing_key, body)


def _publish_nowait(namespace: dict, ctx, routing_key: str, body: bytes):
    queues = namespace["QUEUE"]
    channel = queues.get(routing_key)
    if channel is None:
        channel = queues[routing_key] = LeanQueue()
    channel.put_nowait(body)


async def listen(hub, ctx, routing_key: str | None = None):
    """
    What arrives on the internal queue of a routing key in this process
    (``evbus listen``).

    :return: An async iterator of (routing key, body)
    """
    key = routing_key if routing_key is not None else ctx.acct.get("routing_key")
    channel = await hub.ingress.internal.get(key)
    while True:
        yield key, await channel.get()
