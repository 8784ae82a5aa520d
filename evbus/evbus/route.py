"""
Routing: which lanes an event goes to; the hub face of :mod:`evbus.route`.

From the contexts of ``hub.evbus.acct.profiles`` (checked by
``hub.evbus.contexts``) ``router()`` makes one :class:`~evbus.lane.Lane` per
(ingress plugin, acct profile), once, with the settings it is handed, and
the :class:`~evbus.route.Router` that matches an event's profile name against
their profile name patterns once per distinct event profile (then a dict
lookup). Failures of the lanes are reported by ``hub.evbus.report``; the
lanes are closed by ``hub.evbus.shutdown``.
"""
import inspect
from collections.abc import Mapping
from typing import Any

import dict_tools.data as data

from evbus import cloudevents
from evbus.exc import IngressPluginError
from evbus.exc import ProfileError
from evbus.lane import Destination
from evbus.lane import Lane
from evbus.route import Router
from evbus.route import RouteState

# Keys of a contexts dict that are settings, not providers
SETTING_KEYS = ("match_plugin",)


def __init__(hub):
    hub.evbus.route.STATE = RouteState()


def match_function(hub, name: str):
    """
    :param name: A match plugin name
    :return: Its ``find(name, pattern)`` function
    :raises ConfigError: when no such match plugin is loaded
    """
    return hub.evbus.settings.plugin("match", name).find


def router(hub, contexts: Any, connect: bool = True) -> Router:
    """
    The router of a contexts dict: made (and checked) on first use, then reused.

    :param contexts: The output of ``hub.evbus.acct.profiles``
    :param connect: Start the lanes of plugins that connect, so that they connect now
    :raises ConfigError: for malformed contexts, ingress plugins or match plugin
    """
    state: RouteState = hub.evbus.route.STATE
    found = state.routers.get(id(contexts))
    if found is not None and found.contexts is contexts:
        return found
    settings = hub.evbus.settings.apply()
    match_name = hub.match.PLUGIN
    if isinstance(contexts, Mapping) and contexts.get("match_plugin"):
        match_name = contexts["match_plugin"]
    find = hub.evbus.route.match_function(match_name)
    hub.evbus.contexts.ingress_plugins()
    on_failure = hub.evbus.report.failure_handler(contexts)
    policy = settings.retry_policy
    spool = hub.evbus.spool.current()
    on_settled = spool.settled if spool is not None else None

    def warn(message: str):
        hub.log.warning(hub.evbus.MASK.text(message), extra={"evbus_internal": True})

    capture = state.capture
    lanes = []
    for plugin_name, provider, name, profile in hub.evbus.contexts.destinations(contexts):
        try:
            find("", name)
        except Exception as e:
            raise ProfileError(provider, name, f"the name is not a valid {match_name} pattern: {e}") from None
        hub.evbus.MASK.learn(profile)
        ctx = data.NamespaceDict(acct=data.NamespaceDict(profile))
        lane = Lane(
            plugin=plugin_name,
            provider=provider,
            profile=name,
            ctx=ctx,
            destination=(
                hub.evbus.route.destination(plugin_name) if capture is None else capture(plugin_name, provider, name)
            ),
            on_failure=on_failure,
            policy=policy,
            window=settings.max_in_flight,
            log=warn,
            limit=settings.lane_size,
            when_full=settings.lane_full,
            on_settled=on_settled,
            envelope=hub.evbus.route.envelope(plugin_name, provider, name, ctx),
            telemetry=hub.evbus.telemetry.lane(plugin_name, name, ctx),
        )
        _warn_unchecked_hostname(hub, lane, warn)
        if connect and lane.destination.open is not None:
            # Connect now: a broker that cannot be reached is reported at start
            lane.start()
        lanes.append(lane)
    new_router = Router(contexts, lanes, find, state)
    state.routers[id(contexts)] = new_router
    return new_router


