"""
The contract of a broker plugin: an ingress plugin that holds a connection
per profile and pipelines its events (evbus's ``kafka``, ``pika``, ``nats``,
``redis`` and ``mqtt``). A plugin takes it on by naming it::

    __contracts__ = ["broker"]

pop then checks, when the plugin loads, that it has each function below
with these parameter names and annotations (and async where these are
async); a plugin that does not fails to load, its file and function named.
Lanes call ``send`` of such a plugin without looking at its signature
(:func:`evbus.evbus.adapt.destination`). The plugin still offers
``publish(hub, ctx, routing_key, body)`` (``contracts/init.py``);
:mod:`evbus.connection` has what the five share (the holder of a
connection, the registry, ``publish`` built on ``send``).

A plugin that can hand several events off at once names ``batches`` too
(``contracts/batches.py``).
"""


async def sig_open(hub, ctx):
    """
    Connect the profile now (at start), so that a broker that cannot be
    reached is reported at once; profiles with the same connection share it.

    :param ctx: The lane's ctx; ``ctx.acct`` is the profile
    """


async def sig_close(hub, ctx):
    """
    Close the profile's connection (at stop); the lane has already waited
    for every confirmation.
    """


async def sig_send(hub, ctx, routing_key: str, event):
    """
    Hand one event to the broker client, in order (connecting first when
    the connection is not ready), and return an awaitable of the broker's
    confirmation; a lane keeps up to ``max_in_flight`` unconfirmed.

    :param routing_key: The event's routing key (the profile's when it has none)
    :param event: The :class:`evbus.types.Event`
    """


def sig_describe(hub, ctx):
    """:return: The broker's address for messages, ``scheme://host:port``, without credentials"""


def sig_retriable(hub, error: BaseException):
    """
    :return: Whether a retry can help after ``error``: False for what the
        broker refused for good (a login, a permission, a message too
        large), and for an error whose class says so (``retriable = False``)
    """


async def sig_listen(hub, ctx, routing_key: str | None = None):
    """
    ``evbus listen``: what arrives at the profile's destination from now on,
    on a connection of its own.

    :param routing_key: The destination, overriding the profile's
    :return: An async iterator of (destination, body)
    :raises ListenError: saying what went wrong (``cannot connect: ...``, ``lost the connection: ...``)
    """
    yield
