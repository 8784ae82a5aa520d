"""
The ingress sub: one plugin per kind of destination (see ``contracts/init.py``).

Loading the sub runs the guard against distributions that collide with
evbus (:func:`evbus.distribution.check`): pop-evbus's ``evbus/init.py`` adds
this sub too, and pop-evbus ships no ``ingress/init.py``, so the guard runs
even where pop-evbus's files replaced evbus's.
"""
from evbus.distribution import check


def __init__(hub):
    check()
