"""
A pop project the idem test puts on idem's path: test states for the SLS, and
an ingress plugin that writes down what reached the internal ingress.
"""
DYNE = {"ingress": ["ingress"], "states": ["states"]}
