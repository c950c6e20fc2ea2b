"""Every rendered stage is accepted by a real apiserver (server-side apply, strict field validation); a typo is not.

Real: kube-apiserver's decoding, OpenAPI and CRD structural-schema validation, admission
(PodSecurity included). Applied as a server-side dry run (dryRun=All): every check a real
apply passes through, nothing stored, so all stages and services can be checked side by side.
The session's cluster is one region's; a stage of another region goes to a copy of the team's
namespace labelled with that stage, as its own region's chart labels it (the admission policies
hold a pod template's stage to its namespace's), and is checked with the policies' parameters of
its own region (podserve-system/podserve-limits as that region's chart writes it: its registry, GPU
resources and pools), put back to the session's region's afterwards.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest
from kubernetes.client.exceptions import ApiException

SERVICES = ("example", "offline-example", "cpu_only", "autoscaled", "kong", "big", "tiny_team_y")


@pytest.fixture
def stage_namespace(core, control_plane, conf):
    """The namespace a stage's objects are applied to here: their own in the session's region, else a copy of it
    (labels and annotations as the chart made them) whose stage label is the stage's, deleted afterwards."""
    copies: dict[tuple[str, str], str] = {}

    def namespace(name: str, stage: str) -> str:
        if conf.stages[stage].region == control_plane.region:
            return name
        if (name, stage) not in copies:
            live = core.read_namespace(name).metadata
            copy_name = f"{name}-{stage}-{uuid.uuid4().hex[:6]}"
            core.create_namespace({"metadata": {"name": copy_name, "annotations": live.annotations,
                                                "labels": {**live.labels, "podserve.io/stage": stage}}})
            copies[(name, stage)] = copy_name
        return copies[(name, stage)]

    yield namespace
    for name in copies.values():
        core.delete_namespace(name)


#: How long the apiserver may take to read changed policy parameters (its informer on the ConfigMap).
PARAMS_SETTLE_SECONDS = 10.0


@pytest.fixture
def region_limits(core, control_plane, conf):
    """Set the admission policies' parameters to a region's (podserve.tooling.chart_values.pod_limits, as the chart
    writes them); the session region's put back afterwards."""
    from podserve.tooling.chart_values import pod_limits

    original = core.read_namespaced_config_map("podserve-limits", "podserve-system").data

    def use(region: str) -> None:
        data = original if region == control_plane.region else {k: str(v) for k, v in pod_limits(conf, region).items()}
        core.patch_namespaced_config_map("podserve-limits", "podserve-system", {"data": data})

    yield use
    use(control_plane.region)


def moved(doc: dict, namespace: str) -> dict:
    """`doc` in `namespace`; a ScaledObject's queries select that namespace's series (podserve-autoscalers holds a
    prometheus trigger to its own namespace's)."""
    found = copy.deepcopy(doc)
    was, found["metadata"]["namespace"] = found["metadata"]["namespace"], namespace
    for trigger in found["spec"].get("triggers", []) if found["kind"] == "ScaledObject" else []:
        if "query" in trigger["metadata"]:
            trigger["metadata"]["query"] = trigger["metadata"]["query"].replace(f'namespace="{was}"',
                                                                                f'namespace="{namespace}"')
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_every_stage_is_accepted_with_strict_validation(applier, services, service, stage_namespace, region_limits,
                                                        conf, control_plane):
    rendered = services[service]
    refused = []
    applied = 0
    region, settling = control_plane.region, 0.0
    for stage, docs in rendered.stages.items():
        if conf.stages[stage].region != region:
            region = conf.stages[stage].region
            region_limits(region)
            settling = time.monotonic() + PARAMS_SETTLE_SECONDS
        for doc in docs:
            if "namespace" in doc["metadata"]:
                doc = moved(doc, stage_namespace(doc["metadata"]["namespace"], stage))
            result = None
            while result is None:
                try:
                    result = applier.apply(doc, dry_run=True)
                except ApiException as exc:
                    if time.monotonic() < settling:  # the region's parameters may not be read yet: again
                        time.sleep(0.5)
                        continue
                    refused.append(f"{stage}: {doc['kind']} {doc['metadata']['name']}: {exc.status} {exc.body}")
                    break
            if result is None:
                continue
            assert result["kind"] == doc["kind"] and result["metadata"]["uid"]
            applied += 1
    assert refused == []
    assert applied == sum(len(docs) for docs in rendered.stages.values()) >= 4 * len(rendered.stages)


def test_the_apiserver_refuses_an_unknown_field_in_a_virtual_service(api, applier, services):
    from kubernetes import client

    (route,) = [d for d in services["example"].stages["grey"] if d["kind"] == "VirtualService"]
    typo = copy.deepcopy(route)
    typo["spec"]["http"][0]["timeoutt"] = "5s"
    # Server-side apply checks the object against the CRD's schema while building the patch:
    # the apiserver answers 500 "failed to create typed patch object" (its code, not ours).
    with pytest.raises(ApiException) as refused:
        applier.apply(typo, dry_run=True)
    assert refused.value.status == 500
    assert ".spec.http[0].timeoutt: field not declared in schema" in json.loads(refused.value.body)["message"]
    # A create with fieldValidation=Strict: 400, strict decoding error.
    group, version = typo["apiVersion"].split("/")
    with pytest.raises(ApiException) as strict:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, typo["metadata"]["namespace"], "virtualservices", typo, field_validation="Strict",
            dry_run="All")
    assert strict.value.status == 400
    assert 'strict decoding error: unknown field "spec.http[0].timeoutt"' in json.loads(strict.value.body)["message"]
    assert applier.apply(route, dry_run=True)["spec"]["http"] == route["spec"]["http"]  # without the typo: in
