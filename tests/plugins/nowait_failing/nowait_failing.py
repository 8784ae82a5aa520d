"""Test ingress that never waits (publish_nowait) and fails on bodies that are odd numbers."""
import json


def __init__(hub):
    hub.ingress.nowait_failing.ACCT = ["nowait_failing"]
    hub.ingress.nowait_failing.SEEN = []


def publish_nowait(hub, ctx, routing_key: str, body: bytes):
    if json.loads(body) % 2:
        raise ValueError(f"odd body {body!r}")
    hub.ingress.nowait_failing.SEEN.append(json.loads(body))


async def publish(hub, ctx, routing_key: str, body: bytes):
    hub.ingress.nowait_failing.publish_nowait(ctx, routing_key, body)
