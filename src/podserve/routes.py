"""The HTTP paths every pod serves; the server and the manifests both take them from here."""

#: Readiness, startup probe and service discovery (Kong): 200 only when ready to serve.
PING_PATH = "/api/ping"
#: Liveness: fails only when the process is wedged, never because the model is loading.
LIVE_PATH = "/api/live"
#: Prometheus text exposition.
METRICS_PATH = "/metrics"
#: The prefix of a service's own route, `/api/<service_name>`.
API_PREFIX = "/api/"

#: The methods that read a resource: what the probes, the metrics page and the v2 metadata answer.
READ_METHODS = ("GET", "HEAD")

#: Service names that would collide with the routes above.
RESERVED_SERVICE_NAMES = frozenset({"ping", "live", "metrics", "ab-test", "v2"})


def service_path(service_name: str) -> str:
    """Return the pod-local path of a service's inference route."""
    return API_PREFIX + service_name
