"""
What the broker plugins share: the guard of their client library, the
holder of a profile's connection, the registry of holders and lane routes,
and the hub functions built on it (see ``evbus/ingress/contracts/broker.py``).
"""
import asyncio
import os
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from evbus import tls
from evbus.exc import ConfigError
from evbus.exc import ListenError
from evbus.types import Event

# evbus's own files: an import that fails here, not inside a client library, means the library is missing or old
_EVBUS = os.path.dirname(os.path.abspath(__file__)) + os.sep


def import_error(error: ImportError, libraries: tuple[str, ...]) -> ImportError:
    """
    Tell a client library that is not installed (or lacks what evbus imports
    of it: older than the extra's floor) from one that is installed and fails
    to import. Called in the ``except ImportError`` of a plugin's imports.

    :param error: What the plugin's imports raised
    :param libraries: The top-level modules of the client library (and its own client)
    :return: The error, for ``__virtual__`` (:func:`virtual`) to say which extra to install
    :raises ImportError: the error itself, when it is not about the library being absent or
        old (it failed inside the library: a broken install, a dependency of its own
        missing), so that the plugin fails to load with the real error and its traceback
    """
    name = (error.name or "").split(".")[0]
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    raised_by_evbus = frame is None or os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(_EVBUS)
    if name in libraries and raised_by_evbus:
        return error
    raise error


def virtual(error: ImportError | None, needs: str, extra: str) -> bool | tuple[bool, str]:
    """
    The ``__virtual__`` answer of a broker plugin.

    :param error: What :func:`import_error` returned, or None when the imports worked
    :param needs: What the plugin needs, e.g. ``the kafka ingress (acct provider kafka) needs aiokafka``
    :param extra: The extra of evbus-ng that installs it
    """
    if error is None:
        return True
    return False, f'{needs}: pip install "evbus-ng[{extra}]" ({error})'


def error_text(error: BaseException) -> str:
    """
    :param error: An exception of a client library
    :return: ``Type: message`` on one line (the type once: some libraries
        put it in the message already); the type alone when there is no message
    """
    name = type(error).__name__
    text = " ".join(str(error).split())
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def fail_waiting(futures: Iterable[asyncio.Future], error: BaseException):
    """Fail those of ``futures`` that still wait (for an answer that will not come: the connection is gone)."""
    for future in futures:
        if not future.done():
            future.set_exception(error)


def retry_helps(error: BaseException, refused: tuple[type[BaseException], ...] = ()) -> bool:
    """
    The rule of a broker plugin's ``retriable``, after its own cases: a retry
    can help, unless the error is one of ``refused`` (what the broker refused
    for good) or its class says it cannot (``retriable = False``).
    """
    return not isinstance(error, refused) and getattr(error, "retriable", True) is not False


def listen_error(what: str, why: BaseException | None = None) -> ListenError:
    """
    :param what: What went wrong in ``evbus listen``: ``cannot connect``, ``lost the connection``
    :param why: The error that says why, if any
    :return: The plugin's ``ListenError`` (``contracts/broker.py``): ``what: Type: message``
    """
    return ListenError(f"{what}: {error_text(why)}" if why is not None else what)


class LoopLock:
    """
    An ``asyncio.Lock`` for the running loop: a lock belongs to the loop that
    first used it, and a bus can be started in one loop after another. It
    serializes the opening of a connection that several lanes share, so that
    they open it once.
    """

    def __init__(self):
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Lock:
        """:return: The lock of the running loop"""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


class PerCtx:
    """
    What a plugin works out once per lane ``ctx`` (its connection, its route),
    found again by the ctx's identity on every send. A lane's ctx lives as long
    as the lane; entries go when the plugin closes the connection.
    """

    def __init__(self):
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, ctx) -> Any:
        """:return: What was kept for this ctx, or None"""
        entry = self._entries.get(id(ctx))
        if entry is not None and entry[0] is ctx:
            return entry[1]
        return None

    def put(self, ctx, value: Any) -> Any:
        """Keep ``value`` for this ctx; return it."""
        self._entries[id(ctx)] = (ctx, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, ctx, uses: Callable[[Any], bool]) -> list[Any]:
        """
        Drop the entry of ``ctx`` and every entry whose value ``uses`` says belongs to a closed connection.

        :return: The values dropped
        """
        dropped = []
        for key, (_, value) in list(self._entries.items()):
            if key == id(ctx) or uses(value):
                del self._entries[key]
                dropped.append(value)
        return dropped


def options(ctx) -> dict:
    """:return: The profile's ``connection``: keyword arguments of the client library, less ``loop``"""
    return {key: value for key, value in dict(ctx.acct.get("connection") or {}).items() if key != "loop"}


def tls_block(ctx, native: tuple[str, ...], prefix: str = "") -> Mapping | None:
    """
    :param native: The client library's own TLS options (and those whose name starts with ``prefix``)
    :return: The profile's ``tls`` block, checked against the library's own options in its ``connection``
    :raises TlsConfigError: when the profile sets TLS both ways
    """
    block = tls.block(ctx.acct)
    tls.conflict(block, options(ctx), native=native, prefix=prefix)
    return block


async def close_quietly(closing: Awaitable):
    """Await the closing of a connection: a broken one may fail to close, and is gone either way."""
    try:
        await closing
    except Exception:
        pass


