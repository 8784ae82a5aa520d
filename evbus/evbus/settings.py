"""
Configuration, read in one place.

``apply()`` copies ``hub.OPT.evbus`` onto the hub once per loaded config:
the serialize plugin (``hub.serialize.PLUGIN`` and ``hub.evbus.SERIAL_PLUGIN``)
and the match plugin (``hub.match.PLUGIN``). A value the program assigned to
one of those attributes itself is kept. Unknown plugin names are a
:class:`~evbus.exc.ConfigError` here, where the config is first used.
"""
from collections.abc import Mapping
from typing import Any

from evbus.exc import ConfigError
from evbus.lane import RetryPolicy

DEFAULTS = {
    "serialize_plugin": "json",
    "serial_plugin": None,
    "match_plugin": "glob",
    "error_callback_ref": None,
    "stop_timeout": 30.0,
    "timeout": 5.0,
    "publish_timeout": 10.0,
    "retry_attempts": 0,
    "retry_seconds": 30.0,
    "retry_backoff": 0.1,
    "retry_backoff_max": 5.0,
    "max_in_flight": 1000,
    "queue_size": 0,
    "lane_size": 100000,
    "lane_full": "wait",
    "dead_letter_file": None,
    "spool": None,
    "spool_sync": "normal",
}


def __init__(hub):
    hub.evbus.settings.APPLIED = None


# Options that are numbers; environment variables arrive as text
NUMBERS = ("stop_timeout", "timeout", "publish_timeout", "retry_seconds", "retry_backoff", "retry_backoff_max")
COUNTS = ("max_in_flight",)
# Options that are sizes or caps: whole numbers, 0 for no bound
SIZES = ("queue_size", "lane_size", "retry_attempts")
CHOICES = {"lane_full": ("wait", "dead-letter"), "spool_sync": ("normal", "full", "off")}


def get(hub, name: str) -> Any:
    """
    :param name: An option of the evbus dyne
    :return: Its value from the loaded config (numbers as float), else its default
    :raises ConfigError: for a number option whose value is not a number
    """
    opt = hub.OPT.get("evbus") if hasattr(hub, "OPT") else None
    value = opt.get(name) if opt is not None else None
    # No option is a mapping: pop's hub.OPT answers an empty NullMap before the config is loaded
    if value is None or isinstance(value, Mapping):
        return DEFAULTS.get(name)
    if name in NUMBERS:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"The option {name} must be a number of seconds, not {value!r}") from None
        if value < 0:
            raise ConfigError(f"The option {name} must not be negative, not {value!r}")
    elif name in COUNTS or name in SIZES:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"The option {name} must be a whole number, not {value!r}") from None
        least = 1 if name in COUNTS else 0
        if value < least:
            raise ConfigError(f"The option {name} must be at least {least}, not {value!r}")
    elif name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"The option {name} must be one of {', '.join(CHOICES[name])}, not {value!r}")
    return value


def retry_policy(hub) -> RetryPolicy:
    """
    :return: The lanes' retry policy from the config
    """
    get = hub.evbus.settings.get
    return RetryPolicy(
        attempts=get("retry_attempts"),
        seconds=get("retry_seconds"),
        backoff=get("retry_backoff"),
        backoff_max=get("retry_backoff_max"),
        timeout=get("publish_timeout"),
    )


def apply(hub):
    """
    Apply the loaded config to the hub, once per ``hub.OPT``.

    :raises ConfigError: when a configured plugin name is unknown
    """
    opt = getattr(hub, "OPT", None)
    if hub.evbus.settings.APPLIED is opt:
        return
    evbus_opt = opt.get("evbus") if opt is not None else None
    if not evbus_opt:
        hub.evbus.settings.APPLIED = opt
        return
    serialize_name = evbus_opt.get("serial_plugin") or evbus_opt.get("serialize_plugin")
    # Keep a name the program set itself; otherwise take the config's
    if serialize_name and hub.serialize.PLUGIN == "json" and hub.evbus.SERIAL_PLUGIN in ("json", None):
        hub.serialize.PLUGIN = hub.evbus.SERIAL_PLUGIN = serialize_name
    match_name = evbus_opt.get("match_plugin")
    if match_name and hub.match.PLUGIN == "glob":
        hub.match.PLUGIN = match_name
    # Fail here, at load, for names that do not exist
    hub.evbus.broker.serializer()
    hub.evbus.route.match_function(hub.match.PLUGIN)
    for name in NUMBERS + COUNTS + SIZES + tuple(CHOICES):
        hub.evbus.settings.get(name)
    hub.evbus.broker.resize(hub.evbus.settings.get("queue_size"))
    hub.evbus.broker.open_spool(hub.evbus.settings.get("spool"), hub.evbus.settings.get("spool_sync"))
    # Only a config that passed is marked applied: a bad one raises on every use
    hub.evbus.settings.APPLIED = opt


def plugin(hub, sub_name: str, name: str):
    """
    :param sub_name: A sub of plugins: "serialize" or "match"
    :param name: A plugin name in it
    :return: The plugin
    :raises ConfigError: when the sub has no such plugin, naming the ones it has
    """
    sub = hub[sub_name]
    if isinstance(name, str) and name != "init":
        try:
            if name in sub:
                return sub[name]
        except Exception:  # a plugin that fails to load is reported like a missing one
            pass
    available = ", ".join(sorted(mod.__name__ for mod in sub if mod.__name__ != "init"))
    raise ConfigError(f"Unknown {sub_name} plugin '{name}'; available: {available}")
