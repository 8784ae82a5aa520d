"""Test ingress: fails while FAIL_NEXT > 0 (each failure counts it down), then records."""


def __init__(hub):
    hub.ingress.flaky.ACCT = ["flaky"]
    hub.ingress.flaky.FAIL_NEXT = 0
    hub.ingress.flaky.SEEN = []


async def publish(hub, ctx, routing_key: str, body: bytes):
    if hub.ingress.flaky.FAIL_NEXT > 0:
        hub.ingress.flaky.FAIL_NEXT -= 1
        raise ConnectionResetError("connection reset by peer")
    hub.ingress.flaky.SEEN.append(body)
