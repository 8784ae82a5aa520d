"""
The ``evbus`` command line.

``evbus listen [--profile NAME] [--routing-key KEY] [--count N]`` prints
what arrives at a profile's destination (Kafka topic, AMQP queue, ...), for
debugging a deployment; with ``--count N`` it takes (and acknowledges, where
the broker has acknowledgements) exactly N messages.

Every error is one line on stderr, ``evbus: <message>`` with secrets masked,
and the exit status 2. The first SIGINT (Ctrl-C) or SIGTERM stops a command
cleanly: ``publish`` stops putting, stops the bus within its timeout
(dead-lettering what is not delivered by then) and prints its summary; the
exit status is then 130 (SIGINT) or 143 (SIGTERM). A second signal exits at
once.

``evbus profiles [--output yaml|json]`` shows the configured profiles per
provider, secrets masked, and whether each destination is reachable; the
exit status is 1 when one is not.

``evbus replay [--plugin NAME] [--acct-profile NAME]`` publishes the dead
letters again, to their destinations in the profiles of the acct file, and
removes those delivered; the exit status is 1 when some failed again.

``evbus publish [EVENT ...]`` publishes each EVENT (a JSON document) or, with
none given, each JSON line of stdin, to the profiles of the acct file
(``--acct-file``/``ACCT_FILE``); with no configuration at all, to the internal
ingress. It prints every event that arrives on the internal ingress as a JSON
line and a summary on stderr; the exit status is 1 when a publish failed.
"""
import asyncio
import codecs
import contextlib
import difflib
import inspect
import json
import logging
import os
import signal
import sys
from typing import Any

import dict_tools.data as data
import msgpack
import yaml

from evbus import private
from evbus.connection import error_text
from evbus.exc import ConfigError
from evbus.exc import EvbusError
from evbus.exc import ListenError

# The embedded default: every event profile goes to the internal ingress
MATCH_ALL = {"glob": "*", "regex": ".*"}


def __init__(hub):
    hub.evbus.cli.INTERRUPT = None


class Interrupt:
    """
    The signals a command was sent. The first SIGINT or SIGTERM cancels the
    command's task while it is ``armed`` (putting, listening, replaying), so
    that it stops cleanly; a second one exits the process at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, task: asyncio.Task, hub=None):
        self.task = task
        self.hub = hub
        self.signum: int | None = None
        self.armed = True

    @property
    def status(self) -> int:
        """The exit status after the signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)"""
        return 128 + (self.signum or 0)

    def received(self, signum: int):
        name = signal.Signals(signum).name
        if self.signum is not None:
            spool = self.hub.evbus.spool.CURRENT if self.hub is not None else None
            if spool is not None:
                # What settled is marked done before the exit: the next start re-delivers only the rest
                with contextlib.suppress(Exception):
                    spool.write_settled()
            print(f"\nevbus: {name} again: exiting now{self._left()}", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nevbus: {name}: stopping (send it again to exit at once)", file=sys.stderr, flush=True)
        if self.armed:
            self.task.cancel()

    def _left(self) -> str:
        """What an exit now leaves undelivered and not dead-lettered, for the message."""
        try:
            stats = self.hub.evbus.broker.stats()
        except Exception:  # no bus (yet): nothing to count
            return ""
        if stats["spool_depth"]:
            # In the file: what the spool holds survives the exit
            return f"; {stats['spool_depth']} event(s) not delivered yet stay in the spool, for its next start"
        due = sum(lane["queued"] for lane in stats["lanes"])
        settled = sum(lane["published"] + lane["failed"] for lane in stats["lanes"])
        left = due - settled + stats["queue_depth"]
        return f"; {left} delivery(ies) neither published nor dead-lettered are lost" if left > 0 else ""

    def caught(self, error: BaseException) -> bool:
        """
        Whether ``error`` is the cancel this interrupt caused; if so, the task's
        cancel request is withdrawn, so that the command can clean up with
        waits that time out as they should.
        """
        if not isinstance(error, asyncio.CancelledError) or self.signum is None:
            return False
        task = asyncio.current_task()
        if task is self.task and task.cancelling():
            task.uncancel()
        return True


async def _interruptible(hub, command) -> int:
    """Run a command's coroutine with SIGINT and SIGTERM handled by an :class:`Interrupt`."""
    loop = asyncio.get_running_loop()
    interrupt = hub.evbus.cli.INTERRUPT = Interrupt(asyncio.current_task(), hub)
    for signum in Interrupt.SIGNALS:
        loop.add_signal_handler(signum, interrupt.received, signum)
    try:
        return await command
    except asyncio.CancelledError as e:
        if interrupt.caught(e):
            return interrupt.status
        raise
    finally:
        for signum in Interrupt.SIGNALS:
            loop.remove_signal_handler(signum)


