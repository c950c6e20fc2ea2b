"""The offline example (examples/offline/value.py): Kafka workers per region and grey, scaled by KEDA on lag.

Validated like the online manifests: kubernetes-validate --strict at the oldest and newest
Kubernetes we support, the CRD schemas in ../shared/schemas/crds with unknown fields
rejected (the KEDA ScaledObject and the PodMonitor), `kubectl kustomize`, and our own
checks (offline_manifests.check_stage). The online example's output is unchanged (the
golden files test).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from kube_schemas import all_schema_errors, schema_errors
from manifest_helpers import REPO, kustomize, read_tree
from podserve import kafka_access
from podserve.offline_settings import BOOTSTRAP_ENV, OfflineSettings
from podserve.settings import SettingsError
from podserve.tooling import offline_manifests, render
from podserve.tooling.output import NOT_DEPLOYED

EXAMPLE = REPO / "examples" / "offline" / "value.py"
STAGES = ["grey", "hk", "eu", "na"]


@pytest.fixture(scope="module")
def offline(conf) -> render.Rendered:
    return render.render(EXAMPLE, conf=conf, image_tag="golden")


def test_render_all_writes_four_stages_that_pass_every_schema(tmp_path, kubectl):
    assert render.main(["--all", "--values", str(EXAMPLE), "--out", str(tmp_path), "--image-tag", "golden"]) == 0
    tree = read_tree(tmp_path)
    assert tree["ab"] == []  # no A/B copy: one of a consumer would split the stream
    assert (tmp_path / "ab" / NOT_DEPLOYED).read_text() == render.NO_OFFLINE_COPY + "\n"
    assert sorted(tree) == sorted([*STAGES, "ab"])
    for stage in STAGES:
        assert sorted(d["kind"] for d in tree[stage]) == ["Deployment", "PodDisruptionBudget", "PodMonitor",
                                                          "ScaledObject"]
        built = kustomize(kubectl, tmp_path / stage, tmp_path)
        assert len(built) == 4
    docs = [doc for stage in STAGES for doc in tree[stage]]
    assert all_schema_errors(docs) == []


def test_the_scaled_object_is_really_checked_by_the_keda_schema(offline):
    scaled = copy.deepcopy(next(d for d in offline.stages["hk"] if d["kind"] == "ScaledObject"))
    assert schema_errors(scaled) == []
    scaled["spec"]["minReplicaCount"] = "1"
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1000
    scaled["spec"]["scaleTarget"] = scaled["spec"].pop("scaleTargetRef")
    errors = " ".join(schema_errors(scaled))
    assert "minReplicaCount" in errors and "lagThreshold" in errors and "scaleTarget" in errors, errors


def test_production_scales_on_lag_and_grey_has_its_own_stream_group_and_sink(offline):
    by_stage = {stage: {d["kind"]: d for d in docs} for stage, docs in offline.stages.items()}
    hk = by_stage["hk"]["ScaledObject"]["spec"]
    assert (hk["minReplicaCount"], hk["maxReplicaCount"]) == (1, 3)
    assert hk["triggers"] == [{"type": "kafka", "metadata": {
        "bootstrapServersFromEnv": BOOTSTRAP_ENV, "topic": "like.text-lines", "consumerGroup": "like.text-direction-offline",
        "lagThreshold": "1000", "offsetResetPolicy": "earliest"}, "authenticationRef": {"name": "podserve-kafka"}}]
    grey = by_stage["grey"]
    assert grey["ScaledObject"]["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "like.grey.text-direction-offline"
    env = {e["name"]: e for e in grey["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PODSERVE_SOURCE_TOPIC"]["value"] == "like.grey.text-lines"
    assert grey["ScaledObject"]["spec"]["triggers"][0]["metadata"]["topic"] == "like.grey.text-lines"
    assert env["PODSERVE_CONSUMER_GROUP"]["value"] == "like.grey.text-direction-offline"
    assert env["PODSERVE_SINK_TOPIC"]["value"] == "like.grey.text-directions"
    assert env[BOOTSTRAP_ENV] == {"name": BOOTSTRAP_ENV, "valueFrom": {"configMapKeyRef": offline_manifests.KAFKA_CONFIGMAP}}
    # the principal from the platform's Secret in the namespace (grey's, in grey's namespace), never a value
    assert env["PODSERVE_KAFKA_USERNAME"] == {"name": "PODSERVE_KAFKA_USERNAME", "valueFrom": {"secretKeyRef": {
        "name": "podserve-kafka-credentials", "key": "username"}}}
    assert env["PODSERVE_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "podserve-kafka-credentials",
                                                                           "key": "password"}
    assert env["PODSERVE_KAFKA_SECURITY_PROTOCOL"]["valueFrom"]["configMapKeyRef"]["name"] == "podserve-kafka"
    assert not any("value" in e for n, e in env.items() if n.startswith("PODSERVE_KAFKA_"))
    assert "replicas" not in grey["Deployment"]["spec"]


@pytest.mark.parametrize("change, says", [
    (lambda d: d["Deployment"]["spec"].update(replicas=2), "would fight"),
    (lambda d: d["ScaledObject"]["spec"].update(minReplicaCount=2), "not from the stage's 1 replicas up"),
    (lambda d: d["ScaledObject"]["spec"]["triggers"][0]["metadata"].update(consumerGroup="like.text-direction-offline"),
     "one kafka trigger"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0].update(command=["python", "-m", "podserve.runtime"]),
     "must run python -m podserve.runtime.offline"),
    (lambda d: d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].update(path="/api/ping"),
     "livenessProbe must GET /api/live"),
    (lambda d: [e.update(value="like.text-directions") for e in d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "PODSERVE_SINK_TOPIC"], "topics or group from its env that differ"),
    (lambda d: d["PodMonitor"]["spec"]["selector"]["matchLabels"].update(stage="hk"), "does not select"),
    (lambda d: [e.update(valueFrom=None, value="like") for e in d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"] == "PODSERVE_KAFKA_USERNAME"], "PODSERVE_KAFKA_USERNAME must come from"),
    (lambda d: d["ScaledObject"]["spec"]["triggers"][0].pop("authenticationRef"), "TriggerAuthentication podserve-kafka"),
], ids=["replicas", "min", "group", "command", "liveness", "sink", "selector", "a username of the repo's", "KEDA without the principal"])
def test_the_offline_checks_catch_a_broken_object(offline, conf, change, says):
    docs = copy.deepcopy(offline.stages["grey"])
    change({d["kind"]: d for d in docs})
    problems = [str(p) for p in offline_manifests.check_stage(docs, offline.values, conf, conf.stages["grey"])]
    assert any(says in p for p in problems), problems


def test_an_offline_stage_with_a_service_is_refused(offline, conf):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "text-direction-offline",
                                                                   "namespace": "podserve"}}
    problems = [str(p) for p in offline_manifests.check_stage(offline.stages["hk"] + [service], offline.values, conf,
                                                              conf.stages["hk"])]
    assert any("takes no traffic" in p for p in problems), problems


def test_the_ab_stage_is_refused_for_an_offline_service(tmp_path, capsys):
    assert render.main(["--stage", "ab", "--values", str(EXAMPLE), "--out", str(tmp_path)]) == 2
    assert "'ab' is not a stage of an offline service" in capsys.readouterr().err


def test_the_ab_and_left_out_regions_jobs_of_an_offline_service_end_at_once_passed(tmp_path):
    # CI's ab_test job runs for every service: for Kafka workers it must pass, not fail on missing manifests. And
    # `regions` binds workers as it binds pods: a left-out region gets no consumer of its topics.
    values = tmp_path / "value.py"
    values.write_text(EXAMPLE.read_text() + "\nregions = ['hk']\n")
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(values), "--out", str(out)]) == 0
    assert {p.parent.name for p in out.glob("*/deployment.yaml")} == {"grey", "hk"}
    for stage in ("ab", "eu", "na"):  # CI's job line; no KUBECONFIG: it never reaches a cluster
        done = subprocess.run([sys.executable, "-m", "podserve.tooling.deploy", "apply", "--stage", stage,
                               "--manifests", str(out)], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
        assert done.returncode == 0, done.stderr
        assert f"{stage}: not deployed here" in done.stdout


def test_grey_s_names_come_from_grey_name_under_the_prefix_only_grey_s_principal_writes(offline):
    production, grey = offline.values.worker_settings(), offline.values.worker_settings(grey=True)
    # its source too: grey's stream is its own, never production's (production's data; grey runs any branch's code)
    for name in ("source_topic", "sink_topic", "dead_letter_topic", "consumer_group"):
        assert getattr(grey, name) == kafka_access.grey_name(getattr(production, name), "like")
        assert getattr(grey, name).startswith("like.grey.") and not getattr(production, name).startswith("like.grey.")


@pytest.mark.parametrize("name, value", [("sink_topic", "s" * 250), ("dead_letter_topic", "d" * 250),
                                         ("source_topic", "text-lines\n"), ("sink_topic", "text-directions\n")])
def test_the_worker_refuses_a_topic_kafka_would(name, value):
    settings = OfflineSettings(source_topic="text-lines", consumer_group="g", sink_topic="text-directions",
                               dead_letter_topic="text-lines-dead", kafka_bootstrap="127.0.0.1:9092")
    settings.check()
    with pytest.raises(SettingsError, match="must be a Kafka name"):
        OfflineSettings(**{**settings.__dict__, name: value}).check()
