"""Test ingress written for pop-evbus 6.x and later: publish(hub, ctx, body), no annotations."""


def __init__(hub):
    hub.ingress.modern.ACCT = ["modern"]
    hub.ingress.modern.SEEN = []


async def publish(hub, ctx, body):
    hub.ingress.modern.SEEN.append((ctx.acct.get("routing_key"), body))