def run(hub) -> int:
    """
    Load the config, run the chosen subcommand in a new loop, and return the
    exit status: 2 after an error, which is one line on stderr with secrets
    masked; 130 after SIGINT (Ctrl-C), 143 after SIGTERM.
    """
    try:
        hub.pop.config.load(["evbus"], cli="evbus")
    except Exception as e:  # a config file that is not YAML, say
        print(f"evbus: cannot load the configuration: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if hub.SUBPARSER not in ("publish", "replay", "profiles", "listen"):
        hub.args.PARSER.print_help(sys.stderr)
        return 2
    masked = _Masked(hub.evbus.MASK)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_no_plaintext_warning)
        handler.addFilter(masked)
        if isinstance(handler, logging.FileHandler):
            _private_log_file(handler)
    try:
        hub.evbus.broker.configure()
        if hub.SUBPARSER == "replay":
            command = hub.evbus.cli.replay()
        elif hub.SUBPARSER == "profiles":
            command = hub.evbus.cli.profiles()
        elif hub.SUBPARSER == "listen":
            command = hub.evbus.cli.listen()
        else:
            events = hub.evbus.cli.read_events(hub.OPT.evbus.events, hub.OPT.evbus.file)
            command = hub.evbus.cli.publish(events, progress=bool(hub.OPT.evbus.file) and sys.stderr.isatty())
        return asyncio.run(_interruptible(hub, command))
    except (EvbusError, ValueError) as e:
        print(f"evbus: {' '.join(hub.evbus.MASK.text(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # before the loop ran (reading the events from stdin, say; SIGTERM too)
        signum = getattr(e, "signum", signal.SIGINT)
        what = "before any event was put" if hub.SUBPARSER == "publish" else "before it began"
        print(f"\nevbus: {signal.Signals(signum).name}: stopped {what}", file=sys.stderr)
        return 128 + signum


class _Masked(logging.Filter):
    """
    Masks the secrets of every record a handler writes, the client
    libraries' too (at the debug level aiormq logs the URL it connects to,
    a password in its query included).
    """

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = self.mask.text(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


def _private_log_file(handler: logging.FileHandler):
    """
    The log file (``evbus.log``) is private, as the dead letters are: at the
    debug level the client libraries log message bodies. It is made 0600 when
    the handler opens it (pop-config's opens it at the first record), and an
    open one the process owns is tightened to 0600.
    """

    def open_private():
        fd = private.open_fd(handler.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        return open(fd, handler.mode, encoding=handler.encoding, errors=handler.errors)

    handler._open = open_private
    if handler.stream is not None:
        with contextlib.suppress(OSError):
            private.tighten(handler.stream.fileno())


def _out(text: str, end: str = "\n") -> bool:
    """
    Print to stdout, flushed. A reader that went away (``| head``) ends the
    output, not the command: stdout goes to /dev/null from then on.

    :return: False once the reader went away
    """
    try:
        print(text, end=end, flush=True)
        return True
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False


def read_events(hub, args: list[str] | tuple, path: str | None = None) -> list[Any]:
    """
    :param args: JSON documents from the command line
    :param path: A file of JSON lines (``-``: stdin); with neither, JSON lines are read from stdin
    :return: The decoded event bodies
    :raises ValueError: naming the argument or line that is not JSON (or not
        UTF-8; a byte order mark at the start is taken off), or a file that
        cannot be read
    """
    sources = [(f"argument {n}", text) for n, text in enumerate(args, 1)]
    if path and path != "-":
        try:
            with open(path, "rb") as lines:
                sources += _lines(path, lines)
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e}") from None
    elif path == "-" or (not args and sys.stdin is not None and not sys.stdin.isatty()):
        sources += _lines("stdin", sys.stdin.buffer)
    bodies = []
    for where, text in sources:
        try:
            bodies.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not JSON: {e}") from None
    return bodies


def _lines(name: str, lines) -> list[tuple[str, str]]:
    """:return: (where, text) of each line of ``lines`` (bytes) that is not blank, decoded from UTF-8"""
    sources = []
    for n, raw in enumerate(lines, 1):
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{name} line {n} is not UTF-8: byte {e.start + 1} is 0x{raw[e.start]:02x}") from None
        if line.strip():
            sources.append((f"{name} line {n}", line))
    return sources


async def publish(hub, bodies: list[Any], progress: bool = False) -> int:
    """
    Publish event bodies to the configured profiles and print what arrives internally.

    :param bodies: Event bodies
    :param progress: Show a progress bar on stderr (a terminal): deliveries
        settled against those due, with the events put, published and failed
    :return: 0 when every event was published; 1 when a publish failed or an
        event matched no lane; 130 or 143 when a signal stopped it
    """
    opt = hub.OPT.evbus
    timeout = hub.evbus.settings.get("timeout")
    stop_timeout = hub.evbus.settings.get("stop_timeout")
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    interrupt = hub.evbus.cli.INTERRUPT
    contexts = await hub.evbus.acct.profiles(acct_file=opt.acct_file, acct_key=opt.acct_key)
    if not opt.acct_file and not contexts:
        # No configuration at all: the embedded default, every event to the internal ingress
        match_all = MATCH_ALL.get(hub.match.PLUGIN, "*")
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {match_all: {}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    undelivered = None
    bar = None
    put = 0
    # The bus counts what it queued: a put a signal cancels after its event was queued counts too
    queued_before = hub.evbus.broker.stats()["put"]
    with _libraries_quiet():
        try:
            await hub.evbus.init.join(timeout=timeout)
            if progress:
                bar = Progress(hub, len(bodies), opt.profile, contexts)
            for body in bodies:
                await hub.evbus.broker.put(routing_key=opt.routing_key, body=body, profile=opt.profile)
                put += 1
                if bar is not None and put % 500 == 0:
                    await asyncio.sleep(0)  # let the lanes run between updates
        except asyncio.CancelledError as e:
            if interrupt is None or not interrupt.caught(e):
                raise
        finally:
            if interrupt is not None:
                interrupt.armed = False  # stopping is bounded by the timeout; a second signal exits at once
            try:
                undelivered = await hub.evbus.init.stop(timeout=stop_timeout)
            except EvbusError as e:  # the lanes did not close in time: the summary still says what happened
                print(f"evbus: {' '.join(hub.evbus.MASK.text(e).split())}", file=sys.stderr)
            finally:
                await asyncio.wait([listener], timeout=1)
                if listener.done() and not listener.cancelled():
                    listener.exception()  # what start() raised, join() raised already
                if bar is not None:
                    bar.close()

    for routing_key, queue in hub.ingress.internal.QUEUE.items():
        while not queue.empty():
            body = _decode(queue.get_nowait())
            _out(json.dumps({"routing_key": routing_key, "body": body}, default=repr))

    stats = hub.evbus.broker.stats()
    put = stats["put"] - queued_before
    lanes = stats["lanes"]
    failed = sum(lane["failed"] for lane in lanes)
    published = sum(lane["published"] for lane in lanes)
    unrouted = stats["unrouted"]
    signalled = interrupt is not None and interrupt.signum is not None
    print(
        (f"evbus: {signal.Signals(interrupt.signum).name}: {put} of {len(bodies)}" if signalled else f"evbus: {put}")
        + f" event(s) put, {published} published on {len(lanes)} lane(s), "
        f"{failed} failed and dead-lettered"
        + (f" ({undelivered} not delivered before the timeout)" if undelivered else "")
        + (f"; dead letters: {hub.evbus.deadletter.store().path}" if failed else ""),
        file=sys.stderr,
    )
    unwritten = hub.evbus.deadletter.unwritten()
    if unwritten:
        print(
            f"evbus: {unwritten} dead letter(s) could not be written to {hub.evbus.deadletter.store().path}: "
            f"those events are lost (see the errors above)",
            file=sys.stderr,
        )
    if unrouted:
        print(
            f"evbus: {unrouted} event(s) of profile '{opt.profile}' matched no acct profile, and went nowhere "
            f"(profiles: {', '.join(sorted({lane['profile'] for lane in lanes})) or 'none'})",
            file=sys.stderr,
        )
    if signalled:
        return interrupt.status
    if unwritten or undelivered is None:
        return 2
    return 1 if failed or unrouted else 0


class Progress:
    """
    The progress bar of ``evbus publish --file`` on a terminal: deliveries
    settled (published or failed) against those due, redrawn from the bus's
    stats a few times a second, while the events are put and while the bus
    drains at stop.
    """

    def __init__(self, hub, total: int, profile: str, contexts):
        import tqdm

        self.hub = hub
        self.total = total
        # Every event of the command has the same profile: the same lanes
        self.lanes = max(1, len(hub.evbus.route.router(contexts).match(profile)))
        try:
            size = os.get_terminal_size(sys.stderr.fileno())
        except OSError:
            size = os.terminal_size((0, 0))
        self.bar = tqdm.tqdm(
            total=total * self.lanes,
            file=sys.stderr,
            unit="ev",
            # follow the terminal's size; a terminal that tells none (0 x 0) gets 100 x 24
            dynamic_ncols=size.columns > 0,
            ncols=None if size.columns > 0 else 100,
            nrows=size.lines or 24,
            # (the counts as the description: tqdm puts ", " before a postfix)
            bar_format="{percentage:3.0f}%|{bar}| {desc}",
        )
        # Log lines on the terminal go above the bar, not onto its line
        self.streams = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                self.streams.append((handler, handler.setStream(_AboveTheBar(handler.stream, tqdm.tqdm))))
        self.task = asyncio.get_running_loop().create_task(self._redraw())

    def update(self):
        stats = self.hub.evbus.broker.stats()
        published = sum(lane["published"] for lane in stats["lanes"])
        failed = sum(lane["failed"] for lane in stats["lanes"])
        self.bar.n = min(self.bar.total, published + failed)
        self.bar.set_description_str(
            f"{stats['put']}/{self.total} put, {published} published, {failed} failed", refresh=False
        )
        self.bar.refresh()

    async def _redraw(self):
        while True:
            self.update()
            await asyncio.sleep(0.2)

    def close(self):
        self.task.cancel()
        self.update()
        self.bar.close()
        for handler, stream in self.streams:
            handler.setStream(stream)


class _AboveTheBar:
    """A log handler's stream while the progress bar shows: each line is written above the bar."""

    def __init__(self, stream, bars):
        self.stream = stream
        self.bars = bars

    def write(self, text: str):
        with self.bars.external_write_mode(file=self.stream):
            self.stream.write(text)

    def flush(self):
        self.stream.flush()


async def replay(hub) -> int:
    """
    Publish the dead letters (those of ``--plugin`` / ``--acct-profile`` only,
    when given) to their destinations in the configured profiles.

    :return: 0 when every dead letter asked for was delivered, else 1 (one
        failed again, or has no destination in the profiles)
    """
    opt = hub.OPT.evbus
    plugins = hub.evbus.contexts.ingress_plugins()
    if opt.plugin is not None and opt.plugin not in plugins:
        close = difflib.get_close_matches(opt.plugin.strip().lower(), plugins, n=1)
        raise ConfigError(
            f"--plugin '{opt.plugin}': no such ingress plugin"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + f"; the ingress plugins: {', '.join(sorted(plugins))}"
        )
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_file=opt.acct_file, acct_key=opt.acct_key)
    store = hub.evbus.deadletter.store()
    if not store.path.exists():
        print(f"evbus: no dead letters to replay: there is no file {store.path}", file=sys.stderr)
        return 0
    interrupt = hub.evbus.cli.INTERRUPT
    with _libraries_quiet():  # (the connections' close included)
        try:
            counts = await hub.evbus.deadletter.replay(contexts, plugin=opt.plugin, acct_profile=opt.acct_profile)
        except asyncio.CancelledError as e:
            if interrupt is None or not interrupt.caught(e):
                raise
            print(
                f"evbus: {signal.Signals(interrupt.signum).name}: replay stopped; what was not delivered is in "
                f"{hub.evbus.deadletter.store().path} again",
                file=sys.stderr,
            )
            return interrupt.status
        finally:
            if interrupt is not None:
                interrupt.armed = False
            await hub.evbus.shutdown.close(hub.evbus.settings.get("timeout"))
    print(
        f"evbus: {counts['replayed']} dead letter(s) replayed from {store.path}: "
        f"{counts['delivered']} delivered, {counts['failed']} failed again, "
        f"{counts['no_destination']} kept (no such destination in the profiles)",
        file=sys.stderr,
    )
    unreadable = store.unreadable()
    if unreadable:
        print(
            f"evbus: {unreadable} line(s) of {store.path} hold no dead letter (not JSON, or not a whole record): "
            f"left in the file as they are",
            file=sys.stderr,
        )
    return 1 if counts["failed"] or counts["no_destination"] else 0


async def profiles(hub) -> int:
    """
    Print the configured profiles per provider with their secrets masked, and
    whether each destination can be reached (connected to, then closed).

    A provider that no ingress plugin serves and whose name is close to one
    that is served (a typo), or whose plugin cannot load, is listed with its
    profiles as not reachable, saying why; another program's provider (in a
    shared acct file) is left out.

    :return: 0 when every destination is reachable, else 1
    """
    opt = hub.OPT.evbus
    timeout = hub.evbus.settings.get("timeout")
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_file=opt.acct_file, acct_key=opt.acct_key)
    unserved = dict(hub.evbus.acct.UNSERVED)
    if not contexts:
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {MATCH_ALL.get(hub.match.PLUGIN, "*"): {}}})
    report: dict[str, dict[str, Any]] = {}
    unreachable = 0
    with _libraries_quiet():  # (the connections' close included)
        unreachable = await _reach(hub, contexts, report, timeout)
        await hub.evbus.shutdown.close(timeout)
    for provider, (names, mistake) in unserved.items():
        if mistake is None:
            continue
        for name in names or ["(none)"]:
            report.setdefault(provider, {})[name] = {"plugin": None, "reachable": False, "error": mistake}
            unreachable += 1
    if opt.output == "json":
        _out(json.dumps(report, indent=2, default=str))
    else:
        _out(yaml.safe_dump(report, sort_keys=False, default_flow_style=False), end="")
    return 1 if unreachable else 0


