"""
Routing: which lanes an event goes to.

From the contexts of ``hub.evbus.acct.profiles`` a :class:`Router` makes one
:class:`~evbus.lane.Lane` per (ingress plugin, acct profile), once. Matching an
event's profile name against the profile name patterns happens once per
distinct event profile and is cached, so the hot path is a dict lookup.
"""
import asyncio
import inspect
from collections.abc import Mapping
from typing import Any

import dict_tools.data as data

from evbus import cloudevents
from evbus.exc import ConfigError
from evbus.exc import EvbusTimeoutError
from evbus.exc import IngressPluginError
from evbus.exc import ProfileError
from evbus.exc import PublishError
from evbus.lane import CLOSE_GRACE
from evbus.lane import Destination
from evbus.lane import Lane
from evbus.report import Repeats
from evbus.route import Router
from evbus.route import RouteState

# Keys of a contexts dict that are settings, not providers
SETTING_KEYS = ("match_plugin",)


def __init__(hub):
    hub.evbus.route.STATE = RouteState()
    # Failures of a destination that is down are written once, then counted
    hub.evbus.route.STATE.repeats = Repeats()


def match_function(hub, name: str):
    """
    :param name: A match plugin name
    :return: Its ``find(name, pattern)`` function
    :raises ConfigError: when no such match plugin is loaded
    """
    return hub.evbus.settings.plugin("match", name).find


def error_callback(hub):
    """
    :return: The function that ``error_callback_ref`` names, or None
    :raises ConfigError: when the reference names nothing callable on the hub
    """
    ref = hub.evbus.settings.read().error_callback_ref
    if not ref:
        return None
    try:
        func = hub[ref]
    except Exception:
        func = None
    if not callable(func):
        raise ConfigError(f"error_callback_ref '{ref}' names no function on the hub")
    return func


def ingress_plugins(hub) -> dict[str, tuple[Any, list[str]]]:
    """
    Every loaded ingress plugin and the acct providers it accepts.

    :return: {plugin name: (plugin, [provider, ...])}
    :raises IngressPluginError: for a plugin that declares no ACCT list or has no publish
    """
    plugins = {}
    for plugin in hub.ingress:
        name = plugin.__name__
        if name == "init":
            continue
        providers = getattr(plugin, "ACCT", None)
        if isinstance(providers, str):
            providers = [providers]
        if not providers or not isinstance(providers, (list, tuple, set)):
            raise IngressPluginError(
                f"Ingress plugin '{name}' declares no ACCT providers. Declare the acct "
                f"providers it accepts in its __init__:\n"
                f"    def __init__(hub):\n"
                f"        hub.ingress.{name}.ACCT = ['{name}']"
            )
        if not hasattr(plugin, "publish"):
            raise IngressPluginError(
                f"Ingress plugin '{name}' has no publish function: "
                f"async def publish(hub, ctx, routing_key: str, body: bytes)"
            )
        plugins[name] = (plugin, list(providers))
    return plugins


def destinations(hub, contexts: Mapping) -> list[tuple[str, str, str, Any]]:
    """
    Check contexts and list every destination in them.

    :param contexts: {provider: [{profile name: profile data}, ...]} (a single dict per provider is accepted too)
    :return: [(plugin name, provider, profile name, profile data), ...]
    :raises ProfileError: for a provider or profile of the wrong shape
    :raises IngressPluginError: for an ingress plugin without ACCT
    """
    if contexts is None:
        contexts = {}
    if not isinstance(contexts, Mapping):
        raise ConfigError(f"contexts must be a mapping of provider -> profiles, not {type(contexts).__name__}")
    plugins = hub.evbus.route.ingress_plugins()
    found = []
    for plugin_name, (_, providers) in plugins.items():
        for provider in providers:
            profiles = contexts.get(provider)
            if profiles is None:
                continue
            for name, profile in hub.evbus.route.entries(provider, profiles):
                found.append((plugin_name, provider, name, profile))
    return found


def entries(hub, provider: str, profiles: Any) -> list[tuple[str, Mapping]]:
    """
    Check the shape of one provider's profiles and list them.

    :param provider: The acct provider
    :param profiles: {profile name: data}, or a list of such mappings
    :return: [(profile name, profile data), ...]; empty data (None) becomes {}
    :raises ProfileError: naming provider and profile, for any other shape
    """
    if isinstance(profiles, Mapping):
        profiles = [profiles]
    if not isinstance(profiles, (list, tuple)):
        raise ProfileError(provider, None, f"expected {{profile name: data}}, got {type(profiles).__name__}")
    found = []
    for entry in profiles:
        if not isinstance(entry, Mapping):
            raise ProfileError(provider, None, f"expected {{profile name: data}}, got {type(entry).__name__}")
        for name, profile in entry.items():
            if not isinstance(name, str):
                raise ProfileError(provider, str(name), "a profile name must be a string")
            if profile is None:
                profile = {}
            if not isinstance(profile, Mapping):
                raise ProfileError(provider, name, f"profile data must be a mapping, got {type(profile).__name__}")
            found.append((name, profile))
    return found


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
    hub.evbus.route.ingress_plugins()
    on_failure = _failure_handler(hub, contexts)
    policy = settings.retry_policy
    spool = hub.evbus.spool.current()
    on_settled = spool.settled if spool is not None else None

    def warn(message: str):
        hub.log.warning(hub.evbus.MASK.text(message), extra={"evbus_internal": True})

    capture = state.capture
    lanes = []
    for plugin_name, provider, name, profile in hub.evbus.route.destinations(contexts):
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


