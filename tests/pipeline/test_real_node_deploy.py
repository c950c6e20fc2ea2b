"""Our image on the real node: CI's jobs build it, the deploy tool deploys grey, the kubelet starts, probes, logs it.

Then the four failures as the kubelet reports them (no podserve.io/simulate annotation), each from a
recipe: a handler in the test's image (real_node_service.RECIPES, added to the checkout's src/ before CI's
service-image job builds it, so one build serves every case and the canary's) chosen by the rendered PODSERVE_HANDLER,
or a tag never pushed. The deploy tool must exit 1 naming the cause and the value.py field to change. The four run
side by side, each its own service running that one image: each waits on the kubelet's probes and back-offs, not on
the CPU.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Iterator

import pytest

from real_node_service import (KUBECTL, POD_CPU, REPO, TEAM, Deployed, PacedCallers, RealNodeService,
                               assert_no_runtime_fault, example_body, hk_gateway, remove_hk, subset_cluster)

from podserve.testbed.server_logs import runtime_faults
from podserve.tooling.deploy import failures

#: case: (value.py fields, image tag, the failure the deploy tool must name, words its message must hold)
CASES = {
    "oom": ({"handler": "real_node_recipes:OutgrowsMemory"}, None, failures.OOM_KILLED,
            ["OOMKilled", "137", "memory"]),
    "crash": ({"handler": "real_node_crash:Handler"}, None, failures.CRASH_LOOP,
              ["CrashLoopBackOff", "recipe: the weights file is truncated"]),
    "pull": ({}, "never-pushed", failures.IMAGE_PULL, ["never-pushed"]),
    "startup": ({"handler": "real_node_recipes:LoadsForever", "init_delay_second": 5}, None, failures.STARTUP_PROBE,
                ["killed by its startup probe", "init_delay_second"]),
}



def test_grey_deploy_starts_the_built_image_on_the_real_node_ready_by_its_probes(grey_service, real_node):
    from kubernetes import client

    try:
        run = grey_service.deploy("apply")
        print(f"grey deploy on the real node: exit {run.returncode} in {run.seconds:.1f}s")
        assert run.returncode == 0, run.output
        core = client.CoreV1Api(grey_service.plane.api_client())
        (pod,) = core.list_namespaced_pod(grey_service.namespace, label_selector=f"service={grey_service.name}").items
        assert pod.spec.node_name == real_node.name
        assert pod.spec.containers[0].image.endswith(f"/{grey_service.name}:{grey_service.commit}")
        assert all(c.ready for c in pod.status.container_statuses)
        logs = subprocess.run([KUBECTL, "logs", "-n", grey_service.namespace, pod.metadata.name, "-c", "server"],
                              capture_output=True, text=True, timeout=60, env=grey_service.plane.tool_env())
        assert logs.returncode == 0, logs.stderr
        lines = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
        assert lines, logs.stdout[-2000:]
        assert runtime_faults(logs.stdout) == []
    finally:
        grey_service.deploy("delete")


def test_the_region_s_registry_name_pulls_from_the_folder_the_image_was_pushed_to(grey_service, real_node,
                                                                                tmp_path):
    """make cluster's mirror: registry.hk.example.com/<team>/<service> is fetched from <local>/hk/<team>/<service>,
    where CI's jobs (and make image) pushed it; containerd's own client reads the hosts.toml the node writes."""
    from podserve.testbed.cluster import node as real
    from podserve.testbed.image.registry import USER

    registry = grey_service.stage.registry
    name = "registry.hk.example.com"
    image = f"{name}/{TEAM}/{grey_service.name}:{grey_service.commit}"
    login = f"{USER}:{registry.secrets()[0]}"

    def pull(mirror):
        (tmp_path / mirror.prefix / name).mkdir(parents=True)
        (tmp_path / mirror.prefix / name / "hosts.toml").write_text(real.registry_hosts(mirror))
        return real_node.ctr("images", "pull", "--hosts-dir", tmp_path / mirror.prefix, "--user", login, image)

    flat = pull(real.Mirror(name, registry.host))  # the registry's root: no such repository there
    assert flat.returncode != 0 and "not found" in (flat.stderr + flat.stdout).lower(), flat
    pulled = pull(real.Mirror(name, registry.host, prefix="hk"))
    assert pulled.returncode == 0, pulled.stderr
    listed = real_node.ctr("images", "ls", f"name=={image}")
    pushed = registry.describe(f"hk/{TEAM}/{grey_service.name}", grey_service.commit)
    assert pushed.digest in listed.stdout, listed.stdout
    real_node.ctr("images", "rm", image)


def deploy_to_fail(service: RealNodeService, case: str) -> Deployed:
    """Deploy <service>-<case> on grey, running the service's own image (at the case's tag); then delete it."""
    fields, tag, _, _ = CASES[case]
    name = f"{service.name}-{case}"
    manifests = service.render(name, tag or service.commit, cpu=POD_CPU, **fields)
    for path in manifests.rglob("*.yaml"):  # the image is named after the service that built it, not after the case
        path.write_text(path.read_text().replace(f"/{TEAM}/{name}:", f"/{TEAM}/{service.name}:"))
    try:
        return service.deploy("apply", manifests=manifests)
    finally:
        service.deploy("delete", service=name)


@pytest.fixture(scope="module")
def failed(grey_service, request) -> Iterator[dict[str, Future]]:
    """The failing cases the session selected, deployed side by side, each as its own service."""
    chosen = {item.callspec.params["case"] for item in request.session.items
              if item.originalname == "test_each_failure_is_the_kubelet_s_own_and_the_deploy_tool_names_it"}
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        yield {case: pool.submit(deploy_to_fail, grey_service, case) for case in CASES if case in chosen}


@pytest.mark.parametrize("case", CASES)
def test_each_failure_is_the_kubelet_s_own_and_the_deploy_tool_names_it(grey_service, failed, case):
    _, tag, failure, said = CASES[case]
    run = failed[case].result()
    print(f"real node, {case}: deploy exit {run.returncode} in {run.seconds:.1f}s")
    assert run.returncode == 1, run.output
    assert f"FAILED: {failure.headline}: " in run.output, run.output
    for words in said:
        assert words in run.output, run.output
    if case == "pull":
        assert "pull" in run.output.lower() and f"{grey_service.name}:{tag}" in run.output, run.output


CLIENTS = 32
LOAD_LIMIT_SECONDS = 240
#: The memory case's value.py fields (issue 69's item 3): the real node's 2Gi cgroup, 25 MP images admitted, one
#: decoder beside the model process (its two decoding threads' 25 MP images, 762 MiB, are what its plan holds), and
#: deadlines of 30 s (a 25 MP decode takes seconds of the pod's one core).
MEMORY_CASE = {"memory": "2Gi", "cpu": "1", "decode_processes": 1, "max_image_pixels": 25_000_000,
               "request_timeout_ms": 30000}


def test_a_rolling_update_under_32_clients_through_envoy_fed_by_istiod_fails_nothing(grey_service, istiod,
                                                                                    rollouts_controller, tmp_path):
    """hk's production stage (2 replicas) on the real node, v1 then v2 released by Argo Rollouts (render's Rollout, no
    canary steps: the new ReplicaSet in full, the route's subsets switched, the old pods scaled down after
    scaleDownDelaySeconds), while 32 clients call through the gateway (Envoy fed by istiod, in its own pod network on
    the node's bridge) until every v1 pod is stopping, the chart's NetworkPolicies enforced by the node's
    kube-network-policies."""
    import base64
    import threading
    import time

    import requests
    import yaml
    from kubernetes import client

    from podserve.testbed.processes import poll_until

    svc, conf = grey_service, grey_service.conf
    stage = conf.stages["hk"]
    namespace = stage.namespace_for("like")
    v1 = svc.render(svc.name, svc.commit, stage="hk", variant="-v1", drain_seconds=2)
    v2 = svc.render(svc.name, svc.commit, stage="hk", variant="-v2", drain_seconds=3)
    core = client.CoreV1Api(svc.plane.api_client())
    followers, stop, stack = [], threading.Event(), ExitStack()
    try:
        first = svc.deploy("apply", manifests=v1, stage="hk")
        assert first.returncode == 0, first.output
        cluster = subset_cluster(svc, v1, namespace)
        gateway = stack.enter_context(hk_gateway(svc, istiod, tmp_path))
        v1_pods = {p.status.pod_ip for p in core.list_namespaced_pod(namespace,
                                                                     label_selector=f"service={svc.name}").items}
        # istiod sends the stable subset the pods whose labels it selects, at their addresses
        poll_until(lambda: set(gateway.envoy.hosts(cluster)) == v1_pods, "Envoy sees both v1 pods", 30)
        old = [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items]
        for pod in old:  # the old pods' logs, followed: they are gone once the rollout deleted them
            out = (tmp_path / f"{pod}.log").open("w")
            followers.append((pod, out, subprocess.Popen(
                [KUBECTL, "logs", "-f", "-n", namespace, pod, "-c", "server"], stdout=out,
                stderr=subprocess.STDOUT, env=svc.plane.tool_env())))

        image = base64.b64encode((REPO / "examples" / "text-line.png").read_bytes()).decode()
        url = gateway.url + stage.public_path(svc.name, "like")
        statuses: list[int] = []
        failures: list[str] = []

        def caller(index: int) -> None:
            deadline = time.monotonic() + LOAD_LIMIT_SECONDS
            with requests.Session() as session:
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        reply = session.post(url, json={"postid": str(index), "uid": "u", "seqid": "1",
                                                        "image": image},
                                             headers={"Host": stage.ingress_host}, timeout=30)
                        statuses.append(reply.status_code)
                        if reply.status_code != 200:
                            failures.append(f"{reply.status_code} {reply.text[:120]}")
                    except requests.RequestException as exc:
                        statuses.append(0)
                        failures.append(repr(exc)[:160])

        callers = [threading.Thread(target=caller, args=(i,)) for i in range(CLIENTS)]
        for thread in callers:
            thread.start()
        poll_until(lambda: len(statuses) >= CLIENTS, "every client answered once before the update", 60)
        before, verdicts = len(statuses), svc.node.policies.verdicts()
        update = svc.deploy("apply", manifests=v2, stage="hk")
        # Argo scales v1 down scaleDownDelaySeconds after the switch: the callers go on until then
        delay = yaml.safe_load(next(v2.glob("rollout.yaml")).read_text())["spec"]["strategy"]["canary"][
            "scaleDownDelaySeconds"]
        poll_until(lambda: all(p.metadata.deletion_timestamp or p.metadata.name not in old for p in
                               core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items),
                   "every v1 pod stopping (Argo's scale-down)", delay + 60)
        after, judged = len(statuses), svc.node.policies.verdicts()
        stop.set()
        for thread in callers:
            thread.join(timeout=60)
        print(f"rolling update on the real node under {CLIENTS} clients: deploy exit {update.returncode} in "
              f"{update.seconds:.1f}s; {len(statuses)} requests ({after - before} during the update), "
              f"{len(failures)} failed")
        assert update.returncode == 0, update.output
        assert failures == [], failures[:10]
        assert after - before > CLIENTS
        # the chart's NetworkPolicies held the gateway's connections to the new pods (the engine judged them: its Pod
        # in istio-ingress with the gateway's labels) and refused none
        assert judged["accept"] > verdicts["accept"] and judged["drop"] == verdicts["drop"], (verdicts, judged)
        left = core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items
        assert all(p.metadata.deletion_timestamp for p in left if p.metadata.name in old)  # v1: stopping or gone
        for pod, out, process in followers:
            process.wait(timeout=60)  # ends when the container does
            out.close()
            log = (tmp_path / f"{pod}.log").read_text()
            assert "SIGTERM: draining" in log and "exited cleanly" in log, log[-2000:]
            assert runtime_faults(log) == [], pod
        assert_no_runtime_fault(svc, namespace)  # v2's pods
        def killed() -> set[str]:
            return {e.involved_object.name for e in core.list_namespaced_event(namespace).items
                    if e.reason == "Killing" and e.involved_object.name in old}

        # The kubelet's own SIGTERM: its event recorder posts the Killing event in the background.
        poll_until(lambda: killed() == set(old), "a Killing event from the kubelet for each v1 pod", 10)
        assert gateway.envoy.rejected_updates() == {} and gateway.envoy.istio_type_urls() == []
    finally:
        stop.set()
        for _, out, process in followers:
            process.kill()
            out.close()
        stack.close()
        remove_hk(svc, namespace)


#: The migration's load: RATE requests a second through Envoy, each sent at its own time by one of CALLERS threads.
RATE = 60
CALLERS = 8


def test_the_move_from_the_deployment_to_the_rollout_under_60_requests_a_second_fails_none_and_restarts_none(
        grey_service, istiod, rollouts_controller, tmp_path):
    """Issue 66's migration on the real node: hk as deployed before issue 66 (a Deployment of 2 pods, the
    DestinationRule's subsets selecting `track`), then apply of the rendered Rollout of the same build, while RATE
    requests a second go through the gateway (Envoy fed by istiod). The tool starts the Rollout's 2 pods of the
    Deployment's template beside the Deployment's 2, deletes the Deployment once they are all available, and its pods
    drain: every request answered 200, no container restarted (the kubelet's restart counts, sampled every 0.5 s),
    the 2 pods replaced by 2 of the Rollout, which Argo holds Healthy."""
    import sys
    import threading
    import time

    from kubernetes import client

    from podserve.testbed.processes import poll_until

    sys.path.insert(0, str(REPO / "tests" / "deploy"))
    from live import before_rollouts

    svc = grey_service
    stage = svc.conf.stages["hk"]
    namespace = stage.namespace_for(TEAM)
    core = client.CoreV1Api(svc.plane.api_client())

    def pods() -> list:
        return [p for p in core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items
                if not p.metadata.deletion_timestamp]

    poll_until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items,
               "no hk pod of the service left from an earlier test", 120)
    rendered = svc.render(svc.name, svc.commit, stage="hk", variant="-migration", cpu=POD_CPU)
    legacy = before_rollouts(rendered, tmp_path / "before-rollouts" / "hk")
    restarts: dict[str, int] = {}
    stop = threading.Event()

    def watch_restarts() -> None:
        while not stop.wait(0.5):
            for pod in core.list_namespaced_pod(namespace, label_selector=f"service={svc.name}").items:
                counted = sum(c.restart_count for c in pod.status.container_statuses or [])
                restarts[pod.metadata.name] = max(counted, restarts.get(pod.metadata.name, 0))

    watcher = threading.Thread(target=watch_restarts, daemon=True)
    with ExitStack() as stack:
        stack.callback(remove_hk, svc, namespace)
        first = svc.deploy("apply", manifests=legacy, stage="hk")
        assert first.returncode == 0, first.output
        before = {p.metadata.name: p.status.pod_ip for p in pods()}
        assert len(before) == 2 and all("rollouts-pod-template-hash" not in p.metadata.labels for p in pods())
        gateway = stack.enter_context(hk_gateway(svc, istiod, tmp_path))
        poll_until(lambda: set(gateway.envoy.hosts(subset_cluster(svc, rendered, namespace))) == set(before.values()),
                   "Envoy sends the stable subset to the Deployment's 2 pods", 30)
        callers = PacedCallers(gateway.url + stage.public_path(svc.name, TEAM), stage.ingress_host,
                               example_body("m"), RATE, CALLERS)
        watcher.start()
        stack.callback(lambda: [stop.set(), watcher.join(timeout=10)])
        stack.enter_context(callers)
        outcomes = callers.outcomes
        poll_until(lambda: len(outcomes) >= 2 * RATE, "two seconds of callers on the Deployment's pods", 60)
        began = time.monotonic()
        moved = svc.deploy("apply", manifests=rendered, stage="hk")
        ended = time.monotonic()
        count = len(outcomes)
        poll_until(lambda: len(outcomes) >= count + 2 * RATE, "two seconds of callers on the Rollout's pods", 60)
        callers.stop()
        stop.set()
        watcher.join(timeout=10)
        after = {p.metadata.name: p for p in pods()}
        during = [o for o in outcomes if began <= o[0] <= ended]
        failed = callers.failed()
        seconds = outcomes[-1][0] - outcomes[0][0]
        print(f"migration on the real node: exit {moved.returncode} in {moved.seconds:.1f} s; {len(outcomes)} "
              f"requests in {seconds:.0f} s ({len(during)} during the apply), {len(failed)} failed; pods replaced: "
              f"{sorted(before)} -> {sorted(after)}; restarts seen {restarts}")
        assert moved.returncode == 0, moved.output
        assert "(2 pods replaced)" in moved.output, moved.output
        assert failed == [], [(round(t - began, 2), status, said) for t, status, said in failed[:10]]
        assert len(during) >= RATE * moved.seconds * 0.8  # the rate held while the tool worked
        assert set(after).isdisjoint(before) and len(after) == 2
        assert all(p.metadata.labels.get("rollouts-pod-template-hash") for p in after.values())
        assert restarts and set(before) <= set(restarts) and set(restarts.values()) == {0}
        live = svc.plane.api_client()
        custom = client.CustomObjectsApi(live)
        rollout = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "rollouts", svc.name)
        assert rollout["status"]["phase"] == "Healthy", rollout["status"]
        assert client.AppsV1Api(live).list_namespaced_deployment(namespace,
                                                                 label_selector=f"service={svc.name}").items == []
        assert_no_runtime_fault(svc, namespace)


def _noise_video(frames: int = 24, rate: int = 2) -> bytes:
    """An h264 MP4 of 720p noise (which does not compress): tens of MB, under max_video_bytes."""
    import sys

    import numpy as np

    sys.path.insert(0, str(REPO / "tests" / "runtime"))
    from videos import encode

    rng = np.random.default_rng(5)
    return encode([rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(frames)], rate)


def _pod_memory_peak(pod_uid: str) -> int:
    """The pod's cgroup's peak memory (cgroup v1's max_usage_in_bytes, v2's memory.peak), found by its UID."""
    import glob

    for pattern, name in (("/sys/fs/cgroup/memory/**/pod{}", "memory.max_usage_in_bytes"),
                          ("/sys/fs/cgroup/**/pod{}", "memory.peak")):
        for uid in (pod_uid, pod_uid.replace("-", "_")):
            for folder in glob.glob(pattern.format(uid), recursive=True):
                try:
                    return int(open(f"{folder}/{name}").read())
                except (OSError, ValueError):
                    continue
    return 0


def test_a_2gi_pod_under_hang_ups_25_mp_images_huge_bodies_and_64_videos_stays_under_its_plan_never_oom_killed(
        grey_service, real_node):
    """Issue 69's memory case on the real node (kubelet, containerd, runc: the kernel enforces the 2Gi limit), in the
    split layout with one decoder (MEMORY_CASE): clients that upload a video's JSON and hang up, 25 MP images (WebP:
    the most a decode holds), 32 clients sending 10 MiB JSON bodies whose junk would parse into a 300 MB tree, and 64
    base64 videos of tens of MB at once, while ordinary requests are sent. No OOM kill, no restart, and the pod's
    cgroup peak (memory.max_usage_in_bytes) under its memory plan's figure (podserve/memory_plan.py)."""
    import base64
    import socket
    import threading
    import time

    import requests
    from kubernetes import client

    from bench.pod_memory import largest_webp
    from podserve import memory_plan
    from podserve.tooling.conf import load_conf
    from podserve.tooling.values import load_values, pod_layout

    name = grey_service.name
    manifests = grey_service.render(name, grey_service.commit, **MEMORY_CASE)
    values = load_values(manifests.parent.parent / "value.py", grey_service.conf)
    plan = memory_plan.plan(*pod_layout(values.fields, load_conf(grey_service.checkout / "conf")))
    planned = sum(plan.shares().values())
    assert plan.problems() == [] and plan.decoders == 1 and planned <= 2 << 30
    core = client.CoreV1Api(grey_service.plane.api_client())
    video = _noise_video()
    assert 16 << 20 < len(video) < 32 << 20, len(video)
    video_body = json.dumps({"postid": "video", "video": base64.b64encode(video).decode()}).encode()
    image = base64.b64encode((REPO / "examples" / "text-line.png").read_bytes()).decode()
    head = json.dumps({"postid": "junk", "image": image})[:-1].encode() + b', "junk": ['
    junk = head + b"0," * (((10 << 20) - len(head) - 3) // 2) + b"0]}"
    largest = largest_webp(MEMORY_CASE["max_image_pixels"])  # WebP: the decode that holds the most a pixel
    outcomes: dict[str, list] = {"junk alone": [], "junk": [], "video": [], "ordinary": [], "largest": [],
                                 "hang_up": []}
    try:
        run = grey_service.deploy("apply", manifests=manifests)
        assert run.returncode == 0, run.output
        (pod,) = core.list_namespaced_pod(grey_service.namespace, label_selector=f"service={name}").items
        url = f"http://{pod.status.pod_ip}:8080/api/{name}"
        stop = threading.Event()

        def send(kind: str, body: bytes | dict, times: int, content_type: str = "application/json") -> None:
            for _ in range(times):
                try:
                    reply = (requests.post(url, json=body, timeout=120) if isinstance(body, dict) else
                             requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=120))
                    outcomes[kind].append(reply.status_code)
                except requests.RequestException as exc:
                    outcomes[kind].append(type(exc).__name__)

        def hang_up(times: int) -> None:
            """Upload a whole video's JSON, then close without reading the answer."""
            for _ in range(times):
                try:
                    with socket.create_connection((pod.status.pod_ip, 8080), timeout=30) as sock:
                        sock.sendall(f"POST /api/{name} HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\n"
                                     f"Content-Length: {len(video_body)}\r\n\r\n".encode() + video_body)
                    outcomes["hang_up"].append("sent")
                except OSError as exc:
                    outcomes["hang_up"].append(type(exc).__name__)

        def ordinary() -> None:
            while not stop.is_set():
                send("ordinary", {"postid": "o", "image": image}, 1)

        videos = [threading.Thread(target=send, args=("video", video_body, 1)) for _ in range(64)]
        threads = [threading.Thread(target=send, args=("junk", junk, 3)) for _ in range(32)]
        threads += [threading.Thread(target=send, args=("largest", largest, 3, "application/octet-stream"))
                    for _ in range(4)]
        threads += [threading.Thread(target=hang_up, args=(8,)) for _ in range(8)]
        side = [threading.Thread(target=ordinary) for _ in range(4)]
        # One junk body on the idle pod: admitted (its 10 MiB fit the body budgets), refused 413 before it is parsed.
        # Under the flood below, junk meets budgets full of videos first (503), or its deadline in a queue (504).
        send("junk alone", junk, 1)
        began = time.monotonic()
        for thread in side + videos:  # the videos first: those admitted queue for the decoder's one video thread
            thread.start()
        time.sleep(3)
        for thread in threads:
            thread.start()
        threads += videos
        for thread in threads:
            thread.join(600)
        stop.set()
        for thread in side:
            thread.join(120)
        seconds = time.monotonic() - began
        (pod,) = core.list_namespaced_pod(grey_service.namespace, label_selector=f"service={name}").items
        status = pod.status.container_statuses[0]
        peak = _pod_memory_peak(pod.metadata.uid)
        counts = {kind: {s: list(map(str, found)).count(s) for s in sorted(set(map(str, found)))}
                  for kind, found in outcomes.items()}
        print(f"2Gi pod, split layout with one decoder, {seconds:.0f}s: {counts}; restarts {status.restart_count}, "
              f"last state {status.last_state}; cgroup peak {peak / (1 << 20):,.0f} MiB, the plan's figure "
              f"{planned / (1 << 20):,.0f} MiB ({', '.join(f'{k} {v >> 20}' for k, v in plan.shares().items())})")
        assert status.restart_count == 0 and status.last_state.terminated is None, status  # no OOM kill, no restart
        # every request answered, none lost with a process (502) or failed (500); 504 at its deadline where the one
        # core could not get to it in time
        assert all(set(found) <= {200, 413, 503, 504} for kind, found in outcomes.items() if kind != "hang_up"), counts
        assert outcomes["junk alone"] == [413] and set(outcomes["junk"]) <= {413, 503, 504}, counts  # never parsed
        assert {200, 503} <= set(outcomes["video"]), counts
        assert 200 in outcomes["largest"] and outcomes["ordinary"].count(200) >= 10, counts
        assert 0 < peak < planned
        assert_no_runtime_fault(grey_service, grey_service.namespace)  # hang-ups, refusals and deadlines included
    finally:
        grey_service.deploy("delete")