async def _reach(hub, contexts, report: dict[str, dict[str, Any]], timeout: float) -> int:
    """
    Fill ``report`` with each destination's profile (masked) and whether it can
    be reached, all tried at once (each within ``timeout``); return how many cannot.
    """
    lanes = hub.evbus.route.router(contexts, connect=False).lanes
    entries = []
    for lane in lanes:
        entry: dict[str, Any] = {"plugin": lane.plugin, "profile": hub.evbus.MASK.data(dict(lane.ctx.acct))}
        if lane.destination.describe is not None:
            entry["destination"] = hub.evbus.MASK.text(lane.destination.describe(lane.ctx))
        report.setdefault(lane.provider, {})[lane.profile] = entry
        entries.append(entry)

    async def reach(lane, entry: dict[str, Any]):
        if lane.destination.open is None:
            entry["reachable"] = True  # in-process
            return
        try:
            async with asyncio.timeout(timeout):
                await lane.destination.open(lane.ctx)
            entry["reachable"] = True
        except Exception as e:
            entry["reachable"] = False
            entry["error"] = hub.evbus.MASK.exception(e) if not isinstance(e, TimeoutError) else (
                f"no connection within {timeout} s"
            )

    await asyncio.gather(*(reach(lane, entry) for lane, entry in zip(lanes, entries)))
    return sum(1 for entry in entries if not entry["reachable"])