class Holder:
    """
    One profile's connection to a broker (profiles with the same connection
    share it): opened once, under a lock, by the first lane that needs it;
    opened again after a loss (``ready`` is then False); closed on stop.

    A subclass defines ``ready`` (connected, in the running loop: the lanes
    ask on every send), ``connect()`` and ``close()``.

    :param where: The broker's address, for messages
    """

    ready: bool

    def __init__(self, where: str):
        self.where = where
        self.loop: asyncio.AbstractEventLoop | None = None
        # Serializes open(): lanes of profiles that share this connection open it once
        self.lock = LoopLock()

    async def open(self):
        """Connect, unless it is ready: what a former connection left is closed first."""
        async with self.lock.get():
            if self.ready:
                return
            await self.close()
            try:
                await self.connect()
            except TypeError as e:
                # The client refused the profile's connection options (an unknown keyword, a
                # value of the wrong type): no retry changes them
                raise ConfigError(f"the profile's connection options: {type(e).__name__}: {e}") from e
            self.loop = asyncio.get_running_loop()

    async def connect(self):
        """Connect to the broker; raise what says why it cannot."""
        raise NotImplementedError

    async def close(self):
        """Close the connection, if any; what it did not confirm fails."""
        raise NotImplementedError


class Route:
    """
    What a lane's sends need of its profile, worked out once per lane: the
    holder of its connection, and the plugin's per-profile settings.
    """

    __slots__ = ("holder",)

    def __init__(self, holder: Holder):
        self.holder = holder

    def forget(self):
        """The plugin closes the holder and forgets the route: what the route still holds fails."""


class Connections(dict):
    """
    A broker plugin's registry (``hub.ingress.<plugin>.CONNECTIONS``): the
    holders by connection key, and (``BY_CTX``) the route of each lane's ctx.

    :param by_ctx: The plugin's :class:`PerCtx` of routes
    :param key: ``key(ctx)``: the connection key of a profile
    :param holder: ``holder(ctx)``: a new holder of a profile's connection
    :param route: ``route(holder, ctx)``: a lane's :class:`Route`
    """

    def __init__(self, by_ctx: PerCtx, key: Callable, holder: Callable, route: Callable):
        super().__init__()
        self.by_ctx = by_ctx
        self.key = key
        self.holder = holder
        self.route = route

    def find(self, ctx) -> Any:
        """:return: The route of a lane's ctx: made once per lane, then found by the ctx"""
        found = self.by_ctx.get(ctx)
        if found is not None:
            return found
        key = self.key(ctx)
        holder = self.get(key)
        if holder is None:
            holder = self[key] = self.holder(ctx)
        return self.by_ctx.put(ctx, self.route(holder, ctx))

    async def open(self, ctx):
        """Connect the profile of a lane now."""
        await self.find(ctx).holder.open()

    async def close(self, ctx):
        """Close the connection of a lane's profile, and forget the routes that used it."""
        holder = self.pop(self.key(ctx), None)
        for route in self.by_ctx.forget(ctx, lambda route: route.holder is holder):
            route.forget()
        if holder is not None:
            await holder.close()


def connection_key(ctx, *more: Any, aliases: tuple[str, ...] = ()) -> str:
    """
    A broker plugin's connection key (``Connections.key``): profiles with the
    same key share a connection.

    :param more: What else of the profile the plugin's connection depends on
    :param aliases: Other names of the profile's ``tls`` block
    :return: The profile's ``connection`` and ``tls`` block, and ``more``
    """
    connection = sorted((name, repr(value)) for name, value in options(ctx).items())
    return repr((connection, tls.key(ctx.acct, aliases), *more))


def set_up(
    hub,
    plugin_name: str,
    acct: list[str],
    profile_keys: tuple[str, ...],
    holder: Callable,
    route: Callable,
    key: Callable = connection_key,
):
    """
    Set a broker plugin up, in its ``__init__``: the acct providers it takes
    (``ACCT``), the keys of its profiles (``PROFILE_KEYS``: beside
    ``routing_key``, ``envelope`` and ``cloudevents``; others are warned of),
    and its registry (``CONNECTIONS``: connection key -> holder; ``BY_CTX``: a
    lane's ctx -> its route).

    :param plugin_name: The plugin's name under ``hub.ingress``
    :param holder: ``holder(hub, ctx)``: a new :class:`Holder` of a profile's connection
    :param route: ``route(holder, ctx)``: a lane's :class:`Route`
    :param key: ``key(ctx)``: the connection key of a profile (:func:`connection_key`)
    """
    plugin = hub.ingress[plugin_name]
    plugin.ACCT = acct
    plugin.PROFILE_KEYS = frozenset(profile_keys)
    plugin.BY_CTX = PerCtx()
    plugin.CONNECTIONS = Connections(plugin.BY_CTX, key, lambda ctx: holder(hub, ctx), route)


def hub_functions(plugin_name: str, shield: bool = False) -> tuple[Callable, Callable, Callable]:
    """
    A broker plugin's ``open`` and ``close`` (``contracts/broker.py``), on its
    registry, and its ``publish`` (``contracts/init.py``), on its ``send``:
    ``open, close, publish = hub_functions("<plugin>")`` in its module.

    :param plugin_name: The plugin's name under ``hub.ingress``
    :param shield: ``publish`` shields the confirmation (one that other events share)
    """

    async def open(hub, ctx):
        """Connect the profile now, so that a broker that cannot be reached is reported at start."""
        await hub.ingress[plugin_name].CONNECTIONS.open(ctx)

    async def close(hub, ctx):
        """Flush and close the profile's connection (at stop)."""
        await hub.ingress[plugin_name].CONNECTIONS.close(ctx)

    async def publish(hub, ctx, routing_key: str, body: bytes):
        """Publish one body and wait for its confirmation (the ingress contract; the lanes use ``send``)."""
        event = Event(profile="", routing_key=routing_key, body=body)
        receipt = await hub.ingress[plugin_name].send(ctx, routing_key, event)
        await (asyncio.shield(receipt) if shield else receipt)

    return open, close, publish
