"""conf/ is read strictly: every problem names its file and key; chart values come from it."""

from __future__ import annotations

import shutil

import pytest
import yaml

from manifest_helpers import REPO
from podserve.tooling import chart_values
from podserve.tooling.conf import ConfError, load_conf


def broken_conf(tmp_path, file: str, change) -> ConfError:
    folder = tmp_path / "conf"
    shutil.copytree(REPO / "conf", folder)
    data = yaml.safe_load((folder / file).read_text())
    change(data)
    (folder / file).write_text(yaml.safe_dump(data))
    with pytest.raises(ConfError) as caught:
        load_conf(folder)
    return caught.value


def test_the_shipped_conf_loads(conf):
    assert list(conf.stages) == ["grey", "ab", "hk", "eu", "na"]
    assert conf.teams == ("like", "imo", "bigolive", "hello")
    assert {s.region for s in conf.stages.values()} == set(conf.regions) == {"hk", "eu", "na"}
    assert conf.stages["grey"].replicas == 1


@pytest.mark.parametrize("file, change, where", [
    ("stages.yaml", lambda d: d["hk"].update(colour="blue"), "stages.yaml: hk.colour"),
    ("stages.yaml", lambda d: d["eu"].pop("namespace"), "stages.yaml: eu.namespace"),
    ("stages.yaml", lambda d: d["ab"].update(namespace="podserve-{team}"), "stages.yaml: hk.namespace"),
    ("stages.yaml", lambda d: d["ab"].update(namespace="podserve-ab"), "stages.yaml: ab.namespace"),
    ("stages.yaml", lambda d: d["hk"].update(route="/api/{user}/"), "stages.yaml: hk.route"),
    ("stages.yaml", lambda d: d["hk"].update(region="mars"), "stages.yaml: hk.region"),
    ("stages.yaml", lambda d: d["hk"].update(gateway="podserve"), "stages.yaml: hk.gateway"),
    ("stages.yaml", lambda d: d["grey"].update(replicas=0), "stages.yaml: grey.replicas"),
    ("stages.yaml", lambda d: d["grey"].update(autoscale="no"), "stages.yaml: grey.autoscale"),
    ("regions.yaml", lambda d: d["na"]["gpu"].update(resource="gpu"), "regions.yaml: na.gpu.resource"),
    ("regions.yaml", lambda d: d["hk"]["node_pools"]["gpu"]["allocatable"].update(memory="120GB"),
     "regions.yaml: hk.node_pools.gpu.allocatable.memory"),
    ("teams.yaml", lambda d: d["teams"].update({"ab-test": d["teams"]["like"]}), "teams.yaml: teams"),
    ("teams.yaml", lambda d: d["teams"]["imo"]["host_ports"].update(min=22000), "teams.yaml: teams.imo.host_ports"),
    ("teams.yaml", lambda d: d["teams"]["hello"]["host_ports"].update(max=30500), "teams.yaml: teams.hello.host_ports"),
    ("teams.yaml", lambda d: d["teams"]["like"]["quota"].update(memory="2TB"), "teams.yaml: teams.like.quota.memory"),
    ("teams.yaml", lambda d: d["teams"]["like"].pop("quota"), "teams.yaml: teams.like.quota"),
    ("platform.yaml", lambda d: d["limits"]["preview_quota"].update(cpu="lots"),
     "platform.yaml: limits.preview_quota.cpu"),
    ("regions.yaml", lambda d: d["hk"].pop("kafka_bootstrap"), "regions.yaml: hk.kafka_bootstrap"),
    ("teams.yaml", lambda d: d.update(gitlab_group="models"), "teams.yaml: gitlab_group"),
    ("teams.yaml", lambda d: d.update(owners=["x"]), "teams.yaml: owners"),
    ("platform.yaml", lambda d: d["kubernetes"].update(oldest="v1.30"), "platform.yaml: kubernetes.oldest"),
    ("platform.yaml", lambda d: d["pod"].update(run_as_user="root"), "platform.yaml: pod.run_as_user"),
])
def test_a_broken_conf_names_file_and_key(tmp_path, file, change, where):
    error = broken_conf(tmp_path, file, change)
    assert where in [p.field for p in error.problems], str(error)


def test_a_missing_conf_file_says_so(tmp_path):
    with pytest.raises(ConfError, match="teams.yaml: is missing"):
        load_conf(tmp_path)


def test_chart_values_follow_the_stages_of_a_region(conf):
    hk = chart_values.chart_values(conf, "hk")
    by_name = {ns["name"]: ns for ns in hk["namespaces"]}
    # One namespace per team and stage (docs/tenancy.md), each with its own account and route prefix.
    assert set(by_name) == {f"podserve-{team}{suffix}" for team in conf.teams for suffix in ("", "-ab", "-grey")}
    assert by_name["podserve-like"] == {
        "name": "podserve-like", "team": "like", "stage": "hk", "tier": "production",
        "account": "podserve-like-production", "hostPorts": True, "hostPortRange": [20000, 22499],
        "hosts": ["infer-hk.example.com"], "routePrefix": "/api/like/",
        "routeNamespaces": ["podserve-like", "podserve-like-grey"],
        "gateway": "istio-ingress/podserve", "priorityClass": "podserve-production", "projectGroup": "models/like/",
        "quota": {"pods": "256", "requests.cpu": "512", "limits.cpu": "512", "requests.memory": "2048Gi",
                  "limits.memory": "2048Gi", "requests.nvidia.com/gpu": "64",
                  # 256 pods of 2Gi (pod.ephemeral_storage) and 256Mi (mesh.sidecar_ephemeral_storage)
                  "requests.ephemeral-storage": "589824Mi", "limits.ephemeral-storage": "589824Mi"}}
    assert by_name["podserve-imo-grey"]["account"] == "podserve-imo-preview"
    assert by_name["podserve-imo-grey"]["routePrefix"] == "/grey/imo/" and not by_name["podserve-imo-grey"]["hostPorts"]
    preview = conf.platform.limits.preview_quota
    assert by_name["podserve-imo-grey"]["quota"] == {
        "pods": str(preview.pods), "requests.cpu": preview.cpu, "limits.cpu": preview.cpu,
        "requests.memory": preview.memory, "limits.memory": preview.memory,
        "requests.nvidia.com/gpu": str(preview.gpus),  # each pod 2304Mi of local disk: 2Gi and its sidecar's 256Mi
        "requests.ephemeral-storage": f"{preview.pods * 2304}Mi",
        "limits.ephemeral-storage": f"{preview.pods * 2304}Mi"}
    assert by_name["podserve-imo-grey"]["priorityClass"] == "podserve-preview"
    assert by_name["podserve-imo-grey"]["routeNamespaces"] == ["podserve-imo-grey"]  # never production's pods
    # eu has only production: its VirtualServices may reach the team's production namespace there, nothing else.
    assert {ns["name"]: ns["routeNamespaces"] for ns in chart_values.chart_values(conf, "eu")["namespaces"]}[
        "podserve-imo"] == ["podserve-imo"]
    assert hk["priorityClasses"][0]["name"] == "podserve-production"
    assert hk["gateways"][0]["hosts"] == ["infer-hk.example.com"]
    assert chart_values.main(["mars"]) == 2