async def listen(hub) -> int:
    """
    Print, as JSON lines, what arrives at the destination of the acct profile
    ``--profile`` (its Kafka topic, AMQP queue, ...), until ``--count``
    messages or ``--timeout`` seconds without one; with no configuration,
    the internal ingress. A summary goes to stderr at the end, Ctrl-C included.

    :return: 0; 1 when fewer than ``--count`` messages came
    :raises ListenError: The destination cannot be listened on, or was lost;
        it names the plugin, the profile and the address
    :raises ConfigError: No such profile, or its plugin cannot listen
    """
    opt = hub.OPT.evbus
    timeout = hub.evbus.settings.get("timeout") or None
    count = int(opt.count or 0)
    if count < 0:
        raise ConfigError(f"--count must be 0 (no limit) or more, not {count}")
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_file=opt.acct_file, acct_key=opt.acct_key)
    if not contexts:
        contexts = await hub.evbus.acct.profiles(acct_data={"internal": {opt.profile: {}}})
    destinations = [
        (plugin, provider, name, data)
        for plugin, provider, name, data in hub.evbus.contexts.destinations(contexts)
        if name == opt.profile
    ]
    if not destinations:
        names = sorted({name for _, _, name, _ in hub.evbus.contexts.destinations(contexts)})
        raise ConfigError(f"no acct profile named '{opt.profile}' (the profiles: {', '.join(names) or 'none'})")
    plugin_name, _, _, profile = destinations[0]
    plugin = hub.ingress[plugin_name]
    if not hasattr(plugin, "listen"):
        raise ConfigError(f"ingress.{plugin_name} cannot listen")
    ctx = data.NamespaceDict(acct=data.NamespaceDict(profile))
    source = f"ingress.{plugin_name} profile '{opt.profile}'"
    seen = 0
    gone = False
    try:
        messages = _own_generator(hub, plugin.listen, ctx, opt.routing_key)
        with _libraries_quiet():
            try:
                while (not count or seen < count) and (message := await _next(messages, timeout)):
                    routing_key, body = message
                    line = {"routing_key": routing_key, "body": _decode(body)}
                    if not _out(json.dumps(line, default=repr)):
                        gone = True  # the reader went away (| head): nobody takes more
                        # ... nor this one: a broker that acknowledges what is taken keeps it
                        with contextlib.suppress(BrokenPipeError, StopAsyncIteration):
                            await messages.athrow(BrokenPipeError("the output went away"))
                        break
                    seen += 1
            finally:
                await messages.aclose()
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task, then raises KeyboardInterrupt
        _listened(seen, source)
        raise
    except Exception as e:
        where = _where(plugin, ctx)
        reason = str(e) if isinstance(e, EvbusError) else error_text(e)
        raise ListenError(f"cannot listen on {source}{where}: {reason}") from None
    if not seen and timeout and not gone:
        # Nothing came (with --count or without): a server that takes the connection and never answers looks the same
        # from here as a quiet destination, so the connection is tried once on its own
        unreachable = await _unreachable(plugin, ctx, timeout)
        if unreachable is not None:
            raise ListenError(f"cannot listen on {source}{_where(plugin, ctx)}: cannot connect: {unreachable}")
    _listened(seen, source)
    if count and seen < count and not gone:
        why = f"none for {timeout:g} s: --timeout" if timeout else "the destination ended"
        print(f"evbus: {count} message(s) asked for, {seen} came ({why})", file=sys.stderr, flush=True)
        return 1
    return 0