def _warn_unchecked_hostname(hub, lane: Lane, warn):
    """
    Say, once per profile when the bus starts, that its TLS connection does
    not check the server's host name: the plugin's ``unchecked_hostname(ctx)``
    names the option that turns it off.
    """
    unchecked = getattr(hub.ingress[lane.plugin], "unchecked_hostname", None)
    option = unchecked(lane.ctx) if unchecked is not None else None
    if option:
        warn(
            f"TLS hostname checking is off for {lane.where} of acct provider '{lane.provider}' ({option}): "
            f"any server with a certificate that a trusted CA signed, for whatever host name, is taken for it"
        )


def envelope(hub, plugin_name: str, provider: str, name: str, ctx: Any) -> cloudevents.Envelope | None:
    """
    The envelope of a profile's events (``envelope: cloudevents``), for the
    protocol binding the plugin names with ``binding(ctx)``.

    :param plugin_name: The ingress plugin
    :param provider: The acct provider
    :param name: The profile name
    :param ctx: The lane's ctx; ``ctx.acct`` is the profile
    :return: The envelope, or None to send the events as they are
    :raises ProfileError: for envelope options that evbus or the plugin cannot use
    """
    plugin = hub.ingress[plugin_name]

    def binding() -> cloudevents.Binding | None:
        if not hasattr(plugin, "binding"):
            return None
        return plugin.binding(ctx)

    return cloudevents.envelope(ctx.acct, binding, plugin_name, provider, name)


def running_lanes(hub) -> list[Lane]:
    """
    :return: The lanes of the routers in use (not those stopped)
    """
    return hub.evbus.route.STATE.running_lanes()


def all_lanes(hub) -> list[Lane]:
    """
    :return: Every lane, running or stopped since the last start
    """
    return hub.evbus.route.STATE.all_lanes()


# publish(hub, ctx, routing_key, body): the parameters of the ingress contract
SEED_PARAMS = ["ctx", "routing_key", "body"]


def _params(func) -> list[str]:
    signature = getattr(func, "signature", None)
    if signature is None:
        signature = inspect.signature(func)
    return [p for p in signature.parameters if p != "hub"]


def destination(hub, plugin_name: str) -> Destination:
    """
    Adapt an ingress plugin to what a lane calls, once per lane.

    In order of preference:

    - ``send(ctx, routing_key, event)``: a coroutine that hands the event to
      the broker client in order and returns an awaitable of its confirmation
      (pipelined; the plugins of evbus's brokers); with it, optionally,
      ``send_many(ctx, events)``, that hands off several ``(routing_key,
      event)`` at once (see :class:`~evbus.lane.Destination`);
    - ``publish_nowait(ctx, routing_key, body)``: never waits (in-process queues);
    - ``publish(ctx, routing_key, body)``: the ingress contract;
    - ``publish(ctx, body)`` of pop-evbus 6.x and later (routing key in
      ``ctx.acct.routing_key``).

    ``open(ctx)``, ``close(ctx)``, ``describe(ctx)`` and ``retriable(error)``
    are used where the plugin has them.

    :raises IngressPluginError: when the plugin has none of these
    """
    plugin = hub.ingress[plugin_name]
    direct = hub.evbus.broker.direct
    hooks = {
        name: direct(getattr(plugin, name))
        for name in ("open", "close", "describe", "retriable")
        if hasattr(plugin, name)
    }

    send = getattr(plugin, "send", None)
    if send is not None and _params(send) == ["ctx", "routing_key", "event"]:
        send_many = getattr(plugin, "send_many", None)
        if send_many is not None and _params(send_many) == ["ctx", "events"]:
            hooks["send_many"] = direct(send_many)
        return Destination(send=direct(send), pipelined=True, **hooks)

    nowait = getattr(plugin, "publish_nowait", None)
    if nowait is not None and _params(nowait) == SEED_PARAMS:
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
