"""What runs in CI and on a developer's machine: reading value.py, rendering manifests, local serving.

Nothing here runs in the pod; the pod reads only its environment (`podserve.settings`).
"""
