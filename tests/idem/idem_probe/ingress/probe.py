"""
An ingress plugin that records, when the bus stops, what arrived on the
internal ingress of idem's process: the queue of every routing key, with its
bodies, written as JSON to the file its profile names, and the loop's class.

.. code-block:: yaml

    probe:
      record:
        path: /tmp/arrived.json

The profile's name matches no event: the plugin gets none itself, only a lane
that is opened at start and closed at stop, after every lane has drained.
"""
import asyncio
import json
import pathlib


def __init__(hub):
    hub.ingress.probe.ACCT = ["probe"]


async def open(hub, ctx):
    """Nothing to connect to: the lane calls close() at stop because open() exists."""


async def publish(hub, ctx, routing_key: str, body: bytes):
    """Never called: no event profile matches the probe's profile."""


async def close(hub, ctx):
    """
    Write what the internal ingress holds, per routing key, as decoded JSON
    bodies (without taking anything from its queues), and the loop's class.
    """
    loop = type(asyncio.get_running_loop())
    record = {
        "loop": f"{loop.__module__}.{loop.__qualname__}",
        "queues": {
            str(routing_key): [json.loads(body) for body in list(queue._queue)]
            for routing_key, queue in hub.ingress.internal.QUEUE.items()
        },
    }
    pathlib.Path(ctx.acct.path).write_text(json.dumps(record, indent=1))
