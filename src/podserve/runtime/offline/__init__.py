"""The offline (bypass) worker: the service's handler consuming a Kafka topic instead of HTTP requests.

`python -m podserve.runtime.offline` runs it. It drives the same InstancePool and
batcher as the HTTP server, writes each result to the sink keyed like its input, sends
poison messages to the dead-letter topic, and commits input offsets only after the sink
acknowledged everything fetched before them (at-least-once: duplicates after a crash,
never a loss). Probes and /metrics are served on the pod's HTTP port.
"""
