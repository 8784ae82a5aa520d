"""
Test ingress: an ``open`` that loses the cancel meant for it, as
``asyncio.wait_for`` does on Python 3.11 when the call it waits for
completes in the same turn (nats-py and redis-py connect that way).

``ctx.acct.swallow`` is how many cancels it loses (default 1); ``connect``
how long each connection step takes. ``publish`` records what it gets.
A test ends what is left of an ``open`` with :func:`release`.
"""
import asyncio


def __init__(hub):
    hub.ingress.swallow.ACCT = ["swallow"]
    hub.ingress.swallow.SWALLOWED = 0
    hub.ingress.swallow.OPENED = 0
    hub.ingress.swallow.CLOSED = 0
    hub.ingress.swallow.SEEN = []
    hub.ingress.swallow.OPENING = []
    hub.ingress.swallow.RELEASED = False


async def open(hub, ctx):
    left = ctx.acct.get("swallow", 1)
    hub.ingress.swallow.OPENING.append(asyncio.current_task())
    while not hub.ingress.swallow.RELEASED:
        try:
            await asyncio.sleep(ctx.acct.get("connect", 0.2))
            break
        except asyncio.CancelledError:
            if left <= 0:
                raise
            left -= 1
            hub.ingress.swallow.SWALLOWED += 1  # "connected in the same turn": the cancel is lost
    hub.ingress.swallow.OPENED += 1


async def close(hub, ctx):
    hub.ingress.swallow.CLOSED += 1


async def publish(hub, ctx, routing_key: str, body: bytes):
    hub.ingress.swallow.SEEN.append(body)


async def release(hub):
    """End every open() still running: its cancels are no longer lost."""
    hub.ingress.swallow.RELEASED = True
    for task in hub.ingress.swallow.OPENING:
        task.cancel()
    await asyncio.gather(*hub.ingress.swallow.OPENING, return_exceptions=True)
