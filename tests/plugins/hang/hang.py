"""Test ingress: a publish that never returns."""
import asyncio


def __init__(hub):
    hub.ingress.hang.ACCT = ["hang"]
    hub.ingress.hang.STARTED = 0


async def publish(hub, ctx, routing_key: str, body: bytes):
    hub.ingress.hang.STARTED += 1
    await asyncio.Event().wait()
