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
import difflib
from collections.abc import Mapping
from typing import Any

import dict_tools.data as data

from evbus import cloudevents
from evbus.exc import ProfileError
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
    after_settled = spool.collect if spool is not None else None

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
                hub.evbus.adapt.destination(plugin_name) if capture is None else capture(plugin_name, provider, name)
            ),
            on_failure=on_failure,
            policy=policy,
            window=settings.max_in_flight,
            log=warn,
            limit=settings.lane_size,
            when_full=settings.lane_full,
            on_settled=on_settled,
            after_settled=after_settled,
            envelope=hub.evbus.route.envelope(plugin_name, provider, name, ctx),
            telemetry=hub.evbus.telemetry.lane(plugin_name, name, ctx),
        )
        _warn_unchecked_hostname(hub, lane, warn)
        _warn_unknown_keys(hub, lane, warn)
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


# Keys of every profile, whatever its plugin: read by the lanes and the envelopes
COMMON_PROFILE_KEYS = frozenset(("routing_key", "envelope", "cloudevents"))


def _warn_unknown_keys(hub, lane: Lane, warn):
    """
    Say, once per profile when the bus starts, which of its keys its plugin
    does not know (a typo: ``conection`` would otherwise leave the profile
    connecting to the client's default server): plugins that declare their
    keys (``PROFILE_KEYS``) only.
    """
    known = getattr(hub.ingress[lane.plugin], "PROFILE_KEYS", None)
    if known is None:
        return
    known = known | COMMON_PROFILE_KEYS
    for key in lane.ctx.acct:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (it knows {', '.join(sorted(known))})"
        warn(
            f"The acct profile '{lane.profile}' of provider '{lane.provider}' has a key that the "
            f"{lane.plugin} ingress does not know, and ignores: '{key}'{hint}"
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
