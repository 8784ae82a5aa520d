"""
Test ingress that names no broker contract and misspells a parameter of
``send``: an error at start, not a silent fallback to ``publish``.
"""


def __init__(hub):
    hub.ingress.misspelt.ACCT = ["misspelt"]


async def send(hub, ctx, routing_key: str, evnt):
    raise AssertionError("never called")


async def publish(hub, ctx, routing_key: str, body: bytes):
    raise AssertionError("never called")
