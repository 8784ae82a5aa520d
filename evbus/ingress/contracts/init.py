"""
The contract of ingress plugins.

An ingress plugin sets the acct providers it accepts in ``__init__`` and
publishes one event at a time::

    def __init__(hub):
        hub.ingress.my_plugin.ACCT = ["my_plugin"]

    async def publish(hub, ctx, routing_key: str, body: bytes):
        ...  # ctx.acct is the profile's data

Plugins written for pop-evbus 6.x and later, ``publish(hub, ctx, body)``
(routing key in ``ctx.acct.routing_key``), work unchanged: evbus reads the
signature once per lane and calls either form. That is why this contract
declares no ``sig_publish``: pop checks a signature's names and annotations
exactly and would reject one of the two generations. evbus checks the ACCT
list and the publish function when the bus starts
(:func:`evbus.evbus.contexts.ingress_plugins`).

A plugin whose client pipelines (evbus's broker plugins) offers ``async def
send(hub, ctx, routing_key, event)``: it hands the event to the client in
order and returns an awaitable of its confirmation; lanes then call it
instead of ``publish``, with up to ``max_in_flight`` events unconfirmed. It
may also offer ``async def send_many(hub, ctx, events)``: ``events`` is a
list of ``(routing_key, event)`` that it hands off at once, in order (one
batch per partition, say), returning one awaitable per event (for the first
ones only when it had to stop at an event; it raises when it could hand off
none). A lane calls it when more than one event waits, so that each event
is still confirmed, retried or dead-lettered on its own
(:class:`evbus.lane.Destination`).

A plugin whose publish can never wait (an in-process queue) may also offer
``def publish_nowait(hub, ctx, routing_key, body)``; lanes then call it
instead of ``publish`` and save a coroutine per event.

A plugin that connects over TLS may offer ``def unchecked_hostname(hub,
ctx) -> str | None``: the option of the profile that turns the checking of
the server's host name off (``tls check_hostname: false``), or None. evbus
logs it as a warning, once per profile, when the bus starts.

A plugin whose messages carry headers offers ``def binding(hub, ctx)``: the
CloudEvents protocol binding of a profile's messages (a
:class:`evbus.cloudevents.Binding`, or None where they carry none); its
``send(hub, ctx, routing_key, event)`` then adds ``event.headers`` (the
trace context, the CloudEvents attributes) to the message. ``def
messaging(hub, ctx, routing_key)`` gives the OpenTelemetry messaging
attributes of a message's span. Both are optional (see the README).

A plugin that holds a connection per profile and pipelines can name the
broker contract (``__contracts__ = ["broker"]``, ``contracts/broker.py``;
``"batches"`` too for ``send_many``): pop then checks its ``open``,
``close``, ``send``, ``describe``, ``retriable`` and ``listen`` when it
loads, and the lanes call ``send`` as the contract declares
(:func:`evbus.evbus.adapt.destination`). A plugin that names no broker
contract and offers ``send``, ``send_many`` or ``publish_nowait`` with other
parameters than above is an error when the bus starts, naming the plugin
and the function.
"""
