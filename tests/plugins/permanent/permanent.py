"""Test ingress: fails with an error that says a retry cannot help."""


class MessageTooLarge(Exception):
    retriable = False


def __init__(hub):
    hub.ingress.permanent.ACCT = ["permanent"]
    hub.ingress.permanent.CALLS = 0


async def publish(hub, ctx, routing_key: str, body: bytes):
    hub.ingress.permanent.CALLS += 1
    raise MessageTooLarge("message too large")
