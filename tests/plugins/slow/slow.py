"""Test ingress: takes ``ctx.acct.delay`` seconds per event, then records it."""
import asyncio


def __init__(hub):
    hub.ingress.slow.ACCT = ["slow"]
    hub.ingress.slow.SEEN = []


async def publish(hub, ctx, routing_key: str, body: bytes):
    await asyncio.sleep(ctx.acct.get("delay", 0.05))
    hub.ingress.slow.SEEN.append((routing_key, body))
