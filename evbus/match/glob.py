"""
Shell-style patterns (fnmatch): ``*``, ``?``, ``[seq]``; case-sensitive.
"""
import fnmatch


def find(hub, name: str, pattern: str) -> bool:
    """
    :param name: An event's profile name
    :param pattern: A glob pattern
    :return: True if the name matches the whole pattern
    """
    return fnmatch.fnmatchcase(name, pattern)
