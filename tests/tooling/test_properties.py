"""Property tests: any valid value.py renders manifests that pass every check; any invalid one fails cleanly."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_schemas import all_schema_errors
from podserve import memory_plan
from podserve.routes import RESERVED_SERVICE_NAMES
from podserve.tooling import output, quantity, render
from podserve.tooling.conf import load_conf, load_deploy_policy
from podserve.tooling.deploy import budget
from podserve.tooling.values import FIELDS, pod_layout
from service_files import VALID, value_text

CONF = load_conf()
NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True).filter(
    lambda n: n not in RESERVED_SERVICE_NAMES)


@st.composite
def valid_services(draw) -> dict:
    """A value.py the platform accepts: within conf/'s limits, the team's host ports and preview quota, and with a
    rollout and rollback that fit the deploy job (podserve.tooling.job_time)."""
    team = draw(st.sampled_from(CONF.teams))
    gpu_num = draw(st.sampled_from([0, 1]))
    instances = draw(st.integers(1, 4))
    init_delay = draw(st.integers(1, 1800))
    most = pods_that_fit(init_delay)
    millis = draw(st.integers(1, 16000))
    cpu = draw(st.sampled_from([millis // 1000 or 1, f"{millis}m", millis / 1000]))
    # The least memory whose plan holds for this pod (podserve/memory_plan.py): less is refused, naming memory.
    fields = {**{name: f.default for name, f in FIELDS.items()}, **VALID, "cpu": float(quantity.cpu_cores(cpu)),
              "gpu_num": gpu_num, "ins_num_per_gpu": instances, "memory": "1Gi"}
    least = max(quantity.memory_bytes(CONF.platform.limits.min_memory),
                memory_plan.smallest_memory(*pod_layout(fields, CONF))) >> 20
    mebibytes = draw(st.integers(least, 100 * 1024))
    memory = draw(st.sampled_from([f"{mebibytes}Mi", f"{-(-mebibytes // 1024)}Gi"]))
    ab_most = min(most, preview_replicas(cpu, memory, gpu_num))
    replicas = {"replicas": draw(st.integers(1, min(6, most))), "ab_replicas": draw(st.integers(1, ab_most))}
    regions = {name: draw(st.none() | st.integers(1, min(6, most))) for name in ("hk_replicas", "eu_replicas",
                                                                                  "na_replicas")}
    production = [r if r is not None else replicas["replicas"] for r in regions.values()]
    batch = draw(st.integers(1, 256))
    use_srv = draw(st.booleans())
    ports = CONF.team(team).host_ports
    return {
        "service_name": draw(NAMES),
        "username": team,
        "cpu": cpu,
        "memory": memory,
        "gpu_num": gpu_num,
        "ins_num_per_gpu": instances,
        "gpu_memory": draw(st.integers(1, 10 // instances)) if gpu_num else 0,
        **replicas, **regions,
        "max_replicas": draw(st.just(0) | st.integers(max(production), max(max(production), most))),
        "autoscale_metric": draw(st.sampled_from(["queue_depth", "in_flight"])),
        "autoscale_target": draw(st.none() | st.integers(1, 100) | st.floats(0.5, 100).map(lambda f: round(f, 2))),
        "init_delay_second": init_delay,
        "use_srv": use_srv,
        "host_port": draw(st.integers(ports.min, ports.max)) if use_srv else 0,
        "max_batch_size": batch,
        "queue_size": draw(st.integers(batch, 10_000)),
        "max_batch_delay_ms": draw(st.integers(0, 100) | st.floats(0, 100).map(lambda f: round(f, 3))),
        "request_timeout_ms": draw(st.integers(1, 600_000)),
        "drain_seconds": draw(st.integers(0, 300)),
    }


def pods_that_fit(init_delay: int) -> int:
    """The most pods whose rollout and rollback fit the deploy job at `init_delay` (at least 1: 1800 s fits one)."""
    policy = load_deploy_policy(conf=CONF)
    deadline = budget.progress_deadline_seconds(init_delay, CONF.platform.pod.probe_period_seconds)
    return max(n for n in range(1, 65) if budget.deploy_job_seconds(
        deadline, n, CONF.platform.pod.max_surge, True, policy.lock_wait_seconds)[2] <= policy.ci_job_timeout_seconds)


def preview_replicas(cpu, memory: str, gpu_num: int) -> int:
    """The most ab replicas whose pods, with the surge pod and sidecars, fit conf's preview quota (at least 1)."""
    quota, mesh, surge = CONF.platform.limits.preview_quota, CONF.platform.mesh, CONF.platform.pod.max_surge
    pods = min(quota.pods,
               int(quantity.cpu_cores(quota.cpu) // (quantity.cpu_cores(cpu) + quantity.cpu_cores(mesh.sidecar_cpu))),
               quantity.memory_bytes(quota.memory) // (quantity.memory_bytes(memory)
                                                       + quantity.memory_bytes(mesh.sidecar_memory)),
               quota.gpus // gpu_num if gpu_num else quota.pods)
    return max(1, pods - surge)


