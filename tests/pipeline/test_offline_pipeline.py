"""An offline service reaches production (issue 56, It must show 2): CI's job lines as written, on the real node.

Real: the manifests, model and service-image jobs (BuildKit, the local registry), then grey, smoke-grey and deploy-hk,
each its own line run as written with the tooling image laid out from the checkout (its test conf: hk's pools are the
real node's, no freeze window) and the credential GitLab gives the job (the team's preview account, then its
production one); the real node's kubelet and containerd running the workers; a real Kafka broker (on the node's bridge
address, where the pods reach it) with the platform's access on (SASL/SCRAM, the StandardAuthorizer, every team's ACLs
from conf/teams.yaml), which the platform chart's ConfigMap podserve-kafka names and whose principals are in each
namespace's Secret podserve-kafka-credentials (the test writes both as the platform team would for the region's
brokers: grey's namespace gets team like's grey principal, hk's its production one). Production's stream is played by
messages the test (the broker's admin) writes to the source topic; grey has a stream of its own under grey's prefix
(production's data never reaches grey: issue 68), which the test feeds as the team would, and the smoke looks at grey's
group's commits there as grey's principal, sending nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from real_node_kafka import region_brokers, start_node_broker
from real_node_service import REPO, TEAM, RealNodeService, values
from podserve.testbed.deploy_policy import unfrozen_conf
from podserve import kafka_access
from podserve.testbed.processes import poll_until
from podserve.testbed.topics import TopicReader, image_message, send
from podserve.tooling.deploy.kube import CONFIGMAPS, MANAGED, PODS, Kube

sys.path.insert(0, str(REPO / "tests" / "deploy"))
from ci_account import ci_kubeconfig  # noqa: E402 - the deploy tests' way to get an account's credentials

NAME = "offline-ci"
OFFLINE = {"mode": "offline", "source_topic": f"{TEAM}.lines", "sink_topic": f"{TEAM}.directions",
           "dead_letter_topic": f"{TEAM}.lines-dead", "replicas": 1, "hk_replicas": 1, "max_replicas": 1,
           "lag_target": 10}


@pytest.fixture(scope="module")
def broker(real_node, tmp_path_factory):
    """A broker the real node's pods reach, every team's access set."""
    started = start_node_broker(REPO / ".tools", tmp_path_factory.mktemp("kafka-node"))
    yield started
    started.stop()


def test_an_offline_service_passes_grey_its_smoke_and_deploy_hk_with_the_ci_job_lines(build_stage, control_plane,
                                                                                     real_node, broker, tmp_path):
    service = RealNodeService(build_stage, control_plane, real_node, tmp_path, NAME, "offline1")
    # The tooling image built from this checkout carries its conf/: the test conf, without freeze windows (today may
    # be in one), so that deploy-hk deploys.
    unfrozen = unfrozen_conf(tmp_path / "unfrozen", service.checkout / "conf")
    shutil.copy(unfrozen / "deploy.yaml", service.checkout / "conf" / "deploy.yaml")
    (service.checkout / "value.py").write_text(values(NAME, **OFFLINE))
    grey_ns, hk_ns = (service.conf.stages[s].namespace_for(TEAM) for s in ("grey", "hk"))
    credentials = {"KUBECONFIG_PREVIEW_HK": str(ci_kubeconfig(control_plane, tmp_path / "p.kubeconfig", TEAM, "preview")),
                   "KUBECONFIG_HK": str(ci_kubeconfig(control_plane, tmp_path / "h.kubeconfig", TEAM, "production"))}
    admin = Kube(control_plane.api_client())
    with region_brokers(control_plane, {grey_ns: kafka_access.username(TEAM, grey=True),
                                        hk_ns: kafka_access.username(TEAM)}, broker):
        try:
            images = service.build()
            assert (service.checkout / "build/flavor.txt").read_text().strip() == "cpu"
            assert sorted(p.name for p in (service.checkout / "build/manifests/grey").glob("*.yaml")) == [
                "deployment.yaml", "poddisruptionbudget.yaml", "podmonitor.yaml", "scaledobject.yaml"]  # no route
            digest = json.loads((service.checkout / "build/image-metadata.json").read_text())["containerimage.digest"]
            service.let_the_node_pull()
            # Production's stream exists before any worker reads it (grey's, its own, grey's worker creates)
            source, grey_source = OFFLINE["source_topic"], kafka_access.grey_name(OFFLINE["source_topic"], TEAM)
            stream_admin = AdminClient(broker.admin)  # held: a client collected before its future answers cancels it
            stream_admin.create_topics([NewTopic(source, num_partitions=-1, replication_factor=-1)])[source].result(30)
            timings = {}
            for job in ("grey", "smoke-grey", "deploy-hk"):
                if job == "smoke-grey":  # the team feeds grey's stream; production's goes on (for hk's workers)
                    send(broker.client_config(kafka_access.username(TEAM, grey=True)), grey_source, lines(6))
                    send(broker.admin, source, lines(6))
                started = time.monotonic()
                done = build_stage.run_job(job, service.checkout, service.commit, timeout=600, extra=credentials)
                timings[job] = time.monotonic() - started
                print(f"{job}: exit {done.returncode} in {timings[job]:.1f} s\n{done.stdout[-1500:]}")
                assert done.returncode == 0, f"{job} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                if job == "smoke-grey":
                    assert f"worker pod(s) of grey ready in {grey_ns}, each on {digest}" in done.stdout
                    assert f"consumer group {TEAM}.grey.{NAME} on {grey_source}: " in done.stdout
            for namespace in (grey_ns, hk_ns):  # the kubelet runs the build this pipeline pushed, by digest
                (pod,) = [p for p in admin.list(PODS, namespace, f"service={NAME}")["items"]
                          if not p["metadata"].get("deletionTimestamp")]
                assert pod["spec"]["nodeName"] == real_node.name
                assert pod["status"]["containerStatuses"][0]["imageID"].endswith(digest), pod["status"]
            # grey's results went to its own sink, production's to production's (each from its own stream)
            for sink in (kafka_access.grey_name(OFFLINE["sink_topic"], TEAM), OFFLINE["sink_topic"]):
                reader = TopicReader(broker.admin, sink)
                try:
                    poll_until(lambda: reader.read_new(2) is not None and len(reader.records) >= 6,
                               f"6 results in {sink}", 120)
                finally:
                    reader.close()
            assert images and all(image.endswith(f":{service.commit}") for image in images)
        finally:
            for namespace in (grey_ns, hk_ns):  # as the admin: production cannot be deleted with the tool
                for kind in [*MANAGED.values(), CONFIGMAPS]:
                    for item in admin.list(kind, namespace, f"service={NAME}").get("items") or []:
                        admin.delete(kind, namespace, item["metadata"]["name"])


def lines(count: int) -> list[tuple[bytes, bytes]]:
    """`count` messages of the example's text line, as production's stream would carry them."""
    image = (REPO / "examples" / "text-line.png").read_bytes()
    return [(f"line-{i}".encode(), image_message(image, postid=f"line-{i}", seqid=i)) for i in range(count)]
