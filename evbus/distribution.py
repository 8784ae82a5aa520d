"""
The distribution evbus is installed as, and the guard against another one in
its place.

evbus is published as ``evbus-ng``; its import package and every hub path are
``evbus``, as in ``pop-evbus``. pop-evbus installs the same import package:
installed in one environment, the one installed last overwrites the files
they share (``evbus/conf.py``, ``evbus/evbus/init.py``, ...) and uninstalling
either deletes files of the other. ``evbus-kafka`` and ``evbus-pika`` need
pop-evbus and merge ingress plugins of their own into the ``ingress`` dyne.

:func:`check` finds them and raises one :class:`~evbus.exc.DistributionConflictError`
that names the distribution to uninstall and the command that repairs the
environment. It runs when the ``evbus`` dyne loads, from two places: evbus's
``evbus/init.py`` and ``ingress/init.py``. pop-evbus has no ``ingress/init.py``
(nor this module), and its own ``evbus/init.py`` adds the ``ingress`` dyne, so
the guard runs whichever of the two was installed last.
"""
import functools
import hashlib
import importlib.metadata
import pathlib
from base64 import urlsafe_b64encode

from evbus.exc import DistributionConflictError

# The name evbus is published under
NAME = "evbus-ng"
# Distributions that must not be installed beside evbus, and why
FOREIGN = {
    "pop-evbus": "it installs the same Python package 'evbus'",
    "evbus-kafka": "its kafka ingress plugin would merge with evbus's (the kafka extra serves Kafka)",
    "evbus-pika": "its pika ingress plugin would merge with evbus's (the pika extra serves RabbitMQ)",
}
# The one of them whose files are evbus's own files too
SHARES_FILES = "pop-evbus"


def check():
    """
    Raise when a distribution that collides with evbus is installed in this environment.

    :raises DistributionConflictError: naming what to uninstall, and how to restore evbus's files
    """
    message = conflict()
    if message is not None:
        raise DistributionConflictError(message)


@functools.cache
def conflict() -> str | None:
    """
    :return: What is wrong and the command that repairs it, or None when nothing collides
        (found once per process)
    """
    found = {name: dist for name in FOREIGN if (dist := _distribution(name)) is not None}
    ours = _distribution(NAME)
    changed = _changed_files(ours) if ours is not None else []
    if not found and not changed:
        return None
    this = f"{NAME} {ours.version}" if ours is not None else NAME
    if found:
        beside = ", ".join(f"{name} {dist.version}" for name, dist in found.items())
        lines = [f"evbus cannot load: {this} is installed together with {beside}"]
    else:
        lines = [f"evbus cannot load: files of {this} were replaced or removed"]
    for name in found:
        lines.append(f"- {name}: {FOREIGN[name]}")
    if SHARES_FILES in found:
        if _owns_files(found[SHARES_FILES]):
            lines.append(f"- {SHARES_FILES} was installed last: its files replaced {NAME}'s")
        else:
            lines.append(
                f"- {NAME} was installed last: uninstalling {SHARES_FILES} deletes files {NAME} needs"
            )
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        lines.append(f"- not {NAME}'s own: {shown}")
    command = []
    if found:
        command.append("pip uninstall -y " + " ".join(found))
    if changed or SHARES_FILES in found:
        command.append(f"pip install --force-reinstall --no-deps {NAME}")
    uninstall = f"Uninstall {' and '.join(found)}" if found else "Reinstall evbus"
    lines.append(f"{uninstall}, then load evbus again: {' && '.join(command)}")
    return "\n".join(lines)


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hash(path: pathlib.Path, algorithm: str) -> str | None:
    """:return: The file's digest as RECORD writes it, or None when it does not exist"""
    try:
        digest = hashlib.new(algorithm, path.read_bytes()).digest()
    except OSError:
        return None
    return urlsafe_b64encode(digest).rstrip(b"=").decode()


def _recorded(dist: importlib.metadata.Distribution):
    """
    :return: (relative path, file, algorithm, digest) of every module of the
        import package ``evbus`` that the distribution's RECORD lists with a hash
    """
    for entry in dist.files or ():
        if entry.parts[0] != "evbus" or entry.hash is None or not entry.name.endswith(".py"):
            continue
        yield str(entry), pathlib.Path(dist.locate_file(entry)), entry.hash.mode, entry.hash.value


def _changed_files(dist: importlib.metadata.Distribution) -> list[str]:
    """
    :return: evbus's files (of a regular install; an editable one records none)
        that are missing or differ from what it installed
    """
    return sorted(
        name for name, path, algorithm, value in _recorded(dist) if _hash(path, algorithm) != value
    )


def _owns_files(dist: importlib.metadata.Distribution) -> bool:
    """:return: Whether ``evbus/evbus/init.py`` on disk is the one this distribution installed"""
    return any(
        _hash(path, algorithm) == value
        for name, path, algorithm, value in _recorded(dist)
        if name == "evbus/evbus/init.py"
    )
