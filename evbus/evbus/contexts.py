"""
Context checks: the contexts of ``hub.evbus.acct.profiles`` and the ingress
plugins, checked before any lane is made.

``ingress_plugins()`` lists the loaded ingress plugins and the acct providers
each accepts; ``destinations(contexts)`` every (plugin, provider, profile) of
a contexts dict; ``entries()`` checks the shape of one provider's profiles.
A malformed contexts dict, profile or plugin is an error that names it.
"""
from collections.abc import Mapping
from typing import Any

from evbus.exc import ConfigError
from evbus.exc import IngressPluginError
from evbus.exc import ProfileError


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
    plugins = hub.evbus.contexts.ingress_plugins()
    found = []
    for plugin_name, (_, providers) in plugins.items():
        for provider in providers:
            profiles = contexts.get(provider)
            if profiles is None:
                continue
            for name, profile in hub.evbus.contexts.entries(provider, profiles):
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
