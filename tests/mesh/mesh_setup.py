"""The mesh tests' set-up, shared by conftest.py and the test modules: paths, the test service, faster conf/."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from podserve.testbed.server_logs import runtime_faults

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNTIME_TESTS = REPO / "tests" / "runtime"  # fixture_handlers.Affine, which mesh_handlers extends

HOST = "infer-hk.example.com"
SERVICES = ("test", "test-2")
PRODUCTION_PODS = 3

#: The test services' value.py: CPU, the affine model, small batches and queues.
VALUES = dict(service_name="test", username="like", handler="mesh_handlers:Switchable", model_path="model/affine.onnx",
              cpu=1, memory="1Gi", gpu_num=0, gpu_memory=0, ins_num_per_gpu=1, replicas=PRODUCTION_PODS,
              ab_replicas=1, hk_replicas=PRODUCTION_PODS, eu_replicas=1, na_replicas=1, init_delay_second=60,
              use_decode_sidecar=False, use_srv=False, host_port=0, max_batch_size=4, max_batch_delay_ms=2,
              queue_size=32, request_timeout_ms=10000, drain_seconds=1,
              # the mesh's services are sent numbers, never images: a small image cap keeps the memory plan's share of
              # pixels (each request thread may decode one) within 1Gi at the 32 threads test_mirror runs
              max_image_pixels=250_000)

#: What the suite shortens in conf/platform.yaml (probe period, preStop, outlier times, slow start, scrape interval).
FAST = {"pod": {"probe_period_seconds": 1, "probe_timeout_seconds": 1, "prestop_sleep_seconds": 1},
        "mesh": {"outlier_detection": {"consecutive5xxErrors": 5, "interval": "1s", "baseEjectionTime": "3s",
                                       "maxEjectionPercent": 50},
                 "slow_start": "1s", "propagation_seconds": 2},
        # the testbed's Prometheus scrapes every second; the PodMonitor says so, and the verdict reads its window's
        # end two intervals later (analysis.py): 2 s, not 30
        "monitoring": {"scrape_interval": "1s"}}


#: GitLab's variables in the default branch's pipeline (protected): grey rendered so takes production's mirror.
DEFAULT_BRANCH_VARIABLES = {"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_REF_PROTECTED": "true"}


def write_values(folder: Path, **changes) -> Path:
    """Write a test service's value.py (VALUES with `changes`); return its path."""
    fields = dict(VALUES, **changes)
    path = folder / f"{fields['service_name']}.py"
    path.write_text('"""A mesh test service."""\n' + "".join(f"{k} = {v!r}\n" for k, v in fields.items()))
    return path


def fast_conf_dir(folder: Path) -> Path:
    """Copy conf/ to `folder` with FAST applied; return the copy."""
    conf = folder / "conf"
    shutil.copytree(REPO / "conf", conf)
    platform = yaml.safe_load((conf / "platform.yaml").read_text())
    for section, changes in FAST.items():
        platform[section].update(changes)
    (conf / "platform.yaml").write_text(yaml.safe_dump(platform))
    return conf


def stop_checked(mesh) -> None:
    """Stop a mesh; fail if its Envoy refused an update from istiod or ran an Istio extension (issue 65, It must
    show 3: every mesh of the suite is checked so at its end), or if a pod logged a fault of the runtime's own."""
    problems = mesh.gateway_problems()
    mesh.stop()
    assert problems == [], problems
    faults = {log.name: runtime_faults(log.read_text(errors="replace")) for log in (mesh.work / "logs").glob("*.log")}
    assert not any(faults.values()), {name: found for name, found in faults.items() if found}
