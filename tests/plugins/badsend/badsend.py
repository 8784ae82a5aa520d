"""
Test ingress that names the broker contract and misspells a parameter of
``send``: pop refuses it when it loads.
"""

__contracts__ = ["broker"]


def __init__(hub):
    hub.ingress.badsend.ACCT = ["badsend"]


async def open(hub, ctx):
    pass


async def close(hub, ctx):
    pass


async def send(hub, ctx, routing_key: str, evnt):
    raise AssertionError("never called: the plugin does not load")


def describe(hub, ctx):
    return "badsend://127.0.0.1:1"


def retriable(hub, error: BaseException):
    return True


async def listen(hub, ctx, routing_key: str | None = None):
    yield


async def publish(hub, ctx, routing_key: str, body: bytes):
    raise AssertionError("never called: the plugin does not load")
