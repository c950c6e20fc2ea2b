"""The platform chart: `helm lint --strict`, and `helm template` output that passes the schemas and fits conf/.

Run with the real helm binary (pinned in .tools/bin by `make tools`), for the chart's own
defaults and for each region's values written from conf/ (podserve.tooling.chart_values).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from kube_schemas import all_schema_errors
from manifest_helpers import REPO, run_tool
from podserve import metric_names
from podserve.tooling import tenancy
from podserve.tooling.chart_values import chart_values

CHART = REPO / "charts" / "podserve-platform"
REGIONS = ("hk", "eu", "na")


def values_file(conf, region, tmp_path):
    path = tmp_path / f"values-{region}.yaml"
    path.write_text(yaml.safe_dump(chart_values(conf, region)))
    return path


def template(helm, chart, tmp_path, *args) -> list[dict]:
    result = run_tool([helm, "template", "podserve-platform", chart, *args], tmp_path)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_lint_strict_passes_with_defaults_and_every_region(helm, conf, tmp_path):
    for extra in [[]] + [["-f", values_file(conf, region, tmp_path)] for region in REGIONS]:
        result = run_tool([helm, "lint", "--strict", CHART, *extra], tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_lint_refuses_values_the_schema_does_not_know(helm, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespaces: [{name: podserve, hostPorts: true, extra: 1}]\n")
    assert run_tool([helm, "lint", "--strict", CHART, "-f", bad], tmp_path).returncode != 0


@pytest.mark.parametrize("region", (None,) + REGIONS)
def test_the_templated_chart_passes_the_schemas(helm, conf, tmp_path, region):
    args = ["-f", values_file(conf, region, tmp_path)] if region else []
    docs = template(helm, CHART, tmp_path, *args)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Gateway", "LimitRange", "Namespace",
        "NetworkPolicy", "PodMonitor", "PriorityClass", "PrometheusRule", "ResourceQuota", "Role", "RoleBinding",
        "ServiceAccount", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    assert all_schema_errors(docs) == []


def test_the_rollouts_controller_reads_no_secret_and_runs_no_job_beyond_its_namespace(helm, conf, tmp_path):
    """Argo's own install grants cluster-wide Secret reads and Job writes (for analysis providers the platform
    refuses): the chart's ClusterRole grants neither; Secrets only in the controller's namespace (notifications)."""
    docs = template(helm, CHART, tmp_path, "-f", values_file(conf, "hk", tmp_path))
    (cluster_role,) = [d for d in docs
                       if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "podserve-argo-rollouts"]
    granted = {(resource, verb) for rule in cluster_role["rules"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert not {r for r, _ in granted} & {"secrets", "configmaps"}
    assert not {v for r, v in granted if r == "jobs"} - {"get", "list", "watch"}
    assert ("rollouts", "update") in granted and ("virtualservices", "update") in granted
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "podserve-argo-rollouts"]
    assert role["metadata"]["namespace"] == "argo-rollouts"


@pytest.mark.parametrize("region", REGIONS)
def test_the_chart_holds_what_each_stage_of_the_region_needs(helm, conf, tmp_path, region):
    docs = template(helm, CHART, tmp_path, "-f", values_file(conf, region, tmp_path))
    namespaces = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Namespace"}
    gateways = {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in docs if d["kind"] == "Gateway"}
    bound = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    for stage, team in ((s, t) for s in conf.stages.values() if s.region == region for t in conf.teams):
        labels = namespaces[stage.namespace_for(team)]
        assert labels["istio-injection"] == "enabled" and labels["pod-security.kubernetes.io/warn"] == "restricted"
        assert labels["pod-security.kubernetes.io/enforce"] == ("privileged" if stage.service_discovery else "restricted")
        assert labels["podserve.io/team"] == team
        assert stage.namespace_for(team) in bound
        # Every service namespace: its quota (grey and ab the preview one, production the team's), its brokers.
        (quota,) = [d for d in docs if d["kind"] == "ResourceQuota" and d["metadata"]["namespace"] ==
                    stage.namespace_for(team)]
        assert quota["spec"]["hard"] == tenancy.quota(conf, stage, team) and quota["spec"]["hard"]["requests.cpu"]
        (brokers,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "podserve-kafka"
                      and d["metadata"]["namespace"] == stage.namespace_for(team)]
        assert brokers["data"] == {"bootstrap": conf.regions[region].kafka_bootstrap,
                                   "security_protocol": conf.regions[region].kafka_security_protocol}
        (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == stage.namespace_for(team)]
        secrets = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
        # CI may read the namespace's Kafka principal (the offline smoke), and no other Secret, and write none
        assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["podserve-kafka-credentials"],
                            "verbs": ["get"]}]
        hosts = [h for server in gateways[stage.gateway]["spec"]["servers"] for h in server["hosts"]]
        assert stage.ingress_host in hosts


@pytest.mark.parametrize("region", REGIONS)
def test_every_resource_a_pod_may_ask_is_counted_in_each_namespace_s_quota(helm, conf, tmp_path, region):
    """Issue 68: podserve-resources admits only the resources of the limits' list; each is in every team namespace's
    ResourceQuota (na's GPU memory the GPUs' worth, eu's MIG slice), and the LimitRange gives the mesh's containers
    the local disk the quota needs them to ask."""
    docs = template(helm, CHART, tmp_path, "-f", values_file(conf, region, tmp_path))
    (limits,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "podserve-limits"]
    allowed = limits["data"]["resources"].split(",")
    assert allowed == ["cpu", "memory", "ephemeral-storage", *tenancy.extended_resources(conf, region)]
    gpu = conf.regions[region].gpu
    for stage, team in ((s, t) for s in conf.stages.values() if s.region == region for t in conf.teams):
        namespace = stage.namespace_for(team)
        (quota,) = [d["spec"]["hard"] for d in docs if d["kind"] == "ResourceQuota"
                    and d["metadata"]["namespace"] == namespace]
        assert all(f"requests.{resource}" in quota for resource in allowed), (namespace, quota)
        assert quota["requests.ephemeral-storage"] == quota["limits.ephemeral-storage"]
        gpus = tenancy.quota_of(conf, stage, team).gpus
        if gpu.memory_resource:  # HAMi: MiB, as render asks it per pod
            assert quota[f"requests.{gpu.memory_resource}"] == str(gpus * gpu.memory_gib * 1024)
        (defaults,) = [d["spec"]["limits"] for d in docs if d["kind"] == "LimitRange"
                       and d["metadata"]["namespace"] == namespace]
        disk = conf.platform.mesh.sidecar_ephemeral_storage
        assert defaults == [{"type": "Container", "default": {"ephemeral-storage": disk},
                             "defaultRequest": {"ephemeral-storage": disk}}]
    assert {r for r in allowed if r.startswith("nvidia.com/")} == {gpu.resource, *([gpu.memory_resource] if
                                                                                   gpu.memory_resource else [])}


def _peer(namespace: str, selector: dict) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": selector}}


@pytest.mark.parametrize("region", REGIONS)
def test_every_team_namespace_is_closed_but_to_what_the_platform_needs(helm, conf, tmp_path, region):
    """Default deny in and out, then: the stage's gateway pods and Prometheus to the http port, Kong's networks too
    where pods take host ports, every pod to DNS and istiod, offline workers to the brokers' networks and ports."""
    docs = template(helm, CHART, tmp_path, "-f", values_file(conf, region, tmp_path))
    settings, network, http = conf.regions[region], conf.platform.network, [{"protocol": "TCP", "port": "http"}]
    for stage, team in ((s, t) for s in conf.stages.values() if s.region == region for t in conf.teams):
        policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"
                    and d["metadata"]["namespace"] == stage.namespace_for(team)}
        assert set(policies) == {"podserve-default-deny", "podserve-from-gateway", "podserve-from-prometheus",
                                 "podserve-to-dns-and-istiod", "podserve-offline-to-brokers",
                                 *(["podserve-from-kong"] if stage.service_discovery else [])}
        assert policies["podserve-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        gateway_namespace = stage.gateway.split("/")[0]
        assert policies["podserve-from-gateway"]["ingress"] == [
            {"from": [_peer(gateway_namespace, settings.gateway_selector)], "ports": http}]
        assert policies["podserve-from-prometheus"]["ingress"] == [
            {"from": [_peer(network.prometheus.namespace, network.prometheus.selector)], "ports": http}]
        if stage.service_discovery:
            assert policies["podserve-from-kong"]["ingress"] == [
                {"from": [{"ipBlock": {"cidr": cidr}} for cidr in settings.kong_networks], "ports": http}]
        dns, istiod = network.dns, network.istiod
        assert policies["podserve-to-dns-and-istiod"]["egress"] == [
            {"to": [_peer(dns.namespace, dns.selector)],
             "ports": [{"protocol": "UDP", "port": dns.port}, {"protocol": "TCP", "port": dns.port}]},
            {"to": [_peer(istiod.namespace, istiod.selector)], "ports": [{"protocol": "TCP", "port": istiod.port}]}]
        brokers = policies["podserve-offline-to-brokers"]
        assert brokers["podSelector"] == {"matchLabels": {tenancy.MODE_LABEL: tenancy.OFFLINE_MODE}}
        assert brokers["egress"] == [{"to": [{"ipBlock": {"cidr": cidr}} for cidr in settings.kafka_networks],
                                      "ports": [{"protocol": "TCP", "port": int(settings.kafka_bootstrap.split(":")[-1])}]}]


def test_the_policies_and_namespaces_use_the_names_tenancy_defines(helm, tmp_path):
    """The chart's CEL and namespace metadata spell the keys podserve.tooling.tenancy defines (its one source)."""
    docs = template(helm, CHART, tmp_path)
    policies = json.dumps([d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"])
    namespace = next(d for d in docs if d["kind"] == "Namespace" and tenancy.NAMESPACE_TEAM in d["metadata"]["labels"])
    for key in (tenancy.NAMESPACE_TEAM, tenancy.NAMESPACE_HOSTS, tenancy.NAMESPACE_ROUTE_PREFIX,
                tenancy.NAMESPACE_DEPLOYER, tenancy.NAMESPACE_ROUTE_NAMESPACES, tenancy.NAMESPACE_GATEWAY,
                tenancy.NAMESPACE_PRIORITY_CLASS, tenancy.NAMESPACE_HOST_PORT_MIN, tenancy.NAMESPACE_HOST_PORT_MAX):
        assert key in policies
        assert key in {**namespace["metadata"]["labels"], **namespace["metadata"]["annotations"]}
    assert tenancy.NAMESPACE_TIER in namespace["metadata"]["labels"]
    # Kept by helm: an uninstall, or a team left out of the values, never deletes a namespace and its workloads.
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in docs
               if d["kind"] == "Namespace" and tenancy.NAMESPACE_TEAM in d["metadata"]["labels"])
    assert f"object.metadata.labels['{tenancy.TEAM_LABEL}']" in policies


def test_the_slots_take_dashboards_and_alert_rules(helm, tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "files" / "dashboards" / "serving.json").write_text(json.dumps({"title": "podserve", "panels": []}))
    docs = template(helm, chart, tmp_path)
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "podserve-dashboard-serving"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["serving.json"])["title"] == "podserve"
    assert all_schema_errors(docs) == []


def test_alert_rules_use_metrics_the_server_exports(helm, tmp_path):
    rules = [r for d in template(helm, CHART, tmp_path) if d["kind"] == "PrometheusRule"
             for group in d["spec"]["groups"] for r in group["rules"]]
    exported = {v for v in vars(metric_names).values() if isinstance(v, str) and v.startswith(metric_names.PREFIX)
                and v != metric_names.PREFIX}
    recorded = {rule["record"] for rule in rules if "record" in rule}
    # Besides ours: recording rules of the same file, and kube-state-metrics', dcgm-exporter's and Argo Rollouts'
    # controller's metrics.
    known = exported | recorded | {"kube_", "DCGM_FI_", "rollout_info"}
    assert rules and all(any(m in rule["expr"] for m in known) for rule in rules)
