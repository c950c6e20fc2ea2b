"""Where our pod's CPU and a request's time go, from the pod's own /metrics: by process and by stage (issue 70).

The split layout publishes each process's CPU by role (`podserve_process_cpu_seconds_total{role}`: front, decoder,
model, supervisor) and the latency histograms every layout keeps. Over a window, the first gives each role's CPU per
request; the histograms' sums over their counts give the mean time of a request in the pod, of an input queued for
a batch and of a predict call. The rest of a request's time in the pod is its decode, its encode and the hand-offs
between threads and processes.
"""

from __future__ import annotations

from podserve import metric_names as names

#: The stages a request's time in the pod splits into: (name, histogram). The first is the whole time in the pod,
#: from the request read to its answer written.
STAGES = (("request, in the pod", names.REQUEST_SECONDS), ("queued for a batch", names.QUEUE_WAIT_SECONDS),
          ("predict call (a batch)", names.INFERENCE_SECONDS))


def stage_totals(server) -> dict[str, tuple[float, float]]:
    """Each of STAGES' histogram (sum, count) so far on the server's /metrics; {} for Gunicorn or a silent server."""
    try:
        return {stage: server.histogram_totals(metric) for stage, metric in STAGES} if server.kind == "ours" else {}
    except OSError:
        return {}


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Each stage's mean milliseconds between two stage_totals: a request's, a queued input's, a predict call's."""
    means = {}
    for stage, (total, count) in after.items():
        spent, times = total - before.get(stage, (0.0, 0.0))[0], count - before.get(stage, (0.0, 0.0))[1]
        if times > 0:
            means[stage] = round(1000 * spent / times, 3)
    return means


def role_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Each role's CPU milliseconds a request between two `Server.role_cpu_seconds` reads over `requests`."""
    return {role: round(1000 * (used - before.get(role, 0.0)) / max(1, requests), 3) for role, used in after.items()}


def split_window(server, concurrency: int, seconds: int) -> dict:
    """One more window of `server` at `concurrency`: its throughput, each role's CPU per request and the stages'
    mean milliseconds (not part of the tables' medians)."""
    roles, stages = server.role_cpu_seconds(), stage_totals(server)
    window = server.measure(concurrency, seconds)
    return {"concurrency": concurrency, "throughput_rps": round(window.throughput_rps, 1),
            "pod_cpu_ms_per_request": round(1000 * window.server_cpu_s / max(1, window.requests), 3),
            "cpu_ms_per_request_by_process": role_ms_per_request(roles, server.role_cpu_seconds(), window.requests),
            "stage_ms": stage_means(stages, stage_totals(server))}
