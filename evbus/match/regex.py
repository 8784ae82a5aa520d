"""
Regular expressions (``re``), matched against the whole name.
"""
import re


def find(hub, name: str, pattern: str) -> bool:
    """
    :param name: An event's profile name
    :param pattern: A regular expression
    :return: True if the expression matches the whole name
    """
    return re.fullmatch(pattern, name) is not None
