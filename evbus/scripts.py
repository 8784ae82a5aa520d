"""
The ``evbus`` console script.
"""
import pop.hub


def start():
    """Make a hub, load evbus and run its command line."""
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.evbus.init.cli()
