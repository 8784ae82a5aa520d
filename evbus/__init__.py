"""
evbus: an asynchronous event bus for pop projects.

The bus itself is the ``evbus`` dyne on a pop hub (``hub.evbus``); this file
makes ``evbus`` a regular package, so that pytest, loading the ``evbus.testing``
plugin, marks this package for assertion rewriting and no module outside it.
"""
