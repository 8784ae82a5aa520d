"""
Test ingress that pipelines like a broker client: send() hands the event off
and returns a future the "broker" resolves a moment later, in order. A body
listed in FAIL_ONCE has its confirmation fail the first time it is sent.
"""
import asyncio


def __init__(hub):
    hub.ingress.pipe.ACCT = ["pipe"]
    hub.ingress.pipe.FAIL_ONCE = set()
    hub.ingress.pipe.CONFIRMED = []
    hub.ingress.pipe.MAX_IN_FLIGHT = 0
    hub.ingress.pipe.IN_FLIGHT = 0
    hub.ingress.pipe.OPENED = []
    hub.ingress.pipe.CLOSED = []


async def open(hub, ctx):
    if ctx.acct.get("url"):
        raise ConnectionRefusedError(f"connect to {ctx.acct.url} refused")
    hub.ingress.pipe.OPENED.append(ctx.acct.get("name"))


async def close(hub, ctx):
    hub.ingress.pipe.CLOSED.append(ctx.acct.get("name"))


def describe(hub, ctx) -> str:
    return "pipe://127.0.0.1:1"


async def send(hub, ctx, routing_key: str, event):
    mod = hub.ingress.pipe
    receipt = asyncio.get_running_loop().create_future()
    mod.IN_FLIGHT += 1
    mod.MAX_IN_FLIGHT = max(mod.MAX_IN_FLIGHT, mod.IN_FLIGHT)

    def confirm():
        mod.IN_FLIGHT -= 1
        if receipt.done():
            return
        if event.body in mod.FAIL_ONCE:
            mod.FAIL_ONCE.discard(event.body)
            receipt.set_exception(ConnectionError(f"nack for {event.body!r}"))
        else:
            mod.CONFIRMED.append(event.body)
            receipt.set_result(None)

    asyncio.get_running_loop().call_later(0.001, confirm)
    return receipt


async def publish(hub, ctx, routing_key: str, body: bytes):
    raise NotImplementedError("the lanes use send()")
