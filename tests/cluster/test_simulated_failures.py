"""kwok's simulated container failures (podserve.io/simulate) look exactly as a kubelet reports them.

Simulated (cluster/kwok-stages.yaml): container states and the kubelet's events. Real: the
Deployment and ReplicaSet controllers and the scheduler that put the pods on the fake nodes.
Wording checked against Kubernetes v1.35's kubelet (kuberuntime_manager.go, image_manager.go,
prober.go, status/generate.go).
"""

from __future__ import annotations

import copy

import pytest

from waiting import wait_for

FAILURES = ("oom-killed", "crash-loop", "image-pull-backoff", "sandbox-failure", "never-ready", "slow-start")
#: The kubelet's crash back-off after the 1st, 2nd, ... restart (10 s doubling, at most 5 min).
KUBELET_BACKOFFS = ("10s", "20s", "40s", "1m20s", "2m40s", "5m0s")


@pytest.fixture(scope="module")
def simulated(core, applier, services):
    """One single-replica Deployment per failure, from the example's grey stage, in a namespace of its own."""
    namespace = "simulated-failures"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.list_namespaced_service_account(namespace, field_selector="metadata.name=default").items,
             "the default ServiceAccount")
    (base,) = [d for d in services["example"].stages["grey"] if d["kind"] == "Deployment"]
    for failure in FAILURES:
        deployment = copy.deepcopy(base)
        deployment["metadata"].update(name=failure, namespace=namespace)
        deployment["spec"]["selector"]["matchLabels"]["simulate"] = failure
        template = deployment["spec"]["template"]
        template["metadata"]["labels"]["simulate"] = failure
        template["metadata"].setdefault("annotations", {})["podserve.io/simulate"] = failure
        template["spec"]["nodeSelector"] = {"podserve.io/pool": "cpu"}  # leave the GPUs to other tests
        template["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
        applier.apply(deployment)

    def pods():
        found = {}
        for pod in core.list_namespaced_pod(namespace).items:
            statuses = pod.status.container_statuses or []
            if statuses:
                found[pod.metadata.labels["simulate"]] = pod
        return found if len(found) == len(FAILURES) else None

    wait_for(pods, "a container status on each simulated pod", timeout=60)
    # slow-start's second step (killed for failing the startup probe) comes 2 s after the first
    wait_for(lambda: pods()["slow-start"].status.container_statuses[0].restart_count == 1,
             "slow-start killed and restarted", timeout=30)
    yield namespace, pods()
    core.delete_namespace(namespace)


def events_of(core, namespace: str, pod) -> dict[str, list]:
    wanted = {}
    for event in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items:
        wanted.setdefault(event.reason, []).append(event)
    return wanted


def pod_ref(pod) -> str:
    return f"{pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})"


def previous_logs(core, pod) -> str | None:
    """`kubectl logs --previous` of the server container; None until kwok has the pod's Logs object."""
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace, container="server",
                                            previous=True) or None
    except ApiException:
        return None


def not_ready(pod) -> None:
    conditions = {c.type: c for c in pod.status.conditions}
    for kind in ("Ready", "ContainersReady"):
        assert conditions[kind].status == "False" and conditions[kind].reason == "ContainersNotReady"
        assert conditions[kind].message == "containers with unready status: [server]"


@pytest.mark.parametrize("failure,exit_code,reason", [("oom-killed", 137, "OOMKilled"), ("crash-loop", 1, "Error")])
def test_a_crashing_container_is_in_crash_loop_back_off(core, simulated, failure, exit_code, reason):
    namespace, pods = simulated
    pod = core.read_namespaced_pod(pods[failure].metadata.name, namespace)
    (server,) = [s for s in pod.status.container_statuses if s.name == "server"]
    assert pod.status.phase == "Running" and server.ready is False and server.restart_count >= 1
    assert server.state.waiting.reason == "CrashLoopBackOff"
    backoff = KUBELET_BACKOFFS[min(server.restart_count - 1, len(KUBELET_BACKOFFS) - 1)]
    assert server.state.waiting.message == f"back-off {backoff} restarting failed container=server pod={pod_ref(pod)}"
    terminated = server.last_state.terminated
    assert (terminated.exit_code, terminated.reason) == (exit_code, reason)
    # The container's last log lines: served by kwok as the node's kubelet, through the apiserver
    # (kubectl logs --previous), and in the termination message (terminationMessagePolicy FallbackToLogsOnError).
    logs = wait_for(lambda: previous_logs(core, pod), "kwok serving the crashed container's log")
    assert logs == terminated.message
    not_ready(pod)
    events = wait_for(lambda: events_of(core, namespace, pod).get("BackOff"), "the BackOff event")
    assert events[0].type == "Warning" and events[0].source.component == "kubelet" and events[0].count >= 1
    assert events[0].message == f"Back-off restarting failed container server in pod {pod_ref(pod)}"


