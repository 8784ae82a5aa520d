"""
The ``evbus`` console script.
"""
import signal
import sys

from evbus.distribution import conflict
from evbus.exc import DistributionConflictError


def start():
    """Make a hub, load evbus and run its command line."""
    # Until the command's loop handles them, SIGINT and SIGTERM end the command with one
    # line and 130 / 143 (while pop and the client libraries are imported, or the events
    # are read from stdin, say): SIGTERM as a KeyboardInterrupt that says which signal it was
    signal.signal(signal.SIGTERM, _terminated)
    try:
        # Before pop looks for the dyne: after pop-evbus's uninstall deleted
        # files the two share, there may be no dyne left to load
        message = conflict()
        if message is not None:
            _fail(message)
        import pop.hub

        hub = pop.hub.Hub()
        hub.pop.sub.add(dyne_name="evbus")
        hub.evbus.init.cli()
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"\nevbus: {signal.Signals(signum).name}: stopped as it started", file=sys.stderr)
        sys.exit(128 + signum)
    except DistributionConflictError as e:
        _fail(str(e))


def _fail(message: str):
    """A command that cannot run: what is wrong on stderr, exit status 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


class Terminated(KeyboardInterrupt):
    """A signal other than SIGINT that ends the command before its loop runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)
