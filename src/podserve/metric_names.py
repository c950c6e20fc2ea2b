"""The names and labels of the server's Prometheus metrics: one place, for code, manifests and dashboards.

The runtime builds its collectors from these names (`podserve.runtime.core.metrics`); the
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
VERB_CPU_SECONDS = PREFIX + "verb_cpu_seconds"              # counter, labels VERB_LABELS: CPU the handler's verbs used
PADDED_ROWS = PREFIX + "padded_rows_total"                  # counter, rows a call ran that were padding (a GPU pads
#                                                             every run to one size); inputs are batch_size's _sum
BATCH_FILL_WAIT_SECONDS = PREFIX + "batch_fill_wait_seconds"  # counter, request-seconds queued while a free lane held
#                                                             its batch open for more (the batching policy's cost)
QUEUE_DEPTH = PREFIX + "queue_depth"                        # gauge, items waiting in the queue
IN_FLIGHT = PREFIX + "in_flight_requests"                   # gauge, accepted and not yet answered
INSTANCE_READY = PREFIX + "instance_ready"                  # gauge, 1 when loaded and warmed up
MODEL_LOAD_SECONDS = PREFIX + "model_load_seconds"          # gauge, per instance
WARMUP_SECONDS = PREFIX + "warmup_seconds"                  # gauge, per instance
HTTP_BACKLOG = PREFIX + "http_backlog"                      # gauge, requests and answers waiting for a request thread
LOOP_RELIEF = PREFIX + "loop_relief"                        # gauge, 1 while the loop hands even cheap steps to threads
ADMISSION_LIMIT = PREFIX + "admission_limit"                # gauge, requests the pod holds before refusing (503)
REFUSALS_HELD = PREFIX + "refusals_held"                    # gauge, 503s decided and held back by the pacing
REFUSAL_RATE = PREFIX + "refusal_rate"                      # gauge, refusals per second the door sends at once
WRITE_TIMEOUTS = PREFIX + "write_timeouts_total"            # counter, connections dropped: the caller read no answer
RUNTIME_FAULTS = PREFIX + "runtime_faults_total"            # counter: faults of the runtime's own it logged (a bug)
OVER_LIMIT_CONNECTIONS = PREFIX + "over_limit_connections_total"  # counter, labels OVER_LIMIT_LABELS: connections
#                                                             beyond max_connections, by outcome
#                                                             (runtime/http/probe_lane.py)
LINGERING_CLOSES = PREFIX + "lingering_closes_total"        # counter, labels LINGER_LABELS: closes after a refusal,
#                                                             by what ended them (runtime/http/lingering.py)

# The split layout's processes (docs/processes.md), labels PROCESS_LABELS unless said; the series above are the pod's
# sums over its processes.
PROCESS_UP = PREFIX + "process_up"                          # gauge, 1 while the process runs and keeps its heartbeat
PROCESS_CPU_SECONDS = PREFIX + "process_cpu_seconds_total"  # counter, the process's CPU (user + system)
PROCESS_RESIDENT_BYTES = PREFIX + "process_resident_memory_bytes"  # gauge, the process's resident memory
PROCESS_REQUESTS_HELD = PREFIX + "process_requests_held"    # gauge, requests a decoder process holds now
PROCESS_RESTARTS = PREFIX + "process_restarts_total"        # counter, labels ("service", "role"): processes started
#                                                             again after one ended (hung decoders included)
REQUESTS_LOST = PREFIX + "requests_lost_total"              # counter, labels ("service", "reason"): requests answered
#                                                             502 because the decoder process holding them ended

# Limits, set once at start-up so dashboards and alerts draw "used against allowed" without value.py.
MAX_BATCH_SIZE = PREFIX + "max_batch_size"                  # gauge, labels ("service",)
BATCH_LIMIT = PREFIX + "batch_limit"                        # gauge, STAGE_LABELS: most inputs one predict call gets
#                                                             (max_batch_size; on the CPU the runs that fit the delay)
REQUEST_TIMEOUT_SECONDS = PREFIX + "request_timeout_seconds"  # gauge, labels ("service",): the default deadline
STARTUP_BUDGET_SECONDS = PREFIX + "startup_budget_seconds"  # gauge, labels ("service",): load + warm-up allowed
QUEUE_CAPACITY = PREFIX + "queue_capacity"                  # gauge, STAGE_LABELS: queue_size of the instance
GPU_MEMORY_LIMIT_BYTES = PREFIX + "gpu_memory_limit_bytes"  # gauge, STAGE_LABELS: gpu_memory (0: no limit)
SLO_OBJECTIVE = PREFIX + "slo_objective"                    # gauge, labels ("service", "slo"): value.py's (0: platform's)

# Offline (Kafka) workers, labels MESSAGE_LABELS; they also export the stage metrics above.
MESSAGES_CONSUMED = PREFIX + "messages_consumed_total"      # counter, messages fetched from the source topic
MESSAGES_PRODUCED = PREFIX + "messages_produced_total"      # counter, results the sink acknowledged
MESSAGES_DEAD_LETTERED = PREFIX + "messages_dead_lettered_total"  # counter, poison messages sent to dead letter
SINK_RETRIES = PREFIX + "sink_retries_total"                # counter, writes the sink failed (retried, not committed)
CONSUMER_LAG = PREFIX + "consumer_lag"                      # gauge, messages in the source not yet consumed
#: Only an offline worker exports these (an online pod never does).
OFFLINE_METRICS = (MESSAGES_CONSUMED, MESSAGES_PRODUCED, MESSAGES_DEAD_LETTERED, SINK_RETRIES, CONSUMER_LAG)

#: Where a request came from: `live` (a caller), or `mirror`, a copy the mesh sent while it answers the caller from
#: production (Istio's mirror appends MIRROR_HOST_SUFFIX to the Host; the caller never sees the copy's answer).
ORIGIN_LABEL = "origin"
ORIGIN_LIVE, ORIGIN_MIRROR = "live", "mirror"
ORIGINS = (ORIGIN_LIVE, ORIGIN_MIRROR)
MIRROR_HOST_SUFFIX = "-shadow"
REQUEST_LABELS = ("service", "route", "status", ORIGIN_LABEL)
PROCESS_LABELS = ("service", "process", "role")


def origin_of(host: str) -> str:
    """Return the `origin` of a request with this Host header: `mirror` when its host (without a port) ends in
    MIRROR_HOST_SUFFIX, else `live`."""
    name, colon, port = host.rpartition(":")
    bare = name if colon and port.isdigit() else host
    return ORIGIN_MIRROR if bare.endswith(MIRROR_HOST_SUFFIX) else ORIGIN_LIVE
#: The `route` of requests for no route of the service's own (404s, /metrics refused, connections refused over the
#: connection limit): what the SLOs leave out.
OTHER_ROUTE = "other"
#: The statuses the server exports on its route from the start, at 0 (requests and their latency histogram), so that
#: a ratio, a rate or a quantile over them reads 0, not "no data", before the first one: the 5xx that dashboards and
#: alert rules select by name (beside every 5xx), and 200 for the latency panels and the latency SLO's rules.
STATUS_OK, STATUS_FAILED, STATUS_SHED, STATUS_DEADLINE = "200", "500", "503", "504"
STARTING_STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_SHED, STATUS_DEADLINE)
OVER_LIMIT_LABELS = ("service", "outcome")
#: What became of a connection over the connection limit (OVER_LIMIT_CONNECTIONS's `outcome`,
#: runtime/http/probe_lane.py).
OVER_LIMIT_PROBE = "probe"       # a probe, answered from the pod's state
OVER_LIMIT_REFUSED = "refused"   # anything else (or no request line in time): the 503, then a lingering close
OVER_LIMIT_EVICTED = "evicted"   # the lane was full: the 503 at once, unread, and closed
OVER_LIMIT_OUTCOMES = (OVER_LIMIT_PROBE, OVER_LIMIT_REFUSED, OVER_LIMIT_EVICTED)
LINGER_LABELS = ("service", "ended")
#: How a lingering close ended (LINGERING_CLOSES's `ended`, runtime/http/lingering.py).
LINGER_ENDED_BY_CALLER = "caller"  # the caller closed: it has read the answer
LINGER_ENDED_BY_TIME = "time"      # LINGER_SECONDS passed: closed; only a caller still sending sees a reset
LINGER_ENDED_BY_BYTES = "bytes"    # the caller sent over LINGER_BYTES more: reset at once
LINGER_ENDINGS = (LINGER_ENDED_BY_CALLER, LINGER_ENDED_BY_TIME, LINGER_ENDED_BY_BYTES)
#: Bucket bounds (seconds) of every latency histogram; an SLO's latency threshold must be one of them.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Bucket bounds of the batch-size histogram.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
#: The model instance inside the pod (e.g. "cpu-0", "gpu0-1"). Not "instance": Prometheus sets that
#: label itself on every scraped series (the target's address), so ours would arrive renamed as
#: "exported_instance"; honouring our labels instead would let the pod overwrite target labels.
INSTANCE_LABEL = "model_instance"
STAGE_LABELS = ("service", INSTANCE_LABEL)
#: `verb`: the handler method (decode, predict, encode, ...): what the service's own code costs, apart from the server's.
VERB_LABELS = ("service", "verb")
MESSAGE_LABELS = ("service", "topic")