def _own_generator(hub, function, *args):
    """
    The plugin's own async generator of ``function``. pop calls an async
    generator function from a generator of its own that iterates the
    plugin's: closing pop's (or throwing into it) leaves the plugin's
    generator open, to be closed by the loop's finalizer after
    ``asyncio.run`` cancelled the tasks, which ends its cleanup at its first
    await. The command closes the plugin's generator itself, at once: the
    connection is closed, and a message taken is acknowledged, before the
    summary. (pop runs no contract around it: ``sig_listen`` is checked at load.)
    """
    func = getattr(function, "func", None)
    if not inspect.isasyncgenfunction(func):
        return function(*args).__aiter__()
    return func(hub, *args) if getattr(function, "implicit_hub", True) else func(*args)


async def _unreachable(plugin, ctx, timeout: float) -> str | None:
    """:return: Why the plugin cannot connect the profile within ``timeout`` seconds, or None when it can"""
    if not hasattr(plugin, "open"):
        return None
    try:
        async with asyncio.timeout(timeout):
            await plugin.open(ctx)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as e:
        return str(e) if isinstance(e, EvbusError) else error_text(e)
    else:
        return None
    finally:
        if hasattr(plugin, "close"):
            try:
                async with asyncio.timeout(timeout):
                    await plugin.close(ctx)
            except Exception:
                pass


