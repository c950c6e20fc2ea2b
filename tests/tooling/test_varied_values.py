"""Varied services render manifests that pass every check: CPU-only, autoscaled, Kong, HAMi, tiny, big; no decode sidecar."""

from __future__ import annotations

import math
import shutil

import pytest
import yaml

from kube_schemas import all_schema_errors
from manifest_helpers import REPO
from podserve.tooling import scaling
from podserve.settings import ServingSettings
from podserve.stop_bounds import ANSWER_GRACE_SECONDS, CLOSE_SECONDS, END_SECONDS
from podserve.tooling import render
from podserve.tooling.conf import load_conf
from podserve.tooling.valuefile import ValueFileError
from service_files import write_values

VARIED = {
    "cpu_only": dict(gpu_num=0, gpu_memory=0, cpu="500m", memory="1Gi", ins_num_per_gpu=2),
    "autoscaled": dict(max_replicas=8, autoscale_metric="in_flight", autoscale_target=2.5, hk_replicas=None),
    "kong": dict(use_srv=True, host_port=21234),
    "big": dict(cpu=24, memory="96Gi", gpu_memory=5, ins_num_per_gpu=2, init_delay_second=1800, hk_replicas=1,
                request_timeout_ms=120000, drain_seconds=30),
    "tiny_team_y": dict(service_name="y", username="imo", replicas=1, hk_replicas=None, eu_replicas=None,
                        na_replicas=None, cpu=1, memory="512Mi", gpu_num=0, gpu_memory=0,
                        # what a 512Mi pod's memory plan holds: smaller images and videos than the defaults
                        max_image_pixels=2_000_000, max_video_bytes=16 << 20, max_video_pixels=1280 * 720),
}


def stage_docs(rendered, stage, kind):
    return [d for d in rendered.stages[stage] if d["kind"] == kind]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, conf):
    folder = tmp_path_factory.mktemp("varied")
    return {name: render.render(write_values(folder, f"{name}.py", **changes), conf=conf, image_tag="t")
            for name, changes in VARIED.items()}


@pytest.mark.parametrize("name", VARIED)
def test_every_object_passes_the_schemas(rendered, name):
    docs = [doc for stage in rendered[name].stages.values() for doc in stage]
    assert all_schema_errors(docs) == []


def test_cpu_only_runs_on_the_cpu_pool_with_threads_shared(rendered):
    (deployment,) = stage_docs(rendered["cpu_only"], "hk", "Rollout")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"podserve.io/pool": "cpu"} and spec["tolerations"] == []
    server = spec["containers"][0]
    assert server["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"}
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["PODSERVE_CPU"] == "0.5" and env["PODSERVE_GPU_NUM"] == "0"
    # no GPU: the CUDA base image's NVIDIA_VISIBLE_DEVICES=all would hand it every GPU of its node (issue 68)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_autoscaled_production_has_a_scaled_object_on_its_own_pods_and_no_fixed_replicas(rendered, conf):
    service = rendered["autoscaled"]
    for stage in ("hk", "eu", "na"):
        (scaled,) = stage_docs(service, stage, "ScaledObject")
        (deployment,) = stage_docs(service, stage, "Rollout")
        assert "replicas" not in deployment["spec"] and stage_docs(service, stage, "HorizontalPodAutoscaler") == []
        # KEDA's HPA scales the Rollout (Argo keeps stable at the count the HPA sets through a canary's steps)
        assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                                                    "name": deployment["metadata"]["name"]}
        assert scaled["spec"]["maxReplicaCount"] == 8
        assert scaled["spec"]["minReplicaCount"] == {"hk": 2, "eu": 1, "na": 1}[stage]
        (trigger,) = scaled["spec"]["triggers"]
        namespace = deployment["metadata"]["namespace"]
        assert trigger == {"type": "prometheus", "metricType": "AverageValue", "metadata": {
            "serverAddress": conf.platform.monitoring.prometheus_address, "threshold": "2.5",
            "query": f'sum({scaling.IN_FLIGHT_SERIES}{{namespace="{namespace}",service="{service.values["service_name"]}"}})'}}
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == \
            conf.platform.autoscaling.scale_down_stabilization_seconds == 300
    for stage in ("grey", "ab"):
        assert stage_docs(service, stage, "ScaledObject") == []
        assert stage_docs(service, stage, "Deployment")[0]["spec"]["replicas"] == 1


