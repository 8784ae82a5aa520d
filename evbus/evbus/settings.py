"""
Configuration, read in one place: the hub face of :mod:`evbus.settings`.

``read()`` turns ``hub.OPT.evbus`` into a frozen :class:`~evbus.settings.Settings`,
once per loaded config; the broker, the router and the lanes are handed
that value. ``apply()`` also copies the plugin names of the config onto the
hub, once per loaded config: the serialize plugin (``hub.serialize.PLUGIN``
and ``hub.evbus.SERIAL_PLUGIN``) and the match plugin (``hub.match.PLUGIN``).
A value the program assigned to one of those attributes itself is kept.
Unknown plugin names and values of the wrong kind are a
:class:`~evbus.exc.ConfigError` here, where the config is first used.

This module calls no other module of the bus: they call it.
"""
from collections.abc import Mapping
from typing import Any

from evbus.exc import ConfigError
from evbus.lane import RetryPolicy
from evbus.settings import DEFAULTS
from evbus.settings import Settings
from evbus.settings import value

# The hub.OPT of settings not read yet
_UNREAD = object()


def __init__(hub):
    # The Settings last read, and the hub.OPT it was read from
    hub.evbus.settings.CURRENT = None
    hub.evbus.settings.READ_FROM = _UNREAD
    # The hub.OPT whose plugin names were applied to the hub
    hub.evbus.settings.APPLIED = None


def read(hub) -> Settings:
    """
    :return: The settings of the loaded config (the defaults before a config is loaded)
    :raises ConfigError: for an option whose value is not of its kind
    """
    opt = getattr(hub, "OPT", None)
    mod = hub.evbus.settings
    if mod.READ_FROM is opt:
        return mod.CURRENT
    current = Settings.read(opt.get("evbus") if opt is not None else None)
    mod.CURRENT, mod.READ_FROM = current, opt
    return current


def apply(hub) -> Settings:
    """
    Apply the loaded config's plugin names to the hub, once per ``hub.OPT``.

    :return: The settings of the loaded config
    :raises ConfigError: when an option has a value of the wrong kind or a configured plugin name is unknown
    """
    current = hub.evbus.settings.read()
    opt = getattr(hub, "OPT", None)
    if hub.evbus.settings.APPLIED is opt:
        return current
    evbus_opt = opt.get("evbus") if opt is not None else None
    if evbus_opt:
        serialize_name = current.serial_plugin or current.serialize_plugin
        # Keep a name the program set itself; otherwise take the config's
        if serialize_name and hub.serialize.PLUGIN == "json" and hub.evbus.SERIAL_PLUGIN in ("json", None):
            hub.serialize.PLUGIN = hub.evbus.SERIAL_PLUGIN = serialize_name
        if current.match_plugin and hub.match.PLUGIN == "glob":
            hub.match.PLUGIN = current.match_plugin
        # Fail here, at load, for names that do not exist
        for name in {hub.serialize.PLUGIN, hub.evbus.SERIAL_PLUGIN} - {None}:
            hub.evbus.settings.plugin("serialize", name)
        hub.evbus.settings.plugin("match", hub.match.PLUGIN)
    # Only a config that passed is marked applied: a bad one raises on every use
    hub.evbus.settings.APPLIED = opt
    return current


def get(hub, name: str) -> Any:
    """
    :param name: An option of the evbus dyne
    :return: Its value from the loaded config (checked: numbers as float), else its default
    :raises ConfigError: for an option of the bus whose value is not of its kind
    """
    opt = hub.OPT.get("evbus") if hasattr(hub, "OPT") else None
    raw = opt.get(name) if opt is not None else None
    if name in DEFAULTS:
        # This option alone: one that is wrong does not stop what reads another (a stop, say)
        return value(name, raw)
    # pop's hub.OPT answers an empty NullMap before the config is loaded
    return None if isinstance(raw, Mapping) else raw


def retry_policy(hub) -> RetryPolicy:
    """
    :return: The lanes' retry policy from the config
    """
    return hub.evbus.settings.read().retry_policy


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
