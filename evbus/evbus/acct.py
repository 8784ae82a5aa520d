"""
Profiles: read acct data into the contexts that ``start()`` routes by.
"""
import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

import dict_tools.data as data
import yaml

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
            if not os.path.isfile(acct_file):
                raise ConfigError(f"Cannot read the acct file '{acct_file}': there is no such file") from None
            if not acct_key and _looks_encrypted(acct_file):
                raise ConfigError(
                    f"Cannot read the acct file '{acct_file}': it is encrypted, and needs its key "
                    f"(--acct-key or ACCT_KEY)"
                ) from None
            shape = None if acct_key else _not_a_mapping(acct_file)
            if shape is not None:
                raise ConfigError(
                    f"Cannot read the acct file '{acct_file}': its top level is {shape}, not a mapping "
                    f"of provider -> profiles (internal: {{default: {{}}}})"
                ) from None
            if acct_key and not _looks_encrypted(acct_file) and _is_plain_profiles(acct_file):
                raise ConfigError(
                    f"Cannot read the acct file '{acct_file}' with the acct key: it is not encrypted "
                    f"(plain text: read it without --acct-key / ACCT_KEY)"
                ) from None
            hint = " (is the acct key right?)" if acct_key else ""
            raise ConfigError(
                f"Cannot read the acct file '{acct_file}': {hub.evbus.MASK.exception(e)}{hint}"
            ) from None
    if acct_data is None:
        acct_data = {}
    if not isinstance(acct_data, Mapping):
        raise ConfigError(f"acct data must be a mapping of provider -> profiles, not {type(acct_data).__name__}")

    accepted = {provider for _, providers in hub.evbus.contexts.ingress_plugins().values() for provider in providers}
    hub.evbus.acct.UNSERVED = {}
    contexts = data.NamespaceDict()
    unserved = []
    for provider, provider_profiles in acct_data.items():
        if not isinstance(provider, str):
            raise ProfileError(str(provider), None, "a provider name must be a string")
        base = provider.split(".")[0]
        if base not in accepted:
            unserved.append((provider, provider_profiles))
            continue
        if provider_profiles is None:
            continue
        contexts[provider] = []
        for name, info in hub.evbus.contexts.entries(provider, provider_profiles):
            hub.evbus.MASK.learn(info)
            contexts[provider].append(data.NamespaceDict({name: data.NamespaceDict(info)}))
            processed = await _process(hub, provider, name, info)
            if processed is not None:
                contexts[provider].append(data.NamespaceDict({name: processed}))
    if unserved:
        _warn_unserved(hub, unserved, accepted)
    return contexts


def __init__(hub):
    # The providers of the last profiles() call that no ingress plugin serves:
    # {provider: (its profile names, why they get no events when it looks like a
    # mistake (a plugin that cannot load, a name close to a served one), else None)}
    hub.evbus.acct.UNSERVED = {}


def _warn_unserved(hub, unserved: list[tuple[str, Any]], accepted: set[str]):
    """
    Say which acct providers get no events: the profiles of a provider whose
    ingress plugin could not load (a missing extra), one line each; the
    other providers that no plugin serves (a typo, or another program's
    credentials in a shared acct file) in one line.
    """
    load_errors = _load_errors(hub)
    others = []
    for provider, provider_profiles in unserved:
        base = provider.split(".")[0]
        try:
            names = [name for name, _ in hub.evbus.contexts.entries(provider, provider_profiles or {})]
        except ProfileError:
            names = []
        reason = next(
            (f"ingress.{plugin} cannot load: {text}" for plugin, text in load_errors.items()
             if base == plugin or base in re.findall(r"[\w-]+", text)),
            None,
        )
        if reason is None:
            close = difflib.get_close_matches(base, accepted, n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            others.append(f"'{provider}'{hint}")
            mistake = f"no ingress plugin serves the acct provider '{provider}'{hint}" if close else None
            hub.evbus.acct.UNSERVED[provider] = (names, mistake)
            continue
        hub.evbus.acct.UNSERVED[provider] = (names, reason)
        for name in names or ["(none)"]:
            hub.log.warning(
                f"Profile '{name}' of acct provider '{provider}' gets no events: {reason}",
                extra={"evbus_internal": True},
            )
    if others:
        hub.log.warning(
            f"No ingress plugin serves the acct provider(s) {', '.join(others)}: their profiles get no events. "
            f"Providers served: {', '.join(sorted(accepted))}",
            extra={"evbus_internal": True},
        )


def _load_errors(hub) -> dict[str, str]:
    """:return: {ingress plugin name: why it did not load} (a missing client library, say)"""
    found = {}
    for name, error in getattr(hub.ingress, "_load_errors", {}).items():
        edict = getattr(error, "edict", None) or {}
        text = edict.get("verror") or edict.get("exception") or str(error)
        found[name] = str(text)
    return found


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


def _looks_encrypted(acct_file: str) -> bool:
    """:return: Whether an acct file read without a key looks encrypted (a Fernet token)"""
    try:
        with open(acct_file, "rb") as stream:
            start = stream.read(16).lstrip()
    except OSError:
        return False
    # A Fernet token, as acct writes an encrypted file, starts with its version byte 0x80: "gA" in base64
    return start.startswith(b"gA")


def _is_plain_profiles(acct_file: str) -> bool:
    """:return: Whether an acct file is plain-text YAML whose top level is a mapping (of providers)"""
    try:
        with open(acct_file, encoding="utf-8") as stream:
            return isinstance(yaml.safe_load(stream), Mapping)
    except (OSError, ValueError, yaml.YAMLError):
        return False


def _not_a_mapping(acct_file: str) -> str | None:
    """:return: What the top level of a plain-text acct file is, when it is YAML but no mapping; else None"""
    try:
        with open(acct_file, encoding="utf-8") as stream:
            content = yaml.safe_load(stream)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if content is None or isinstance(content, Mapping):
        return None
    return f"a {type(content).__name__}"
