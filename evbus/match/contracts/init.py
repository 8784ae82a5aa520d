"""
The contract of match plugins: ``find(name, pattern)`` tells whether an event
profile name matches a profile name pattern.
"""


def sig_find(hub, name: str, pattern: str) -> bool:
    ...
