"""Test ingress: every publish fails, with the profile's password in the error text."""


def __init__(hub):
    hub.ingress.failing.ACCT = ["failing"]
    hub.ingress.failing.CALLS = 0


async def publish(hub, ctx, routing_key: str, body: bytes):
    hub.ingress.failing.CALLS += 1
    raise ConnectionError(
        f"cannot reach amqp://{ctx.acct.get('user')}:{ctx.acct.get('password')}@127.0.0.1:1/ "
        f"with token {ctx.acct.get('token')}"
    )