def test_kong_host_port_only_where_service_discovery_runs(rendered, conf):
    for stage, docs in rendered["kong"].stages.items():
        (deployment,) = [d for d in docs if d["kind"] == ("Rollout" if conf.stages[stage].production else "Deployment")]
        port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
        assert port.get("hostPort") == (21234 if conf.stages[stage].service_discovery else None)
        assert port["containerPort"] == 8080


def test_hami_region_asks_for_gpu_memory_and_mig_region_for_a_slice(rendered):
    limits = {stage: stage_docs(rendered["big"], stage, "Rollout")[0]["spec"]["template"]["spec"]["containers"][0]
              ["resources"]["limits"] for stage in ("hk", "eu", "na")}
    assert limits["na"]["nvidia.com/gpumem"] == str(5 * 2 * 1024) and limits["na"]["nvidia.com/gpu"] == "1"
    assert limits["eu"]["nvidia.com/mig-2g.20gb"] == "1" and "nvidia.com/gpu" not in limits["eu"]


def test_big_budgets_follow_start_up_and_shutdown(rendered):
    (deployment,) = stage_docs(rendered["big"], "hk", "Rollout")
    pod = deployment["spec"]["template"]
    probe = pod["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1800 and "initialDelaySeconds" not in probe
    # preStop 5 s, then the runtime's bound: drain 30 s, the longest deadline (120 s, and the largest body's upload
    # allowance at the platform's rate), the answer's grace, connections' close, the other processes' end; margin 5 s
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    settings = ServingSettings.from_env(env)
    upload = settings.largest_body_bytes() / settings.min_upload_bytes_per_second
    assert upload > 10  # a large video's allowance: what the old grace (preStop + drain + timeout) left out
    stop = 5 + math.ceil(30 + 120 + upload + ANSWER_GRACE_SECONDS + CLOSE_SECONDS + END_SECONDS)
    assert pod["spec"]["terminationGracePeriodSeconds"] == stop + 5
    assert f'"terminationDrainDuration": "{stop}s"' in pod["metadata"]["annotations"]["proxy.istio.io/config"]
    (vs,) = stage_docs(rendered["big"], "hk", "VirtualService")
    assert {http["timeout"] for http in vs["spec"]["http"]} == {"121s"}


def test_a_service_named_y_stays_a_string_for_kubernetes(rendered, tmp_path, kubectl):
    from manifest_helpers import kustomize
    from podserve.tooling import output
    out = tmp_path / "out"
    output.write_stages(out, rendered["tiny_team_y"].stages)
    text = (out / "hk" / "service.yaml").read_text()
    assert "service: 'y'" in text and "name: 'y'" in text  # YAML 1.1 (kubectl) reads a bare y as true
    built = kustomize(kubectl, out / "hk", tmp_path)
    assert {d["metadata"]["name"] for d in built} == {"y", "y-verdict"}  # its objects, its AnalysisTemplate


def test_the_decode_sidecar_is_refused_because_the_server_decodes_videos_itself(tmp_path):
    with pytest.raises(ValueFileError) as refused:
        render.render(write_values(tmp_path, use_decode_sidecar=True), conf=load_conf(REPO / "conf"))
    assert "use_decode_sidecar" in str(refused.value) and "decodes videos itself" in str(refused.value)
    result = render.render(write_values(tmp_path, use_decode_sidecar=False), conf=load_conf(REPO / "conf"))
    containers = [d for stage in result.stages.values() for d in stage if d["kind"] == "Deployment"][0]
    assert [c["name"] for c in containers["spec"]["template"]["spec"]["containers"]] == ["server"]