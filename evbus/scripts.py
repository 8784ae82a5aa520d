"""
The ``evbus`` console script.
"""
import signal
import sys


def start():
    """Make a hub, load evbus and run its command line."""
    # Until the command's loop handles them, SIGINT and SIGTERM end the command quietly
    # with 130 / 143 (while pop and the client libraries are imported, say)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        import pop.hub

        hub = pop.hub.Hub()
        hub.pop.sub.add(dyne_name="evbus")
        hub.evbus.init.cli()
    except KeyboardInterrupt:
        sys.exit(130)


def _terminated(signum, frame):
    sys.exit(128 + signum)
