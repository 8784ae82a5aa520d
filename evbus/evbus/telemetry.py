"""
OpenTelemetry on the hub: ``resolve()`` looks once, when the bus starts,
whether the application configured tracer and meter providers, and sets up
what evbus then emits (:mod:`evbus.telemetry`): the context ``put`` keeps on
each event, the spans and counts of each lane, the gauges of the queues.

evbus uses OpenTelemetry's global providers (``trace.set_tracer_provider``,
``metrics.set_meter_provider``), or the ones a program assigns to
``hub.evbus.TRACER_PROVIDER`` and ``hub.evbus.METER_PROVIDER`` before
``start()``.
"""
from evbus import hubfunc
from evbus import telemetry


def __init__(hub):
    # The providers evbus emits to; None: OpenTelemetry's global ones
    hub.evbus.TRACER_PROVIDER = None
    hub.evbus.METER_PROVIDER = None
    # The Telemetry of the providers found by the last resolve(), or None
    hub.evbus.telemetry.CURRENT = None


def resolve(hub) -> telemetry.Telemetry | None:
    """
    Find the providers to emit to and set up the lanes made from now on for
    them (the listener hands the result to ``hub.evbus.broker.use_telemetry``
    for ``put``): with none configured, lanes get no telemetry.

    :return: The telemetry in use, or None
    """
    tracer_provider, meter_provider = telemetry.configured(
        hub.evbus.TRACER_PROVIDER, hub.evbus.METER_PROVIDER
    )
    current = hub.evbus.telemetry.CURRENT
    if tracer_provider is None and meter_provider is None:
        current = None
    elif current is None or not current.uses(tracer_provider, meter_provider):
        current = telemetry.Telemetry(
            tracer_provider,
            meter_provider,
            queue_depth=lambda: hub.evbus.BUS.qsize(),
            lanes=hub.evbus.route.running_lanes,
            mask=hub.evbus.MASK.text,
        )
        if not current.active:
            current = None
    hub.evbus.telemetry.CURRENT = current
    return current


def lane(hub, plugin_name: str, acct_profile: str, ctx) -> telemetry.LaneTelemetry | None:
    """
    :param plugin_name: The lane's ingress plugin
    :param acct_profile: The lane's profile
    :param ctx: The ctx the lane hands the plugin
    :return: The spans and counts of a new lane, or None when there is no telemetry
    """
    current = hub.evbus.telemetry.CURRENT
    if current is None:
        return None
    plugin = hub.ingress[plugin_name]
    messaging = None
    if hasattr(plugin, "messaging"):
        hook = hubfunc.direct(hub, plugin.messaging)

        def messaging(routing_key: str | None) -> dict:
            return hook(ctx, routing_key)

    return current.lane(plugin_name, acct_profile, messaging, headers=carries_headers(hub, plugin_name, ctx))


def carries_headers(hub, plugin_name: str, ctx) -> bool:
    """
    :return: Whether the messages of a profile carry headers: the plugin names a
        protocol binding for it (``binding(ctx)``, as for CloudEvents)
    """
    plugin = hub.ingress[plugin_name]
    if not hasattr(plugin, "binding"):
        return False
    try:
        return plugin.binding(ctx) is not None
    except Exception:  # a profile the plugin cannot use fails its publishes, and says why there
        return False
