"""The real node: Ready with kubelet v1.35.4 and containerd, a crashed run's leftovers removed at its start,
the fake GPU plugin's nvidia.com/gpu over the kubelet's device-plugin API, a pod started by runc on the pod network.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from real_node_leftovers import still_there
from waiting import pod_story, wait_for

from podserve.testbed.cluster import node as real

KUBECTL = real.versions.REPO / ".tools" / "bin" / "kubectl"


def test_kubectl_lists_the_real_node_ready_with_its_kubelet_and_runtime(control_plane, real_node):
    listed = subprocess.run([str(KUBECTL), "get", "nodes", "-o", "wide", "--no-headers"], capture_output=True,
                            text=True, env=control_plane.tool_env(), timeout=60)
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(real_node.name + " "))
    assert row[1] == "Ready", listed.stdout
    assert "v1.35.4" in row and "containerd://1.6.20" in row and real.NODE_IP in row, listed.stdout
    print(f"real node Ready {real_node.timings['total']:.1f}s after its start: {real_node.timings}")


def test_the_node_s_account_of_itself_names_its_state_and_only_its_programs_errors(real_node):
    """What a failed real-node test's report carries (tests/conftest.py): read from the node, not assumed."""
    said = real_node.diagnostics()
    assert "Ready=True (KubeletReady" in said and "nvidia.com/gpu:NoSchedule" in said, said
    assert "containerd: running" in said and "kubelet: running" in said and "fake-gpu-plugin: running" in said
    assert f"sandbox image {real.SANDBOX_IMAGE}: present" in said and f"disk of {real.DATA}: " in said
    assert real._loud('E1126 14:02:11.123456   812 kuberuntime_sandbox.go:72] "Failed to create sandbox for pod"')
    assert real._loud('time="2026-11-26T14:02:11Z" level=error msg="RunPodSandbox for ... failed"')
    assert not real._loud('I1126 14:02:11.123456   812 kubelet.go:2470] "SyncLoop ADD"')


def test_the_running_kubelet_has_no_disk_eviction_so_it_never_deletes_the_sandbox_image(core, real_node):
    """The node's disk is the machine's: under disk pressure the kubelet deletes the sandbox image (containerd 1.6 does
    not pin it), which nothing here can pull again, and no pod starts (kubernetes#81756). Read from the running
    kubelet (configz), after its defaults were merged."""
    import json

    answer = core.connect_get_node_proxy_with_path(real_node.name, "configz", _preload_content=False)
    config = json.loads(answer.data)["kubeletconfig"]
    disk = {"nodefs.available", "nodefs.inodesFree", "imagefs.available", "imagefs.inodesFree"}
    assert {signal: config["evictionHard"].get(signal) for signal in disk} == dict.fromkeys(disk, "0%"), config
    assert config["imageGCHighThresholdPercent"] == 100, config


def test_the_start_removed_a_crashed_runs_leftovers(real_node):
    planted = dict(real_node.planted)
    assert still_there() == []
    assert int(planted["process"]) in real_node.cleaned["processes"]
    assert planted["mount"] in real_node.cleaned["mounts"]
    assert planted["netns"] in real_node.cleaned["netns"]
    assert real_node.cleaned["bridge"] == [real.BRIDGE]
    assert any(planted["iptables"] in rule for rule in real_node.cleaned["iptables"])
    assert real_node.cleaned["device checkpoint"] == [planted["device checkpoint"]]
    assert real_node.cleaned["nftables"] == [planted["nftables"]]


def test_the_fake_gpu_plugin_advertises_its_count_over_the_device_plugin_api(core, real_node):
    status = core.read_node(real_node.name).status
    assert status.capacity["nvidia.com/gpu"] == status.allocatable["nvidia.com/gpu"] == str(real.DEFAULT_GPUS)


def _pod(name: str, gpus: int) -> dict:
    return {"metadata": {"name": name}, "spec": {
        "nodeSelector": {real.POOL_LABEL: real.POOL}, "terminationGracePeriodSeconds": 1,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "c", "image": real.SANDBOX_IMAGE, "imagePullPolicy": "Never",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus), "memory": "32Mi", "cpu": "50m"}}}]}}


def test_a_gpu_pod_runs_on_the_pod_network_and_more_gpus_than_advertised_do_not_schedule(core, real_node,
                                                                                         scratch_namespace):
    namespace = scratch_namespace("real-node")
    core.create_namespaced_pod(namespace, _pod("one-gpu", 1))
    core.create_namespaced_pod(namespace, _pod("too-many", real.DEFAULT_GPUS + 1))
    running = wait_for(lambda: (p := core.read_namespaced_pod("one-gpu", namespace)).status.phase == "Running" and p,
                       "the one-GPU pod Running on the real node", timeout=60,
                       explain=lambda: pod_story(core, namespace, "one-gpu", real_node.program("kubelet")))
    assert running.spec.node_name == real_node.name
    assert ipaddress.ip_address(running.status.pod_ip) in ipaddress.ip_network(real.POD_SUBNET)
    assert running.status.pod_ip != real.NODE_IP
    # The container is runc's, in the kubelet's cgroup tree (under the node's root), with the pod's memory limit.
    uid = running.metadata.uid
    limits = [int(path.read_text()) for path in
              (Path("/sys/fs/cgroup/memory") / real.CGROUP_ROOT).rglob(f"pod{uid}/*/memory.limit_in_bytes")]
    assert 32 * 1024 * 1024 in limits
    event = wait_for(lambda: next((e for e in core.list_namespaced_event(namespace).items
                                   if e.involved_object.name == "too-many" and e.reason == "FailedScheduling"), None),
                     "FailedScheduling for the pod asking more GPUs than advertised", timeout=30)
    assert "nvidia.com/gpu" in event.message