def test_an_image_that_cannot_be_pulled_is_in_image_pull_back_off(core, simulated):
    namespace, pods = simulated
    pod = pods["image-pull-backoff"]
    server = pod.status.container_statuses[0]
    image = server.image
    assert pod.status.phase == "Pending" and server.restart_count == 0 and server.ready is False
    assert server.state.waiting.reason == "ImagePullBackOff"
    assert server.state.waiting.message.startswith(f'Back-off pulling image "{image}": ErrImagePull: ')
    events = wait_for(lambda: (lambda e: e if len(e.get("Failed", [])) == 3 and "BackOff" in e else None)(
        events_of(core, namespace, pod)), "the image pull events")
    failed = sorted(e.message for e in events["Failed"])
    assert failed[0] == "Error: ErrImagePull" and failed[1] == "Error: ImagePullBackOff"
    assert failed[2].startswith(f'Failed to pull image "{image}": rpc error: code = NotFound')
    assert events["BackOff"][0].message == f'Back-off pulling image "{image}"'


def test_a_pod_whose_sandbox_cannot_be_created_stays_container_creating_on_its_node(core, simulated):
    namespace, pods = simulated
    pod = pods["sandbox-failure"]
    server = pod.status.container_statuses[0]
    assert pod.spec.node_name and pod.status.phase == "Pending" and not pod.status.pod_ip
    assert server.state.waiting.reason == "ContainerCreating" and server.restart_count == 0
    assert not server.started and not server.container_id and not server.last_state.terminated
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True" and conditions["PodReadyToStartContainers"] == "False"
    not_ready(pod)
    (event,) = wait_for(lambda: events_of(core, namespace, pod).get("FailedCreatePodSandBox"), "the sandbox event")
    assert event.type == "Warning" and event.source.component == "kubelet" and event.source.host == pod.spec.node_name
    assert event.message.startswith("Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get "
                                    'sandbox image "registry.k8s.io/pause:3.10"')


def test_a_never_ready_container_runs_and_fails_its_readiness_probe(core, simulated):
    namespace, pods = simulated
    pod = pods["never-ready"]
    server = pod.status.container_statuses[0]
    assert pod.status.phase == "Running" and server.state.running and server.started and not server.ready
    assert server.restart_count == 0
    not_ready(pod)
    (event,) = wait_for(lambda: events_of(core, namespace, pod).get("Unhealthy"), "the Unhealthy event")
    assert (event.type, event.message) == ("Warning", "Readiness probe failed: HTTP probe failed with statuscode: 503")


def test_a_slow_start_is_killed_by_its_startup_probe_and_restarted(core, simulated):
    namespace, pods = simulated
    pod = pods["slow-start"]
    server = pod.status.container_statuses[0]
    assert server.state.running and server.started is False and server.ready is False
    assert server.restart_count == 1 and server.last_state.terminated.exit_code == 143
    not_ready(pod)
    events = wait_for(lambda: (lambda e: e if "Killing" in e and "Unhealthy" in e else None)(
        events_of(core, namespace, pod)), "the Unhealthy and Killing events")
    assert events["Unhealthy"][0].message == "Startup probe failed: HTTP probe failed with statuscode: 503"
    assert events["Killing"][0].message == "Container server failed startup probe, will be restarted"


def test_no_simulated_failure_makes_its_deployment_ready(apps, simulated):
    namespace, _ = simulated
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
    assert set(deployments) == set(FAILURES)
    assert all((d.status.ready_replicas or 0) == 0 for d in deployments.values())


def test_a_crash_looping_container_keeps_restarting_with_a_longer_back_off(core, simulated):
    namespace, pods = simulated
    name = pods["crash-loop"].metadata.name

    def restarted_again():
        server = core.read_namespaced_pod(name, namespace).status.container_statuses[0]
        return server if server.restart_count >= 2 else None

    server = wait_for(restarted_again, "a second restart (kwok: every 10 s)", timeout=40)
    back_off = KUBELET_BACKOFFS[min(server.restart_count, len(KUBELET_BACKOFFS)) - 1]  # a slow start sees more
    assert server.state.waiting.message.startswith(f"back-off {back_off} ")
    def counted_again():
        (event,) = core.list_namespaced_event(namespace,
                                              field_selector=f"involvedObject.name={name},reason=BackOff").items
        return event if event.count >= 2 else None

    # The kubelet (kwok here) writes the BackOff event after the pod's status, as a kubelet's event recorder does:
    # the event catches up with the restart just seen before the next one (kwok restarts every 10 s), or the test fails.
    wait_for(counted_again, "the BackOff event counting the second restart", timeout=9)
