"""What runs in the pod: the HTTP server, the model instances and their batchers.

Its one input is the environment (see `podserve.settings`); it never reads value.py.
"""
