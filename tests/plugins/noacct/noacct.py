"""Test ingress: declares no ACCT list."""


async def publish(hub, ctx, routing_key: str, body: bytes):
    pass
