"""
Profiles: read acct data into the contexts that ``start()`` routes by.
"""
from collections.abc import Mapping
from typing import Any

import dict_tools.data as data

from evbus.exc import ConfigError
from evbus.exc import ProfileError


async def profiles(
    hub,
    acct_file: str | None = None,
    acct_key: str | None = None,
    acct_data: dict | None = None,
    **kwargs,
) -> dict[str, list[dict[str, Any]]]:
    """
    Read ingress profiles from an acct file (encrypted, or plain text with a
    warning when no key is given), or take them from ``acct_data``.

    .. code-block:: yaml

        internal:
          default: {}
        pika:
          my-profile:
            connection:
              url: amqp://guest:guest@127.0.0.1:5672/

    :param acct_file: The acct file
    :param acct_key: The Fernet key it was encrypted with
    :param acct_data: {provider: {profile name: profile data}} (or a list of such dicts per provider)
    :return: The contexts: {provider: [{profile name: profile data}, ...]}; providers
        that no loaded ingress plugin accepts are left out. Where an acct plugin
        exists for a provider, its processed profile is added as well.
    :raises ConfigError: for an unreadable acct file, a wrong key, or malformed profiles
    """
    if acct_key:
        hub.evbus.MASK.learn(acct_key)
    if acct_file and acct_data is None:
        hub.log.debug("Reading ingress profiles from acct", extra={"evbus_internal": True})
        try:
            acct_data = await hub.acct.init.profiles(acct_file, acct_key, **kwargs)
        except Exception as e:
            raise ConfigError(
                f"Cannot read the acct file '{acct_file}': {hub.evbus.MASK.exception(e)}"
                + (" (is the acct key right?)" if acct_key else "")
            ) from None
    if acct_data is None:
        acct_data = {}
    if not isinstance(acct_data, Mapping):
        raise ConfigError(f"acct data must be a mapping of provider -> profiles, not {type(acct_data).__name__}")

    accepted = {provider for _, providers in hub.evbus.route.ingress_plugins().values() for provider in providers}
    contexts = data.NamespaceDict()
    for provider, provider_profiles in acct_data.items():
        if not isinstance(provider, str):
            raise ProfileError(str(provider), None, "a provider name must be a string")
        base = provider.split(".")[0]
        if base not in accepted:
            continue
        if provider_profiles is None:
            continue
        contexts[provider] = []
        for name, info in hub.evbus.route.entries(provider, provider_profiles):
            hub.evbus.MASK.learn(info)
            contexts[provider].append(data.NamespaceDict({name: data.NamespaceDict(info)}))
            processed = await _process(hub, provider, name, info)
            if processed is not None:
                contexts[provider].append(data.NamespaceDict({name: processed}))
    return contexts


async def _process(hub, provider: str, name: str, info: Mapping) -> Any:
    """Run the acct processing plugins of a provider (e.g. ``acct/kafka/ssl.py``) over one profile."""
    if "acct" not in hub or provider not in hub.acct:
        return None
    try:
        processed = await hub.acct.init.process([provider], {provider: {name: dict(info)}})
    except Exception as e:
        raise ProfileError(provider, name, hub.evbus.MASK.exception(e)) from None
    result = (processed or {}).get(provider, {}).get(name)
    if result is None or result == info:
        return None
    hub.evbus.MASK.learn(result)
    return data.NamespaceDict(result)
