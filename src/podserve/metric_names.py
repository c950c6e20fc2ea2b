"""The names and labels of the server's Prometheus metrics: one place, for code, manifests and dashboards.

The runtime builds its collectors from these names (`podserve.runtime.metrics`); the
manifests (HPA, alert rules) and dashboards refer to the same constants. This module imports
nothing so that CI's tooling can use it without the server's dependencies.
"""

PREFIX = "podserve_"

# Request level, labels REQUEST_LABELS.
REQUESTS_TOTAL = PREFIX + "requests_total"                  # counter (exposed with _total)
REQUEST_SECONDS = PREFIX + "request_duration_seconds"       # histogram, end to end in the process

# Stage level, labels STAGE_LABELS: one label set for every stage metric.
QUEUE_WAIT_SECONDS = PREFIX + "queue_wait_seconds"          # histogram, enqueue to batch start
INFERENCE_SECONDS = PREFIX + "inference_seconds"            # histogram, one predict call
BATCH_SIZE = PREFIX + "batch_size"                          # histogram, items per predict call
QUEUE_DEPTH = PREFIX + "queue_depth"                        # gauge, items waiting in the queue
IN_FLIGHT = PREFIX + "in_flight_requests"                   # gauge, accepted and not yet answered
INSTANCE_READY = PREFIX + "instance_ready"                  # gauge, 1 when loaded and warmed up
MODEL_LOAD_SECONDS = PREFIX + "model_load_seconds"          # gauge, per instance
WARMUP_SECONDS = PREFIX + "warmup_seconds"                  # gauge, per instance
HTTP_BACKLOG = PREFIX + "http_backlog"                      # gauge, requests waiting for a waitress thread

REQUEST_LABELS = ("service", "route", "status")
STAGE_LABELS = ("service", "instance")