async def _next(messages, timeout: float | None) -> tuple[str, bytes] | None:
    """:return: The next (routing key, body), or None at the end or after ``timeout`` seconds without one"""
    try:
        async with asyncio.timeout(timeout):
            return await messages.__anext__()
    except (TimeoutError, StopAsyncIteration):
        return None


def _no_plaintext_warning(record: logging.LogRecord) -> bool:
    """Leaves out acct's warning on every plain-text acct file read without a key (the commands' usual case)."""
    return not str(record.msg).startswith("No acct_key provided")


class _LibrariesQuiet(logging.Filter):
    """Lets through evbus's own records, and the others' from CRITICAL up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.CRITICAL
            or getattr(record, "evbus_internal", False)
            or record.name.partition(".")[0] == "evbus"
        )


@contextlib.contextmanager
def _libraries_quiet():
    """
    While a command runs, leave out of stderr what the client libraries log
    of their connection trouble (aiokafka retrying, aiormq's tracebacks,
    once per event against a broker that is down): evbus's own lines name it. Not with a log level of info
    or debug, and not in the log file.
    """
    root = logging.getLogger()
    quiet = _LibrariesQuiet()
    handlers = []
    if root.getEffectiveLevel() >= logging.WARNING:
        handlers = [handler for handler in root.handlers if getattr(handler, "stream", None) is sys.stderr]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _listened(seen: int, source: str):
    print(f"evbus: {seen} message(s) from {source}", file=sys.stderr, flush=True)


def _where(plugin, ctx) -> str:
    """`` (host:port)`` of a destination as its plugin describes it; empty when it cannot."""
    describe = getattr(plugin, "describe", None)
    if describe is None:
        return ""
    try:
        return f" ({describe(ctx)})"
    except Exception:  # an address that cannot be made out of a broken profile: the error says why
        return ""


def _decode(body: bytes) -> Any:
    """Turn a serialized body back into data for printing."""
    try:
        return json.loads(body)
    except ValueError:
        pass
    try:
        return msgpack.unpackb(body, raw=False)
    except Exception:
        return body.decode(errors="replace")