def repeated(hub, lane: Lane, count: int):
    """Log the failures of a lane that were counted instead of written, in one line."""
    hub.log.error(
        f"{count} more event(s) failed to publish on {hub.evbus.MASK.text(lane.where)} the same way, "
        f"dead-lettered",
        extra={"evbus_internal": True},
    )


def unbind(hub):
    """
    A stop's deadline passed: no lane makes the listener wait for room any
    more, so that it reaches the stop; what the lanes cannot publish is given
    up when they close.
    """
    for found in list(hub.evbus.route.STATE.routers.values()):
        for lane in found.lanes:
            lane.unbound()


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


async def close(hub, timeout: float | None, grace: float = CLOSE_GRACE) -> int:
    """
    Wait until every lane has published what it holds, then stop the lanes.

    What a lane could not publish within ``timeout`` is failed with an
    :class:`~evbus.exc.EvbusTimeoutError`: logged, counted and handed to the
    error callback. The lanes then close together: each lane's task gets
    ``grace`` seconds to end and its plugin ``grace`` seconds to close, so
    this returns within ``timeout + 2 * grace`` seconds (and the time the
    error callback takes), whatever the plugins do.

    :param timeout: Seconds to wait for the lanes to drain; None waits as long as it takes
    :param grace: Seconds each lane's task gets to end, and its plugin to close
    :return: The number of events that were not delivered in time
    """
    state: RouteState = hub.evbus.route.STATE
    current = state.retire()
    if current and (timeout is None or timeout > 0):
        drained = [asyncio.ensure_future(lane.drained()) for lane in current]
        try:
            await asyncio.wait(drained, timeout=timeout)
        finally:
            for waiter in drained:
                waiter.cancel()
    error = EvbusTimeoutError("not delivered before the stop timeout ran out")
    # What the lanes give up now is written to the dead letters with one fsync, not one each
    with hub.evbus.deadletter.store().batch():
        results = await asyncio.gather(*(lane.close(error, grace) for lane in current), return_exceptions=True)
    undelivered = 0
    for lane, result in zip(current, results):
        counted = state.repeats.flush(lane)
        if counted:
            hub.evbus.route.repeated(lane, counted)
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            hub.log.error(
                f"Closing the lane to {hub.evbus.MASK.text(lane.where)} failed: {hub.evbus.MASK.exception(result)}",
                extra={"evbus_internal": True},
            )
        else:
            undelivered += result
    if undelivered:
        hub.log.error(
            f"The event bus stopped with {undelivered} event(s) undelivered",
            extra={"evbus_internal": True},
        )
    return undelivered


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


def _failure_handler(hub, contexts: Any):
    """
    Make the function a lane calls for an event it could not publish: it
    logs with plugin and profile, and calls the error callback, secrets masked.
    """
    masked_contexts = None

    async def on_failure(lane: Lane, event, error: BaseException, attempts: int):
        nonlocal masked_contexts
        mask = hub.evbus.MASK
        text = mask.exception(error)
        try:
            hub.evbus.deadletter.record(lane, event, error, attempts)
        except Exception as e:  # the failure is still logged and called back
            hub.log.error(f"Cannot write the dead letter of event {event.id}: {mask.exception(e)}",
                          extra={"evbus_internal": True})
        write, counted = hub.evbus.route.STATE.repeats.note(lane, type(error).__name__)
        if counted:
            hub.evbus.route.repeated(lane, counted)
        if write:
            tried = f"after {attempts} attempt(s)" if attempts else "without an attempt"
            hub.log.error(
                f"Event {event.id} (profile '{event.profile}') failed to publish on {mask.text(lane.where)} "
                f"{tried}, dead-lettered: {text}",
                extra={"evbus_internal": True},
            )
        try:
            callback = hub.evbus.route.error_callback()
        except Exception as e:
            hub.log.error(mask.exception(e), extra={"evbus_internal": True})
            return
        if callback is None:
            return
        if masked_contexts is None:
            masked_contexts = mask.data(contexts)
        exception = error
        if mask.text(str(error)) != str(error):
            exception = PublishError(mask.text(str(error)), type(error).__name__)
        error_data = {
            "exception": exception,
            "plugin": lane.plugin,
            "profile": event.profile,
            "acct_profile": lane.profile,
            "routing_key": event.routing_key if event.routing_key is not None else lane.routing_key,
            "event_id": event.id,
            "attempts": attempts,
            "body": event.body,
            "context": masked_contexts,
            "ctx": {"acct": mask.data(lane.ctx.acct)},
        }
        try:
            ret = callback(error_data)
            if inspect.isawaitable(ret):
                await ret
        except asyncio.CancelledError:
            raise
        except Exception as e:
            hub.log.error(
                f"The error callback failed: {mask.exception(e)}",
                extra={"evbus_internal": True},
            )

    return on_failure
