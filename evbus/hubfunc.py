"""
pop utilities: hub functions called without pop's per-call wrapper.

A plain module (not a plugin): the subs of evbus use it on their hot paths
(``put``, a lane's publish); ``hub.evbus.broker.direct`` is its hub face for
plugins.
"""
import functools
from typing import Any


def direct(hub, contracted, implementation=None, *bound) -> Any:
    """
    A hub function to call without pop's per-call wrapper.

    pop wraps every plugin function in a ``Contracted`` object whose call
    runs the contracts and resolves parameter aliases; with neither to do it
    still costs microseconds per call. For such a function a plain
    ``functools.partial`` (``func(hub, ...)``; a subclass of it would lose its
    fast calling convention) is used instead; it keeps the ``ref``,
    ``signature`` and ``contracted`` of the original.

    :param contracted: A function from the hub, e.g. ``hub.serialize.json.apply``
    :param implementation: What to call instead, with ``bound`` before the caller's
        arguments, e.g. a function that takes its plugin's state instead of the hub
    :return: The partial, or the hub function itself when its wrapper has work to do
    """
    func = getattr(contracted, "func", None)
    if (
        func is None
        or getattr(contracted, "_has_contracts", True)
        or getattr(contracted, "param_aliases", None)
        or not getattr(contracted, "implicit_hub", False)
    ):
        return contracted
    if implementation is None:
        implementation, bound = func, (hub,)
    fast = functools.partial(implementation, *bound)
    fast.ref = getattr(contracted, "ref", None)
    fast.signature = getattr(contracted, "signature", None)
    fast.contracted = contracted
    fast.__name__ = getattr(contracted, "__name__", func.__name__)
    fast.__doc__ = func.__doc__
    fast.__wrapped__ = func
    return fast
