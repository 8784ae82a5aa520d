"""
Adapting ingress plugins to lanes: what a lane calls to deliver an event
to a plugin (a :class:`~evbus.lane.Destination`), made once per lane.

A broker plugin names the ``broker`` contract (``ingress/contracts/broker.py``;
``batches`` too when it offers ``send_many``): pop checked its functions
when it loaded, so the lane calls them as the contract declares. A plugin
that names no broker contract (an app-merged one, of either pop-evbus
generation) is adapted from what it offers (``ingress/contracts/init.py``).
"""
import functools
import inspect

import dict_tools.data as data

from evbus import hubfunc
from evbus.exc import IngressPluginError
from evbus.lane import Destination

# The contracts (ingress/contracts/) that declare send, and send_many
BROKER = "broker"
BATCHES = "batches"
# publish(hub, ctx, routing_key, body): the parameters of the ingress contract
SEED_PARAMS = ["ctx", "routing_key", "body"]
# The optional functions of a plugin without the broker contract, and their parameters
OPTIONAL = {
    "send": ["ctx", "routing_key", "event"],
    "send_many": ["ctx", "events"],
    "publish_nowait": SEED_PARAMS,
}


def _params(func) -> list[str]:
    signature = getattr(func, "signature", None)
    if signature is None:
        signature = inspect.signature(func)
    return [p for p in signature.parameters if p != "hub"]


def contracts(hub, plugin_name: str) -> list[str]:
    """:return: The contracts an ingress plugin names (``__contracts__``)"""
    named = getattr(hub.ingress[plugin_name], "__contracts__", None) or []
    if isinstance(named, str):  # as pop reads it: "broker,batches"
        named = named.split(",")
    return [name.strip() for name in named]


def optional(hub, plugin_name: str, name: str):
    """
    An optional function of a plugin that names no broker contract, checked
    against ``ingress/contracts/init.py``.

    :return: The function, or None when the plugin has none
    :raises IngressPluginError: naming the plugin and the function, when its parameters are not the expected ones
    """
    func = getattr(hub.ingress[plugin_name], name, None)
    if func is None:
        return None
    params = _params(func)
    if params != OPTIONAL[name]:
        raise IngressPluginError(
            f"ingress.{plugin_name}.{name} takes ({', '.join(params)}); expected "
            f"{name}(hub, {', '.join(OPTIONAL[name])}) (see evbus/ingress/contracts/init.py; "
            f"a plugin that names the broker contract, __contracts__ = ['broker'], is checked when it loads)"
        )
    return func


def destination(hub, plugin_name: str) -> Destination:
    """
    Adapt an ingress plugin to what a lane calls, once per lane.

    In order of preference:

    - ``send(ctx, routing_key, event)``: a coroutine that hands the event to
      the broker client in order and returns an awaitable of its confirmation
      (pipelined): that of a plugin naming the broker contract, or one of the
      same parameters; with it, optionally, ``send_many(ctx, events)``, that
      hands off several ``(routing_key, event)`` at once (the ``batches``
      contract; see :class:`~evbus.lane.Destination`);
    - ``publish_nowait(ctx, routing_key, body)``: never waits (in-process queues);
    - ``publish(ctx, routing_key, body)``: the ingress contract;
    - ``publish(ctx, body)`` of pop-evbus 6.x and later (routing key in
      ``ctx.acct.routing_key``).

    ``open(ctx)``, ``close(ctx)``, ``describe(ctx)`` and ``retriable(error)``
    are used where the plugin has them.

    :raises IngressPluginError: when the plugin has none of these, or a
        ``send``, ``send_many`` or ``publish_nowait`` of other parameters
    """
    plugin = hub.ingress[plugin_name]
    direct = functools.partial(hubfunc.direct, hub)
    hooks = {
        name: direct(getattr(plugin, name))
        for name in ("open", "close", "describe", "retriable")
        if hasattr(plugin, name)
    }

    named = hub.evbus.adapt.contracts(plugin_name)
    if BROKER in named:
        if BATCHES in named:
            hooks["send_many"] = direct(plugin.send_many)
        return Destination(send=direct(plugin.send), pipelined=True, **hooks)
    send = hub.evbus.adapt.optional(plugin_name, "send")
    if send is not None:
        send_many = hub.evbus.adapt.optional(plugin_name, "send_many")
        if send_many is not None:
            hooks["send_many"] = direct(send_many)
        return Destination(send=direct(send), pipelined=True, **hooks)

    nowait = hub.evbus.adapt.optional(plugin_name, "publish_nowait")
    if nowait is not None:
        call_nowait = direct(nowait)

        def send_nowait(ctx, routing_key, event):
            call_nowait(ctx, routing_key, event.body)

        return Destination(send=send_nowait, inline=True, publish_nowait=call_nowait, **hooks)

    publish = plugin.publish
    params = _params(publish)
    call = direct(publish)
    if not (inspect.iscoroutinefunction(publish) or inspect.iscoroutinefunction(getattr(publish, "func", None))):
        # A synchronous publish: its result is awaited only when it is awaitable
        sync_call = call

        def call(*args, **kwargs):
            ret = sync_call(*args, **kwargs)
            return ret if hasattr(ret, "__await__") else None

    if params == SEED_PARAMS:

        def send_seed(ctx, routing_key, event):
            return call(ctx, routing_key, event.body)

        return Destination(send=send_seed, **hooks)
    if "routing_key" in params and "ctx" in params and "body" in params:

        def send_keywords(ctx, routing_key, event):
            return call(ctx=ctx, routing_key=routing_key, body=event.body)

        return Destination(send=send_keywords, **hooks)
    if "body" in params and "ctx" in params:

        def send_modern(ctx, routing_key, event):
            if routing_key != ctx.acct.get("routing_key"):
                ctx = data.NamespaceDict(acct=data.NamespaceDict(ctx.acct, routing_key=routing_key))
            return call(ctx=ctx, body=event.body)

        return Destination(send=send_modern, **hooks)
    raise IngressPluginError(
        f"ingress.{plugin_name}.publish takes ({', '.join(params)}); expected "
        f"publish(hub, ctx, routing_key, body) or publish(hub, ctx, body)"
    )
