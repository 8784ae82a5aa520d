"""
Matching event profile names against profile name patterns.

``hub.match.PLUGIN`` (config ``match_plugin``) names the plugin: ``glob``
(default) or ``regex``. A contexts dict may choose another with its
``match_plugin`` key.
"""


def __init__(hub):
    hub.match.PLUGIN = "glob"


def find(hub, name: str, pattern: str) -> bool:
    """
    :param name: An event's profile name
    :param pattern: A profile name, read as a pattern
    :return: True if the name matches the pattern
    """
    return hub.match[hub.match.PLUGIN].find(name, pattern)
